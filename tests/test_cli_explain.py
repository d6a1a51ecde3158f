"""Acceptance tests of ``kvplan explain`` and of the bottleneck column of ``optimize``.

The explain runs start in parallel and share JAX's persistent compilation cache, as in
tests/test_cli.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvplan
from kvplan.output import render_result

REPO_ROOT = Path(__file__).resolve().parents[1]
PLAN_8B = "examples/h200-reasoning/llama-8b-1xh200.yaml"
PLAN_32B = "examples/h200-reasoning/qwen-32b-8xh200.yaml"
PLAN_405B = "examples/h200-reasoning/llama-405b-8xh200.yaml"
KVPLAN = [sys.executable, "-m", "kvplan.cli"]

RUNS = {
    "json-32b": ["explain", PLAN_32B, "--config", "dp=8", "--config", "dp=4,tp=2", "--format", "json"],
    "text-32b": ["explain", PLAN_32B, "--config", "dp=8"],
    # The 8B plan has one layout, so --all ranks its max_num_seqs settings.
    "ranking-8b": ["explain", PLAN_8B, "--all", "--top", "2", "--format", "json"],
    "infeasible-405b": ["explain", PLAN_405B, "--config", "tp=1"],
}


def run_kvplan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KVPLAN, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def explain_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("explain") / "jax-cache")}
    processes = {
        name: subprocess.Popen([*KVPLAN, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name, args in RUNS.items()
    }
    runs = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        runs[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return runs


def test_explain_json_parses(explain_runs):
    run = explain_runs["json-32b"]

    document = json.loads(run.stdout)

    assert run.returncode == 0, run.stderr
    assert document["schema_version"] == 1
    assert document["deployments_from"] == "config"
    assert len(document["explanations"]) == 2
    for item in document["explanations"]:
        assert math.isclose(sum(item["engine_time_shares"].values()), 1.0, abs_tol=1e-6)
        assert math.isclose(sum(item["time_shares"].values()), 1.0, abs_tol=1e-6)
        assert item["bottleneck"]["label"] == "KV capacity"


def test_explain_json_kv_bound_gains_from_tp(explain_runs):
    document = json.loads(explain_runs["json-32b"].stdout)
    dp8 = next(item for item in document["explanations"] if item["config"]["dp"] == 8)

    more_tp = [a for a in dp8["alternatives"] if a["config"]["tp"] > dp8["config"]["tp"]]

    assert dp8["bottleneck"]["code"] == "kv_capacity"
    assert more_tp, dp8["alternatives"]
    assert more_tp[0]["objective_change"] > 0
    assert more_tp[0]["objective_value"] < dp8["objective_value"]
    assert more_tp[0]["metrics"]["kv_capacity_tokens"] > dp8["metrics"]["kv_capacity_tokens"]


def test_explain_text_names_bottleneck_and_change(explain_runs):
    run = explain_runs["text-32b"]

    assert run.returncode == 0, run.stderr
    assert "Bottleneck: KV capacity. The KV cache holds" in run.stdout
    assert "Engine time (share of the makespan of" in run.stdout
    assert "What would change it" in run.stdout
    assert "dp 8 -> 4, tp 1 -> 2 (8 GPUs): makespan" in run.stdout
    assert run.stderr == ""


def test_explain_without_config_uses_ranking(explain_runs):
    run = explain_runs["ranking-8b"]

    document = json.loads(run.stdout)

    assert run.returncode == 0, run.stderr
    assert document["deployments_from"] == "optimize"
    assert [item["rank"] for item in document["explanations"]] == [1, 2]
    assert all(item["feasible"] for item in document["explanations"])


def test_explain_infeasible_exit_1(explain_runs):
    run = explain_runs["infeasible-405b"]

    assert run.returncode == 1
    assert "Infeasible: weights do not fit" in run.stdout


@pytest.mark.parametrize("arguments", [
    ["--top", "0"],
    ["--config", "dp=0"],
    ["--config", "nodes=2"],
    ["--alternatives", "-1"],
])
def test_explain_bad_arguments_exit_2(arguments):
    run = run_kvplan("explain", PLAN_8B, *arguments)

    assert run.returncode == 2
    assert "error:" in run.stderr
    assert run.stdout == ""


# --- the bottleneck in optimize's output ------------------------------------------------


@pytest.fixture(scope="module")
def evaluated_32b():
    plan = kvplan.load_plan(REPO_ROOT / PLAN_32B)
    return kvplan.evaluate(plan, [{"dp": 8}, {"dp": 4, "tp": 2}, {"tp": 16}])


def test_optimize_table_has_bottleneck_column(evaluated_32b):
    table = render_result(evaluated_32b, "table", top=None)

    header = next(line for line in table.splitlines() if line.startswith("#"))

    assert "bottleneck" in header.split()
    assert "KV capacity" in table


def test_optimize_json_has_bottleneck(evaluated_32b):
    document = json.loads(render_result(evaluated_32b, "json", top=None))

    labels = [result["bottleneck"] for result in document["results"]]

    assert labels == ["KV capacity", "KV capacity", None]
    assert document["results"][0]["metrics"]["binding_resource"] == "kv_capacity"


def test_optimize_csv_has_bottleneck_label(evaluated_32b):
    rows = list(csv.DictReader(io.StringIO(render_result(evaluated_32b, "csv", top=None))))

    assert [row["bottleneck_label"] for row in rows] == ["KV capacity", "KV capacity", ""]
