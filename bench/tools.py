"""Side by side with other planners, in the same run: llm-analysis (the time of one
call of its analytical inference model, over the scenario's deployments) and
aiconfigurator (`cli default`) on 8 x H200 with vLLM, 100 prompt and 5,000 output
tokens, beside `kvplan optimize` on bench/plans/qwen-32b-isl100-osl5000.yaml.

Each tool gets its own virtual environment under bench/.venvs/, created here from
PyPI by name when it is missing. A tool that fails to install or to run is recorded
with its error and the benchmark goes on. Hugging Face and other caches of the tools
go to bench/.venvs/cache, not to the user's home.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

VENVS = common.BENCH_DIR / ".venvs"
TOOL_CACHE = VENVS / "cache"
KVPLAN = str(Path(sys.executable).with_name("kvplan"))
PLAN = common.BENCH_DIR / "plans" / "qwen-32b-isl100-osl5000.yaml"
HF_CONFIG = common.REPO_ROOT / "examples" / "models" / "hf-configs" / "deepseek-r1-distill-qwen-32b.json"
PROMPT_TOKENS = 100
OUTPUT_TOKENS = 5000
TPOT_MAX_S = 0.030
# aiconfigurator 0.12.0 ships Qwen3-32B's config. For Llama-3.1-70B it downloads
# config.json from Hugging Face at run time, which this benchmark must not do, so that
# scenario is left out (docs/benchmarks.md records the attempt).
AICONFIGURATOR_MODELS = ("Qwen/Qwen3-32B",)


def _tool_environment() -> dict[str, str]:
    # The offline switches make Hugging Face libraries fail at once instead of reaching
    # for the network.
    return common.clean_environment(HF_HOME=str(TOOL_CACHE / "huggingface"), XDG_CACHE_HOME=str(TOOL_CACHE),
                                    MPLCONFIGDIR=str(TOOL_CACHE / "matplotlib"), HF_HUB_OFFLINE="1",
                                    TRANSFORMERS_OFFLINE="1")


def ensure_venv(package: str) -> dict:
    """Create bench/.venvs/PACKAGE with PACKAGE installed from PyPI, unless it exists."""
    venv = VENVS / package
    python = venv / "bin" / "python"
    record = {"package": package, "venv": str(venv.relative_to(common.REPO_ROOT))}
    if not python.exists():
        start = time.perf_counter()
        created = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", package],
                                   capture_output=True, text=True, env=_tool_environment()) \
            if created.returncode == 0 else created
        record.update({"installed_now": True, "install_s": time.perf_counter() - start,
                       "install_returncode": installed.returncode,
                       "install_output_tail": (installed.stdout + installed.stderr)[-2000:]})
        if installed.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            record["available"] = False
            return record
    else:
        record["installed_now"] = False
    pip_show = subprocess.run([str(python), "-m", "pip", "show", package], capture_output=True, text=True)
    version = re.search(r"^Version: (\S+)", pip_show.stdout, re.MULTILINE)
    record["version"] = version.group(1) if version else None
    record["available"] = pip_show.returncode == 0
    return record


def run_kvplan(warm_runs: int) -> dict:
    cache = common.empty_cache_dir()
    command = [KVPLAN, "optimize", str(PLAN.relative_to(common.REPO_ROOT)), "--format", "json"]
    env = common.clean_environment(KVPLAN_CACHE_DIR=cache)
    cold = common.run_measured(command, env=env)
    warm = [common.run_measured(command, env=env) for _ in range(warm_runs)]
    shutil.rmtree(cache, ignore_errors=True)
    best = None
    if cold["returncode"] == 0:
        document = json.loads(cold["stdout"])
        top = document["results"][0]
        best = {**top["config"], "tokens_per_s_per_gpu": top["metrics"]["output_tokens_per_s_per_gpu"],
                "ttft_p50_s": top["metrics"]["ttft_s"]["p50"], "tpot_p50_s": top["metrics"]["tpot_s"]["p50"]}
    return {
        "command": "kvplan optimize " + str(PLAN.relative_to(common.REPO_ROOT)),
        "returncode": cold["returncode"],
        "cold_wall_s": cold["wall_s"],
        "warm_wall_s": common.summarize([run["wall_s"] for run in warm]),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in [cold, *warm]),
        "best": best,
        "stderr_tail": cold["stderr"][-500:],
    }


def _parse_aiconfigurator(stdout: str) -> dict:
    """Pick the chosen mode, its throughput and its best row from the printed report."""
    parsed: dict = {}
    chosen = re.search(r"Best Experiment Chosen: (\w+) at ([\d.,]+) tokens/s/gpu", stdout)
    if chosen:
        parsed["mode"] = chosen.group(1)
        parsed["tokens_per_s_per_gpu"] = float(chosen.group(2).replace(",", ""))
    for key, label in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT")):
        match = re.search(rf"- {label}: ([\d.,]+)ms", stdout)
        if match:
            parsed[key] = float(match.group(1).replace(",", ""))
    table = re.search(r"agg Top Configurations.*?\n(?:.*\n){3}\|\s*1\s*\|(.*)\|", stdout)
    if table:
        cells = [cell.strip() for cell in table.group(1).split("|")]
        parsed["agg_rank_1"] = {"replicas": cells[8], "gpus_per_replica": cells[9],
                                "parallel": cells[11], "batch_size": cells[12]}
    return parsed


def run_aiconfigurator(python: Path, model: str) -> dict:
    command = [str(python.parent / "aiconfigurator"), "cli", "default", "--model-path", model,
               "--total-gpus", "8", "--system", "h200_sxm", "--backend", "vllm",
               "--isl", str(PROMPT_TOKENS), "--osl", str(OUTPUT_TOKENS), "--no-color",
               "--save-dir", str(TOOL_CACHE / "aiconfigurator-results")]
    run = common.run_measured(command, env=_tool_environment())
    errors = [line for line in (run["stdout"] + run["stderr"]).splitlines() if "error" in line.lower()]
    return {
        "command": "aiconfigurator " + " ".join(command[1:-2]),
        "model": model,
        "returncode": run["returncode"],
        "wall_s": run["wall_s"],
        "peak_rss_mib": run["peak_rss_mib"],
        "recommendation": _parse_aiconfigurator(run["stdout"]) if run["returncode"] == 0 else None,
        "error": errors[-1][:600] if run["returncode"] != 0 and errors else None,
    }


def run_llm_analysis(python: Path) -> dict:
    import kvplan

    node = kvplan.load_plan(PLAN).node
    request = {
        "gpu": {
            "name": node.name,
            "mem_per_GPU_in_GB": node.gpu_memory_bytes / 1e9,
            "hbm_bandwidth_in_GB_per_sec": node.hbm_bandwidth_bytes_per_s / 1e9,
            "intra_node_bandwidth_in_GB_per_sec": node.nvlink_bandwidth_bytes_per_s / 1e9,
            "intra_node_min_message_latency": node.nvlink_latency_s,
            "peak_fp16_TFLOPS": node.peak_flops_per_s["bfloat16"] / 1e12,
        },
        "hf_config": str(HF_CONFIG),
        "model_name": HF_CONFIG.stem,
        "gpus": 8,
        "prompt_tokens": PROMPT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "tpot_max_s": TPOT_MAX_S,
    }
    run = common.run_measured([str(python), str(common.BENCH_DIR / "llm_analysis_driver.py"), json.dumps(request)],
                              env=_tool_environment())
    record = {"returncode": run["returncode"], "wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"]}
    if run["returncode"] == 0:
        document = json.loads(run["stdout"].strip().splitlines()[-1])
        document.pop("candidates")
        record.update(document)
    else:
        record["error"] = run["stderr"][-600:]
    return record


def main() -> None:
    args = common.parse_output_argument()
    TOOL_CACHE.mkdir(parents=True, exist_ok=True)
    document: dict = {"scenario": {"gpus": 8, "gpu": "H200 SXM", "engine": "vLLM", "prompt_tokens": PROMPT_TOKENS,
                                   "output_tokens": OUTPUT_TOKENS, "tpot_max_s": TPOT_MAX_S}}

    document["kvplan"] = run_kvplan(warm_runs=1 if args.quick else 3)
    print(f"kvplan: cold {document['kvplan']['cold_wall_s']:.2f} s, warm "
          f"{document['kvplan']['warm_wall_s']['median']:.2f} s", flush=True)

    aiconfigurator = ensure_venv("aiconfigurator")
    aiconfigurator["runs"] = []
    if aiconfigurator["available"]:
        for model in AICONFIGURATOR_MODELS:
            run = run_aiconfigurator(VENVS / "aiconfigurator" / "bin" / "python", model)
            aiconfigurator["runs"].append(run)
            print(f"aiconfigurator {model}: exit {run['returncode']}, {run['wall_s']:.2f} s", flush=True)
    document["aiconfigurator"] = aiconfigurator

    llm_analysis = ensure_venv("llm-analysis")
    if llm_analysis["available"]:
        llm_analysis["run"] = run_llm_analysis(VENVS / "llm-analysis" / "bin" / "python")
        print(f"llm-analysis: exit {llm_analysis['run']['returncode']}, "
              f"{llm_analysis['run']['wall_s']:.2f} s", flush=True)
    document["llm_analysis"] = llm_analysis

    document["peak_rss_mib"] = common.peak_rss_mib()
    common.write_json(args.output, document)


if __name__ == "__main__":
    main()
