"""Acceptance tests of the optional search settings on the command line: ``size`` over
several node types, ``evaluate``, ``launch`` and ``simulate`` with configs that set them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "examples"
PLAN_R1 = "examples/h200-reasoning/deepseek-r1-8xh200.yaml"
KVPLAN = [sys.executable, "-m", "kvplan.cli"]

H100_NODE = """\
apiVersion: kvplan/v1
kind: Node
base: h100-sxm-8
name: h100-priced
price_per_gpu_hour: 2.5
"""
H200_NODE = """\
apiVersion: kvplan/v1
kind: Node
base: h200-sxm-8
name: h200-priced
price_per_gpu_hour: 3.5
"""
# The 8B model under a chat arrival rate, with a space small enough for --exhaustive.
PLAN = f"""\
apiVersion: kvplan/v1
kind: Plan
name: node-types
model: {EXAMPLES_DIR / "models" / "deepseek-r1-distill-llama-8b.yaml"}
hardware:
  node: h200-sxm-8
workload:
  name: chat
  prompt_tokens: {{distribution: lognormal, median: 800, sigma: 0.6, max: 8192}}
  output_tokens: {{distribution: lognormal, median: 400, sigma: 0.6, max: 4096}}
  arrival_rate: 20/s
sla:
  ttft: {{p99: 2s}}
search:
  tp: [1, 2]
  pp: [1]
  max_num_seqs: [256, 512]
"""


def run_kvplan(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*KVPLAN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("node-types")
    (directory / "h100.yaml").write_text(H100_NODE)
    (directory / "h200.yaml").write_text(H200_NODE)
    (directory / "two-types.yaml").write_text(PLAN + "  node: [h200.yaml, h100.yaml]\n")
    for name in ("h100", "h200"):
        single = PLAN.replace("  node: h200-sxm-8\n", f"  node: {name}.yaml\n")
        (directory / f"only-{name}.yaml").write_text(single)
    return directory


SIZE_ARGS = ("--arrival-rate", "400/s", "--max-nodes", "4", "--exhaustive", "--format", "json")


@pytest.fixture(scope="module")
def size_two_types(plan_dir) -> subprocess.CompletedProcess:
    return run_kvplan("size", str(plan_dir / "two-types.yaml"), *SIZE_ARGS)


def test_size_two_types_exit_0(size_two_types):
    assert size_two_types.returncode == 0, size_two_types.stderr


def test_size_two_types_ranked_by_price(size_two_types):
    document = json.loads(size_two_types.stdout)
    costs = [entry["cost_per_hour"] for entry in document["node_types"]]

    assert document["ranked_by"] == "price per hour"
    assert [entry["node"] for entry in document["node_types"]] == ["h100-priced", "h200-priced"]
    assert costs == sorted(costs)


@pytest.mark.parametrize("name", ["h100", "h200"])
def test_size_two_types_matches_single_type(plan_dir, size_two_types, name):
    single = run_kvplan("size", str(plan_dir / f"only-{name}.yaml"), *SIZE_ARGS)
    entry = next(entry for entry in json.loads(size_two_types.stdout)["node_types"]
                 if entry["node"] == f"{name}-priced")
    fleet = json.loads(single.stdout)["fleet"]

    assert single.returncode == 0, single.stderr
    assert entry["nodes"] == fleet["nodes"]
    assert entry["cost_per_hour"] == fleet["cost_per_hour"]
    assert entry["sizing"]["fleet"]["deployment"] == fleet["deployment"]


def test_size_two_types_table_lists_both(plan_dir):
    run = run_kvplan("size", str(plan_dir / "two-types.yaml"), "--arrival-rate", "400/s", "--max-nodes", "4",
                     "--exhaustive")

    assert run.returncode == 0, run.stderr
    assert "h100-priced" in run.stdout
    assert "h200-priced" in run.stdout
    assert "ranked by price per hour" in run.stdout


def test_evaluate_config_with_axes(plan_dir):
    run = run_kvplan("evaluate", str(plan_dir / "two-types.yaml"), "--format", "json",
                     "--config", "tp=1,node=h100-priced,kv_cache_dtype=fp8,watermark=0.05",
                     "--config", "tp=1,node=h100-priced")
    configs = [result["config"] for result in json.loads(run.stdout)["results"]]

    assert run.returncode == 0, run.stderr
    assert {"node": "h100-priced", "kv_cache_dtype": "fp8", "watermark": 0.05}.items() <= configs[0].items()
    assert "kv_cache_dtype" not in configs[1]


@pytest.mark.parametrize("config", ["tp=1,kv_cache_dtype=fp16", "tp=1,watermark=abc"])
def test_evaluate_malformed_axis_value_exit_2(plan_dir, config):
    run = run_kvplan("evaluate", str(plan_dir / "two-types.yaml"), "--config", config)

    assert run.returncode == 2
    assert "--config" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("config, message", [
    ("tp=1,node=a100", "node 'a100' is not a node type"),
    ("tp=1,enable_expert_parallel=true", "is dense"),
])
def test_evaluate_bad_axis_exit_1(plan_dir, config, message):
    run = run_kvplan("evaluate", str(plan_dir / "two-types.yaml"), "--config", config)

    assert run.returncode == 1
    assert message in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("config, message", [
    ("tp=1,watermark=1", "watermark must be in [0, 1)"),
    ("tp=1,require_full_prompt_admission=maybe", "must be true or false"),
])
def test_evaluate_bad_axis_value_exit_2(plan_dir, config, message):
    run = run_kvplan("evaluate", str(plan_dir / "two-types.yaml"), "--config", config)

    assert run.returncode == 2
    assert message in run.stderr


def test_launch_emits_axis_flags():
    run = run_kvplan("launch", PLAN_R1, "--config", "tp=8,kv_cache_dtype=fp8,enable_expert_parallel=true,watermark=0.05")

    assert run.returncode == 0, run.stderr
    assert "--kv-cache-dtype fp8" in run.stdout
    assert "--enable-expert-parallel" in run.stdout
    assert "#   watermark = 0.05: vLLM has no flag" in run.stdout


def test_launch_on_other_node_type(plan_dir):
    capacities = {}
    for node in ("h100-priced", "h200-priced"):
        run = run_kvplan("launch", str(plan_dir / "two-types.yaml"), "--format", "json",
                         "--config", f"dp=4,tp=2,node={node}")
        deployment = json.loads(run.stdout)["deployment"]
        capacities[node] = deployment["metrics"]["kv_capacity_tokens"]

        assert run.returncode == 0, run.stderr
        assert deployment["config"]["node"] == node

    # 80 GB against 141 GB of HBM per GPU.
    assert capacities["h100-priced"] < capacities["h200-priced"]


def test_simulate_mixed_axes_exit_2(plan_dir):
    run = run_kvplan("simulate", str(plan_dir / "two-types.yaml"), "--config", "tp=1,node=h100-priced",
                     "--config", "tp=1,node=h200-priced")

    assert run.returncode == 2
    assert "simulate runs every config under one plan" in run.stderr


def test_simulate_expert_parallel_matches_sliced_experts():
    # With dp 2 x tp 4 the 256 experts divide evenly over the 8 GPUs, so whole experts
    # (expert parallelism) and slices take the same memory and time.
    run = run_kvplan("simulate", PLAN_R1, "--config", "dp=2,tp=4,max_num_seqs=256",
                     "--config", "dp=2,tp=4,max_num_seqs=256,enable_expert_parallel=true", "--format", "json")

    assert run.returncode == 0, run.stderr
    sliced, whole = json.loads(run.stdout)["runs"]
    assert sliced["feasible"]
    assert whole["config"]["enable_expert_parallel"] is True
    assert whole["summary"]["makespan_s"] == pytest.approx(sliced["summary"]["makespan_s"], rel=1e-6)
