"""Tests that ``kvplan launch`` passes vLLM only flags that ``vllm serve`` accepts, with
the values of the chosen deployment.

The commands are built with ``build_launch`` directly, so no deployment is evaluated
and these tests need no JAX compilation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import kvplan
from kvplan.commands.launch import (
    HEAD_ADDRESS_PLACEHOLDER,
    MODEL_PLACEHOLDER,
    LaunchCommands,
    build_launch,
)
from kvplan.costmodel.evaluate import Deployment

FLAGS_FILE = Path(__file__).with_name("vllm_serve_flags.txt")
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
PLAN_DIR = EXAMPLES_DIR / "h200-reasoning"


def read_flag_table() -> tuple[dict[str, str], dict[str, tuple[set[str], set[str]]]]:
    """Return the sources named in the header and, per flag, its sources and allowed words."""
    sources: dict[str, str] = {}
    flags: dict[str, tuple[set[str], set[str]]] = {}
    for line in FLAGS_FILE.read_text(encoding="utf-8").splitlines():
        source = re.match(r"^#   ([A-Z])  (.+)$", line)
        if source:
            sources[source.group(1)] = source.group(2)
            continue
        if not line.startswith("--"):
            continue
        fields = line.split()
        assert len(fields) in (2, 3), f"malformed line in {FLAGS_FILE.name}: {line!r}"
        words = set(fields[2].split("|")) if len(fields) == 3 else set()
        assert fields[0] not in flags, f"{fields[0]} is listed twice"
        flags[fields[0]] = (set(fields[1].split(",")), words)
    return sources, flags


SOURCES, VLLM_FLAGS = read_flag_table()


def options_of(argv: list[str]) -> dict[str, Any]:
    """Map each flag of a ``vllm serve MODEL ...`` argv to its value, or True for a switch."""
    assert argv[:2] == ["vllm", "serve"]
    options: dict[str, Any] = {}
    words = argv[3:]
    for index, word in enumerate(words):
        if not word.startswith("--"):
            continue
        assert word not in options, f"{word} is passed twice"
        following = words[index + 1] if index + 1 < len(words) else "--"
        options[word] = True if following.startswith("--") else following
    return options


def argv_from_config_file(config: dict[str, Any]) -> list[str]:
    """Expand a --config mapping into flags the way vLLM does.

    vLLM's FlexibleArgumentParser.load_config_file (vllm/utils/argparse_utils.py) turns
    each key into ``--key``, passes ``--key`` alone for true, drops the key for false
    and passes ``str(value)`` otherwise.
    """
    argv = []
    for key, value in config.items():
        if key == "model":
            continue
        if isinstance(value, bool):
            if value:
                argv.append(f"--{key}")
        else:
            argv.extend([f"--{key}", str(value)])
    return argv


def plan_8b(nodes: int = 1, model: dict[str, Any] | None = None, engine: dict[str, Any] | None = None):
    """A plan for the 8B model on ``nodes`` H200 nodes with the reasoning workload."""
    data = {
        "apiVersion": "kvplan/v1",
        "kind": "Plan",
        "name": "launch-8b",
        "model": {"base": "models/deepseek-r1-distill-llama-8b.yaml", **(model or {})},
        "hardware": {"node": "h200-sxm-8", "nodes": nodes},
        "workload": "workloads/natural-reasoning.yaml",
        "engine": engine or {},
        "search": {"gpu_budget": 8 * nodes},
    }
    return kvplan.load_plan_from_dict(data, base_dir=EXAMPLES_DIR)


def plan_r1(nodes: int = 1):
    data = {
        "apiVersion": "kvplan/v1",
        "kind": "Plan",
        "name": "launch-r1",
        "model": "models/deepseek-r1.yaml",
        "hardware": {"node": "h200-sxm-8", "nodes": nodes},
        "workload": "workloads/natural-reasoning.yaml",
        "search": {"gpu_budget": 8 * nodes},
    }
    return kvplan.load_plan_from_dict(data, base_dir=EXAMPLES_DIR)


def deployment(dp: int = 1, tp: int = 1, pp: int = 1, seqs: int = 1024, batch: int = 8192,
               utilization: float = 0.9) -> Deployment:
    return Deployment(dp, tp, pp, seqs, batch, utilization)


FULL_ENGINE = {"block_size": 32, "kv_cache_tokens": 500_000, "async_scheduling": True}
FP8_MODEL = {"weight_dtype": "fp8", "kv_cache_dtype": "fp8"}

# (case id, plan factory, deployment): every code path that adds or changes a flag.
CASES = [
    ("qwen-32b-one-node", lambda: kvplan.load_plan(PLAN_DIR / "qwen-32b-8xh200.yaml"),
     deployment(1, 4, 2, 2048, 8192, 0.9)),
    ("8b-all-engine-flags", lambda: plan_8b(2, FP8_MODEL, FULL_ENGINE),
     deployment(12, 1, 1, 512, 16384, 0.85)),
    ("8b-uneven-data-parallel", lambda: plan_8b(2), deployment(5, 2, 1)),
    ("8b-replica-spans-nodes", lambda: plan_8b(2, engine=FULL_ENGINE), deployment(1, 8, 2)),
    ("8b-replicas-span-nodes", lambda: plan_8b(4), deployment(2, 8, 2)),
    ("deepseek-r1-one-node", lambda: plan_r1(), deployment(1, 8, 1, 512)),
    ("deepseek-r1-two-nodes", lambda: plan_r1(2), deployment(2, 8, 1, 512)),
    ("float16-weights", lambda: plan_8b(model={"weight_dtype": "float16"}), deployment()),
]


@pytest.fixture(scope="module", params=CASES, ids=[case[0] for case in CASES])
def launch_case(request) -> tuple[Deployment, LaunchCommands]:
    _, make_plan, chosen = request.param
    return chosen, build_launch(make_plan(), chosen)


# --- The flag table ----------------------------------------------------------------------


def test_flag_table_names_its_sources():
    used = set().union(*(sources for sources, _ in VLLM_FLAGS.values()))

    assert SOURCES, f"{FLAGS_FILE.name} defines no sources in its header"
    assert used <= set(SOURCES), f"undefined sources {sorted(used - set(SOURCES))}"


def test_flag_table_has_design_flags():
    # The flags the design of kvplan launch calls for must all be confirmed in vLLM.
    for flag in ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size",
                 "--max-num-seqs", "--max-num-batched-tokens", "--gpu-memory-utilization",
                 "--kv-cache-dtype", "--enable-expert-parallel", "--data-parallel-size-local",
                 "--data-parallel-start-rank", "--data-parallel-address", "--data-parallel-rpc-port",
                 "--headless", "--kv-cache-memory-bytes", "--async-scheduling", "--block-size",
                 "--quantization"):
        assert flag in VLLM_FLAGS, flag


# --- Every case --------------------------------------------------------------------------


def test_emitted_flags_are_vllm_flags(launch_case):
    _, commands = launch_case

    for node in commands.nodes:
        for flag, value in options_of(node.argv).items():
            assert flag in VLLM_FLAGS, f"{flag} is not in {FLAGS_FILE.name}"
            allowed_words = VLLM_FLAGS[flag][1]
            if allowed_words:
                assert value in allowed_words, f"{flag} {value}: allowed {sorted(allowed_words)}"


def test_argv_values_match_deployment(launch_case):
    chosen, commands = launch_case

    for node in commands.nodes:
        options = options_of(node.argv)
        assert options["--tensor-parallel-size"] == str(chosen.tp)
        assert options["--pipeline-parallel-size"] == str(chosen.pp)
        assert options["--data-parallel-size"] == str(chosen.dp)
        assert options["--max-num-seqs"] == str(chosen.max_num_seqs)
        assert options["--max-num-batched-tokens"] == str(chosen.max_num_batched_tokens)
        assert float(options["--gpu-memory-utilization"]) == chosen.gpu_memory_utilization
        # natural-reasoning: prompts up to 4,096 tokens, outputs up to 16,384.
        assert options["--max-model-len"] == "20480"


def test_config_file_expands_to_argv(launch_case):
    _, commands = launch_case

    for node in commands.nodes:
        config = node.config_file()
        assert config["model"] == node.argv[2]
        assert all("_" not in key for key in config), "keys must be the dashed long flag names"
        assert argv_from_config_file(config) == node.argv[3:]


def test_every_node_passes_same_engine_flags(launch_case):
    _, commands = launch_case
    engine_flags = ("--tensor-parallel-size", "--max-num-seqs", "--max-model-len", "--dtype",
                    "--kv-cache-memory-bytes", "--block-size", "--quantization", "--kv-cache-dtype")

    first = options_of(commands.nodes[0].argv)
    for node in commands.nodes[1:]:
        options = options_of(node.argv)
        for flag in engine_flags:
            assert options.get(flag) == first.get(flag), flag


# --- Engine settings ---------------------------------------------------------------------


def test_default_engine_passes_no_optional_flags():
    options = options_of(build_launch(plan_8b(), deployment()).nodes[0].argv)

    for flag in ("--kv-cache-dtype", "--quantization", "--block-size", "--kv-cache-memory-bytes",
                 "--async-scheduling", "--enable-expert-parallel"):
        assert flag not in options, flag
    assert options["--no-async-scheduling"] is True
    assert options["--dtype"] == "bfloat16"


def test_engine_section_becomes_flags():
    options = options_of(build_launch(plan_8b(2, FP8_MODEL, FULL_ENGINE), deployment()).nodes[0].argv)

    assert options["--kv-cache-dtype"] == "fp8"
    assert options["--quantization"] == "fp8"
    assert options["--block-size"] == "32"
    assert options["--async-scheduling"] is True
    assert "--no-async-scheduling" not in options


def test_float16_weights_set_dtype():
    options = options_of(build_launch(plan_8b(model={"weight_dtype": "float16"}), deployment()).nodes[0].argv)

    assert options["--dtype"] == "float16"


def test_fp8_checkpoint_needs_no_quantization_flag():
    commands = build_launch(plan_r1(), deployment(1, 8, 1))

    assert "--quantization" not in options_of(commands.nodes[0].argv)
    assert commands.warnings == ()


def test_fp8_checkpoint_served_as_bfloat16_warns():
    data = {
        "apiVersion": "kvplan/v1", "kind": "Plan", "name": "r1-bf16",
        "model": {"base": "models/deepseek-r1.yaml", "weight_dtype": "bfloat16"},
        "hardware": {"node": "h200-sxm-8", "nodes": 4},
        "workload": "workloads/natural-reasoning.yaml",
        "search": {"gpu_budget": 32},
    }
    commands = build_launch(kvplan.load_plan_from_dict(data, base_dir=EXAMPLES_DIR), deployment(1, 8, 4))

    assert "--quantization" not in options_of(commands.nodes[0].argv)
    assert any("checkpoint" in warning and "fp8" in warning for warning in commands.warnings)


@pytest.mark.parametrize(
    ("tp", "pp", "expected_bytes"),
    [
        # 32 layers x 8 KV heads x 128 dims x 2 (K and V) x 1 byte (fp8) = 65,536 bytes per
        # token, and 500,000 tokens are 15,625 whole blocks of 32.
        (1, 1, 500_000 * 65_536),
        # tp=2 stores 4 KV heads per GPU, and pp=2 puts 16 layers on each stage.
        (2, 2, 500_000 * 16 * 4 * 128 * 2),
    ],
)
def test_kv_cache_tokens_to_bytes(tp, pp, expected_bytes):
    commands = build_launch(plan_8b(2, FP8_MODEL, FULL_ENGINE), deployment(1, tp, pp))

    assert options_of(commands.nodes[0].argv)["--kv-cache-memory-bytes"] == str(expected_bytes)
    assert any("--kv-cache-memory-bytes" in note for note in commands.notes)


def test_kv_cache_tokens_round_up_to_blocks():
    engine = {"block_size": 32, "kv_cache_tokens": 100_001}
    commands = build_launch(plan_8b(model=FP8_MODEL, engine=engine), deployment())

    # 100,001 tokens need 3,126 blocks of 32 tokens.
    assert options_of(commands.nodes[0].argv)["--kv-cache-memory-bytes"] == str(3_126 * 32 * 65_536)


def test_batched_tokens_below_seqs_warns():
    commands = build_launch(plan_8b(), deployment(seqs=4096, batch=2048))

    assert any("max_num_batched_tokens (2048) is below max_num_seqs (4096)" in warning
               for warning in commands.warnings)


# --- Nodes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("dp", "tp", "local_sizes"), [(12, 1, [8, 4]), (5, 2, [4, 1]), (16, 1, [8, 8])])
def test_data_parallel_split_over_nodes(dp, tp, local_sizes):
    commands = build_launch(plan_8b(2), deployment(dp, tp), head_address="10.0.0.1", rpc_port=23456)
    nodes = [options_of(node.argv) for node in commands.nodes]

    assert [int(node["--data-parallel-size-local"]) for node in nodes] == local_sizes
    assert [node.get("--data-parallel-start-rank") for node in nodes] == [None, str(local_sizes[0])]
    assert [node.get("--headless", False) for node in nodes] == [False, True]
    assert [commands.nodes[0].role, commands.nodes[1].role] == ["head", "follower"]
    assert {node["--data-parallel-address"] for node in nodes} == {"10.0.0.1"}
    assert {node["--data-parallel-rpc-port"] for node in nodes} == {"23456"}
    assert commands.placeholders == ()


def test_one_node_passes_no_node_flags():
    commands = build_launch(plan_8b(2), deployment(8, 1))
    options = options_of(commands.nodes[0].argv)

    assert len(commands.nodes) == 1
    assert commands.nodes[0].role == "single"
    for flag in ("--headless", "--data-parallel-size-local", "--data-parallel-address",
                 "--distributed-executor-backend"):
        assert flag not in options, flag


def test_multi_node_default_address_is_placeholder():
    commands = build_launch(plan_8b(2), deployment(12, 1))

    assert options_of(commands.nodes[1].argv)["--data-parallel-address"] == HEAD_ADDRESS_PLACEHOLDER
    assert commands.placeholders == (HEAD_ADDRESS_PLACEHOLDER,)
    assert any(HEAD_ADDRESS_PLACEHOLDER in warning for warning in commands.warnings)


def test_replica_spanning_nodes_uses_ray():
    commands = build_launch(plan_8b(2), deployment(1, 8, 2))
    options = options_of(commands.nodes[0].argv)

    assert len(commands.nodes) == 1
    assert options["--distributed-executor-backend"] == "ray"
    assert "--data-parallel-backend" not in options
    assert commands.nodes[0].env == {}
    assert any("Ray cluster" in note and "2 nodes" in note for note in commands.notes)


def test_spanning_replicas_ray_data_parallel():
    commands = build_launch(plan_8b(4), deployment(2, 8, 2))
    options = options_of(commands.nodes[0].argv)

    assert options["--data-parallel-backend"] == "ray"
    assert commands.nodes[0].env == {"VLLM_RAY_DP_PACK_STRATEGY": "span"}
    assert any("4 nodes" in note for note in commands.notes)


def test_more_nodes_than_plan_warns():
    # tp=4 x pp=2 leaves room for one replica per node, so dp=3 needs 3 nodes.
    commands = build_launch(plan_8b(2), deployment(3, 4, 2))

    assert len(commands.nodes) == 3
    assert any("needs 3 nodes, but the plan has 2" in warning for warning in commands.warnings)


# --- Settings without a flag ------------------------------------------------------------


def test_moe_model_leaves_out_expert_parallel():
    commands = build_launch(plan_r1(), deployment(1, 8, 1))

    assert "--enable-expert-parallel" not in options_of(commands.nodes[0].argv)
    assert "enable_expert_parallel" in [setting.setting for setting in commands.omitted]


def test_dense_model_omits_no_expert_parallel():
    commands = build_launch(plan_8b(), deployment())

    assert "enable_expert_parallel" not in [setting.setting for setting in commands.omitted]


def test_moe_data_parallel_noted_without_warning():
    # The cost model lays out an MoE model's experts over the dp x tp group as vLLM does,
    # so the launch notes the lockstep but has nothing to warn about.
    commands = build_launch(plan_r1(2), deployment(2, 8, 1))

    assert any("dp x tp GPUs" in note for note in commands.notes)
    assert not any("MoE" in warning for warning in commands.warnings)


def test_settings_without_flag_are_listed():
    engine = {"watermark": 0.02, "require_full_prompt_admission": True, "pp_batches_in_flight": 1}
    commands = build_launch(plan_8b(engine=engine), deployment(1, 2, 2))
    omitted = {setting.setting: setting.value for setting in commands.omitted}

    assert omitted["watermark"] == 0.02
    assert omitted["require_full_prompt_admission"] is True
    assert omitted["pp_batches_in_flight"] == 1


def test_pp_batches_listed_only_with_pp():
    commands = build_launch(plan_8b(), deployment(1, 2, 1))

    assert "pp_batches_in_flight" not in [setting.setting for setting in commands.omitted]


def test_missing_hf_repo_uses_placeholder():
    data = {
        "apiVersion": "kvplan/v1", "kind": "Plan", "name": "no-repo",
        "model": {"name": "llama-8b", "config": "models/hf-configs/deepseek-r1-distill-llama-8b.json"},
        "hardware": {"node": "h200-sxm-8"},
        "workload": "workloads/natural-reasoning.yaml",
    }
    commands = build_launch(kvplan.load_plan_from_dict(data, base_dir=EXAMPLES_DIR), deployment())

    assert commands.nodes[0].argv[2] == MODEL_PLACEHOLDER
    assert commands.placeholders == (MODEL_PLACEHOLDER,)
    assert any("sets no hf_repo" in warning for warning in commands.warnings)
