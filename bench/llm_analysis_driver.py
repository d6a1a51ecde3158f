"""Run llm-analysis's inference model over the deployments of the side-by-side scenario.

Runs with the Python of the llm-analysis virtual environment that bench/tools.py
creates, never with kvplan's. Argument: a JSON document with the GPU figures (from
kvplan's node catalog), the path of a Hugging Face config.json, the lengths and the
TPOT bound. Prints one JSON document: the time of each call of ``infer`` and the
deployment with the highest output tokens/s per GPU that meets the TPOT bound.
llm-analysis evaluates one configuration per call and has no search, so this script
loops over the same tensor-parallel sizes and batch sizes as the kvplan plan.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
BATCH_SIZES_PER_REPLICA = (16, 32, 64, 128, 256, 512, 1024)


def main() -> None:
    request = json.loads(sys.argv[1])
    start = time.perf_counter()
    from llm_analysis import analysis, config

    imported = time.perf_counter()
    gpu = config.GPUConfig(**request["gpu"])
    config.gpu_configs[gpu.name] = gpu

    hf = json.load(open(request["hf_config"]))
    model = {
        "name": request["model_name"],
        "num_layers": hf["num_hidden_layers"],
        "n_head": hf["num_attention_heads"],
        "hidden_dim": hf["hidden_size"],
        "vocab_size": hf["vocab_size"],
        "max_seq_len": hf.get("max_position_embeddings"),
        "num_key_value_heads": hf.get("num_key_value_heads"),
        "ffn_embed_dim": hf["intermediate_size"],
        "expansion_ratio": hf["intermediate_size"] / hf["hidden_size"],
        "model_type": hf.get("model_type"),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as model_file:
        json.dump(model, model_file)

    call_seconds = []
    candidates = []
    for tp in TENSOR_PARALLEL_SIZES:
        replicas = request["gpus"] // tp
        for batch in BATCH_SIZES_PER_REPLICA:
            call_start = time.perf_counter()
            try:
                result = analysis.infer(
                    model_name=model_file.name, gpu_name=gpu.name, tp_size=tp, pp_size=1,
                    batch_size_per_gpu=batch, seq_len=request["prompt_tokens"],
                    num_tokens_to_generate=request["output_tokens"], log_level="ERROR",
                )
            except Exception as error:  # a configuration that does not fit raises
                call_seconds.append(time.perf_counter() - call_start)
                candidates.append({"tp": tp, "batch": batch, "error": f"{type(error).__name__}: {error}"})
                continue
            call_seconds.append(time.perf_counter() - call_start)
            fits = batch <= result["decode_max_batch_size_per_gpu"]
            tpot = result["decode_latency"]
            candidates.append({
                "dp": replicas, "tp": tp, "batch": batch, "fits": fits, "tpot_s": tpot,
                "ttft_s": result["prefill_latency"],
                "tokens_per_s_per_gpu": result["total_tokens_per_sec"] / tp,
            })
    usable = [c for c in candidates if c.get("fits") and c["tpot_s"] <= request["tpot_max_s"]]
    best = max(usable, key=lambda c: c["tokens_per_s_per_gpu"], default=None)
    print(json.dumps({
        "import_s": imported - start,
        "calls": len(call_seconds),
        "seconds_per_call": statistics.median(call_seconds),
        "total_s": time.perf_counter() - start,
        "best": best,
        "candidates": candidates,
    }))


if __name__ == "__main__":
    main()
