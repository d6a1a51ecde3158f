"""CLI tests of ``kvplan launch``: exit codes, stdout and stderr of each format.

The commands run in-process through ``kvplan.cli.main``, so they share the JAX
compilation of the example plans with the rest of the suite. One test starts the entry
point in a subprocess.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvplan.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
QWEN_PLAN = str(EXAMPLES_DIR / "h200-reasoning" / "qwen-32b-8xh200.yaml")
QWEN_REPO = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"


def launch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``kvplan launch ARGS`` and return the exit code, stdout and stderr."""
    try:
        code = main(["launch", *args])
    except SystemExit as exit_:  # argparse exits on usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def shell_commands(text: str) -> list[list[str]]:
    """Split shell output into the argv of each command, skipping comments."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def options_of(argv: list[str]) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for index, word in enumerate(argv):
        if word.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else "--"
            options[word] = True if following.startswith("--") else following
    return options


def assert_argv_matches(argv: list[str], config) -> None:
    options = options_of(argv)
    assert argv[:3] == ["vllm", "serve", QWEN_REPO]
    assert options["--data-parallel-size"] == str(config.dp)
    assert options["--tensor-parallel-size"] == str(config.tp)
    assert options["--pipeline-parallel-size"] == str(config.pp)
    assert options["--max-num-seqs"] == str(config.max_num_seqs)
    assert options["--max-num-batched-tokens"] == str(config.max_num_batched_tokens)
    assert float(options["--gpu-memory-utilization"]) == config.gpu_memory_utilization


# --- Choosing the deployment -------------------------------------------------------------


def test_launch_default_is_optimize_best(capsys, default_search_result):
    best = default_search_result("qwen-32b-8xh200").best_per_layout().results[0].evaluation.config

    code, out, err = launch(capsys, QWEN_PLAN)
    commands = shell_commands(out)

    assert code == 0, err
    assert len(commands) == 1
    assert_argv_matches(commands[0], best)
    assert "# kvplan launch: plan qwen-32b-8xh200, rank 1 of kvplan optimize" in out
    assert f"# Deployment: dp={best.dp} tp={best.tp} pp={best.pp} " in out
    assert "# Predicted: makespan " in out
    assert err == ""


def test_launch_rank_picks_ranking_row(capsys, exhaustive_result):
    third = exhaustive_result("qwen-32b-8xh200").best_per_layout().results[2].evaluation.config

    code, out, err = launch(capsys, QWEN_PLAN, "--rank", "3", "--exhaustive")

    assert code == 0, err
    assert_argv_matches(shell_commands(out)[0], third)
    assert "rank 3 of kvplan optimize (best deployment per layout, exhaustive search)" in out


def test_launch_config_fills_engine_defaults(capsys):
    code, out, err = launch(capsys, QWEN_PLAN, "--config", "dp=2,tp=4")
    options = options_of(shell_commands(out)[0])

    assert code == 0, err
    assert options["--data-parallel-size"] == "2"
    assert options["--tensor-parallel-size"] == "4"
    assert options["--pipeline-parallel-size"] == "1"
    # The plan's engine section sets none of these, so they are vLLM v1's defaults.
    assert options["--max-num-seqs"] == "1024"
    assert options["--max-num-batched-tokens"] == "8192"
    assert options["--gpu-memory-utilization"] == "0.9"
    assert options["--max-model-len"] == "20480"
    assert options["--no-async-scheduling"] is True


def test_launch_shell_lists_unflagged_settings(capsys):
    code, out, _ = launch(capsys, QWEN_PLAN, "--config", "tp=4,pp=2")

    assert code == 0
    assert "#   watermark = 0.0: vLLM has no flag for the fraction of KV blocks kept free at admission" in out
    assert "#   pp_batches_in_flight = 2: " in out
    assert "vllm serve deepseek-ai/DeepSeek-R1-Distill-Qwen-32B \\\n  --tensor-parallel-size 4 \\\n" in out


# --- Formats -----------------------------------------------------------------------------


def test_launch_yaml_is_vllm_config_file(capsys):
    code, out, err = launch(capsys, QWEN_PLAN, "--config", "dp=2,tp=4", "--format", "yaml")
    documents = list(yaml.safe_load_all(out))

    assert code == 0, err
    assert len(documents) == 1
    config = documents[0]
    assert config["model"] == QWEN_REPO
    assert config["data-parallel-size"] == 2
    assert config["tensor-parallel-size"] == 4
    assert config["gpu-memory-utilization"] == 0.9
    assert config["no-async-scheduling"] is True
    assert f"# Save as vllm-serve.yaml and run: vllm serve {QWEN_REPO} --config vllm-serve.yaml\n" in out


def test_launch_json_has_deployment_and_argv(capsys):
    code, out, err = launch(capsys, QWEN_PLAN, "--config", "dp=2,tp=4", "--format", "json")
    document = json.loads(out)
    node = document["nodes"][0]

    assert code == 0, err
    assert document["schema_version"] == 1
    assert document["plan"]["name"] == "qwen-32b-8xh200"
    assert document["selection"] == {"config": {"dp": 2, "tp": 4}}
    assert document["deployment"]["config"]["dp"] == 2
    assert document["deployment"]["feasible"] is True
    assert document["model"] == QWEN_REPO
    assert document["placeholders"] == []
    assert len(document["nodes"]) == 1
    assert node["role"] == "single"
    assert node["argv"][:3] == ["vllm", "serve", QWEN_REPO]
    assert options_of(node["argv"])["--data-parallel-size"] == "2"
    assert node["config_file"]["data-parallel-size"] == 2
    assert "watermark" in [setting["setting"] for setting in document["not_passed"]]


def test_launch_multi_node_commands(capsys, tmp_path):
    # Two nodes of four GPUs keep the GPU budget at 8, so the cost model reuses the
    # compilation of the qwen-32b example.
    plan = tmp_path / "two-nodes.yaml"
    plan.write_text(
        "apiVersion: kvplan/v1\nkind: Plan\nname: two-nodes\n"
        f"model: {EXAMPLES_DIR / 'models' / 'deepseek-r1-distill-qwen-32b.yaml'}\n"
        "hardware:\n  node: {base: h200-sxm-8, name: h200-sxm-4, gpus_per_node: 4}\n  nodes: 2\n"
        f"workload: {EXAMPLES_DIR / 'workloads' / 'natural-reasoning.yaml'}\n",
        encoding="utf-8",
    )

    code, out, err = launch(capsys, str(plan), "--config", "dp=4,tp=2", "--head-address", "10.1.2.3")
    head, follower = (options_of(argv) for argv in shell_commands(out))

    assert code == 0, err
    assert "# Node 0 of 2 (head node, serves the HTTP API):" in out
    assert "# Node 1 of 2 (headless):" in out
    assert head["--data-parallel-size-local"] == "2"
    assert "--headless" not in head
    assert follower["--headless"] is True
    assert follower["--data-parallel-start-rank"] == "2"
    assert follower["--data-parallel-address"] == "10.1.2.3"
    assert follower["--data-parallel-rpc-port"] == "13345"


# --- Warnings and errors -----------------------------------------------------------------


def test_launch_sla_miss_warns_on_stderr(capsys):
    code, out, err = launch(capsys, QWEN_PLAN, "--config", "tp=2,max_num_seqs=128")

    assert code == 0
    assert shell_commands(out)
    assert "kvplan launch: warning: the deployment misses the SLA: ttft p99 " in err


def test_launch_missing_hf_repo_placeholder(capsys, tmp_path):
    plan = tmp_path / "no-repo.yaml"
    config = EXAMPLES_DIR / "models" / "hf-configs" / "deepseek-r1-distill-qwen-32b.json"
    plan.write_text(
        "apiVersion: kvplan/v1\nkind: Plan\nname: no-repo\n"
        f"model:\n  name: qwen-32b\n  config: {config}\n"
        "hardware:\n  node: h200-sxm-8\n"
        f"workload: {EXAMPLES_DIR / 'workloads' / 'natural-reasoning.yaml'}\n",
        encoding="utf-8",
    )

    code, out, err = launch(capsys, str(plan), "--config", "tp=4")

    assert code == 0
    assert shell_commands(out)[0][:3] == ["vllm", "serve", "REPLACE_WITH_MODEL"]
    assert "model 'qwen-32b' sets no hf_repo" in err


def test_launch_infeasible_config_exit_1(capsys):
    code, out, err = launch(capsys, QWEN_PLAN, "--config", "tp=1,gpu_memory_utilization=0.3")

    assert code == 1
    assert out == ""
    assert "is infeasible: weights do not fit" in err
    assert "Traceback" not in err


def test_launch_rank_out_of_range_exit_1(capsys):
    code, out, err = launch(capsys, QWEN_PLAN, "--rank", "99", "--exhaustive")

    assert code == 1
    assert out == ""
    assert "--rank 99 is out of range" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "tp=4", "--trials", "5"], "--trials applies only to --rank"),
        (["--config", "tp=4", "--seed", "1", "--exhaustive"], "--seed, --exhaustive applies only to --rank"),
        (["--rank", "0"], "--rank must be at least 1"),
        (["--rank", "1", "--config", "tp=4"], "not allowed with argument"),
        (["--format", "toml"], "invalid choice"),
        (["--config", "tp=x"], "--config tp must be an integer"),
        (["--rpc-port", "70000"], "--rpc-port must be a TCP port"),
    ],
)
def test_launch_usage_error_exit_2(capsys, args, message):
    code, out, err = launch(capsys, QWEN_PLAN, *args)

    assert code == 2
    assert out == ""
    assert message in err


def test_launch_entry_point_help():
    run = subprocess.run([sys.executable, "-m", "kvplan.cli", "launch", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr
    for option in ("--rank", "--config", "--format", "--head-address", "--rpc-port"):
        assert option in run.stdout, option
