"""Acceptance tests that run the ``kvplan`` command in a subprocess and check its exit
code, stdout and stderr."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "examples"
PLAN_8B = "examples/h200-reasoning/llama-8b-1xh200.yaml"
PLAN_405B = "examples/h200-reasoning/llama-405b-8xh200.yaml"
KVPLAN = [sys.executable, "-m", "kvplan.cli"]

# Each run that evaluates deployments starts Python, imports JAX and compiles the cost
# model, 3 to 5 s on two cores. ``model_runs`` starts them in two parallel waves that
# share JAX's persistent compilation cache. The first wave compiles the 8B and 405B
# models, and the second reuses the 8B model because every 8B plan here has the same
# array shapes.
FIRST_WAVE = {
    "optimize-table": ["optimize", PLAN_8B],
    # tp=8 runs max_num_seqs 2048 because at vLLM's default of 1024 the plan's TTFT p99
    # bound of 15 minutes is missed, which would make the command exit 1.
    "evaluate-405b": [
        "evaluate", PLAN_405B, "--config", "dp=2,tp=4", "--config", "tp=4", "--config", "tp=8,max_num_seqs=2048",
    ],
}
SECOND_WAVE = {
    "optimize-json": ["optimize", PLAN_8B, "--format", "json"],
    "optimize-csv": ["optimize", PLAN_8B, "--format", "csv"],
}

# A TTFT bound of 1 ms that no deployment of the 8B model can meet.
UNMEETABLE_SLA_PLAN = f"""\
apiVersion: kvplan/v1
kind: Plan
name: unmeetable-sla
model: {EXAMPLES_DIR / "models" / "deepseek-r1-distill-llama-8b.yaml"}
hardware:
  node: h200-sxm-8
workload:
  name: short
  prompt_tokens: {{distribution: fixed, value: 500}}
  output_tokens: {{distribution: fixed, value: 200}}
  requests: 1000
search:
  gpu_budget: 1
  max_num_seqs: [256]
sla:
  ttft:
    p99: 1ms
"""

# hardware.nodes is on line 7, and its value starts at column 10.
BROKEN_PLAN = f"""\
apiVersion: kvplan/v1
kind: Plan
name: broken
model: {EXAMPLES_DIR / "models" / "deepseek-r1-distill-llama-8b.yaml"}
hardware:
  node: h200-sxm-8
  nodes: zero
workload: {EXAMPLES_DIR / "workloads" / "natural-reasoning.yaml"}
"""


def run_kvplan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KVPLAN, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def run_parallel(commands: dict[str, list[str]], env: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    processes = {
        name: subprocess.Popen([*KVPLAN, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name, args in commands.items()
    }
    runs = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        runs[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return runs


@pytest.fixture(scope="module")
def model_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Run the commands of both waves, and one on an unmeetable SLA, keyed by name."""
    work_dir = tmp_path_factory.mktemp("cli")
    plan_path = work_dir / "unmeetable-sla.yaml"
    plan_path.write_text(UNMEETABLE_SLA_PLAN, encoding="utf-8")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(work_dir / "jax-cache")}

    runs = run_parallel(FIRST_WAVE, env)
    runs.update(run_parallel({**SECOND_WAVE, "unmeetable-sla": ["optimize", str(plan_path)]}, env))
    return runs


# --- validate ------------------------------------------------------------------------


def test_cli_validate_examples_exit_0():
    # examples/gitops/broken/ is invalid on purpose, so only the valid part of examples/gitops is named.
    run = run_kvplan("validate", "examples/h200-reasoning", "examples/models", "examples/workloads",
                     "examples/gitops/plans")

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok:")


def test_cli_validate_broken_spec_exit_1(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN_PLAN, encoding="utf-8")

    run = run_kvplan("validate", str(path))

    assert run.returncode == 1
    assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: ", run.stdout, re.MULTILINE), run.stdout
    assert f"{path}:7:10: $.hardware.nodes:" in run.stdout


def test_cli_validate_broken_spec_json_lists_location(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN_PLAN, encoding="utf-8")

    run = run_kvplan("validate", "--format", "json", str(path))
    document = json.loads(run.stdout)

    assert run.returncode == 1
    assert document["valid"] is False
    assert {"file": str(path), "line": 7, "column": 10, "path": "$.hardware.nodes"}.items() <= (
        document["errors"][0].items()
    )


# --- optimize ------------------------------------------------------------------------


def test_cli_optimize_table_has_header_and_best(model_runs):
    run = model_runs["optimize-table"]
    lines = run.stdout.splitlines()

    assert run.returncode == 0, run.stderr
    assert any(re.match(r"#\s+dp\s+tp\s+pp\s+seqs\s+batch\b", line) for line in lines), run.stdout
    assert any(line.startswith("Best: dp=1 tp=1 pp=1 ") for line in lines), run.stdout


def test_cli_optimize_json_is_only_stdout(model_runs):
    run = model_runs["optimize-json"]
    document = json.loads(run.stdout)

    assert run.returncode == 0, run.stderr
    assert document["schema_version"] == 1
    assert document["plan"]["name"] == "llama-8b-1xh200"
    assert document["results"][0]["rank"] == 1


def test_cli_optimize_csv_parses(model_runs):
    run = model_runs["optimize-csv"]
    rows = list(csv.DictReader(io.StringIO(run.stdout)))

    assert run.returncode == 0, run.stderr
    assert rows
    assert [row["rank"] for row in rows] == [str(rank) for rank in range(1, len(rows) + 1)]
    assert {row["dp"] + row["tp"] + row["pp"] for row in rows} == {"111"}
    assert all(float(row["makespan_s"]) > 0 for row in rows)


def test_cli_optimize_unmeetable_sla_exit_1(model_runs):
    run = model_runs["unmeetable-sla"]

    assert run.returncode == 1
    assert "no deployment meets the SLA" in run.stderr
    assert "ttft p99" in run.stdout


def test_cli_optimize_missing_plan_exit_1(tmp_path):
    path = tmp_path / "missing-plan.yaml"

    run = run_kvplan("optimize", str(path))

    assert run.returncode == 1
    assert str(path) in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_optimize_unknown_option_exit_2():
    run = run_kvplan("optimize", PLAN_8B, "--no-such-option")

    assert run.returncode == 2
    assert "--no-such-option" in run.stderr


# --- evaluate ------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["tp=x", "dp=1,dp=2"])
def test_cli_evaluate_bad_config_exit_2(config):
    run = run_kvplan("evaluate", PLAN_8B, "--config", config)

    assert run.returncode == 2
    assert "--config" in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_evaluate_405b_shows_infeasible_reason(model_runs):
    run = model_runs["evaluate-405b"]

    assert run.returncode == 0, run.stderr
    assert run.stdout.count("infeasible: weights do not fit") == 2
    assert "Best: dp=1 tp=8 pp=1 " in run.stdout


# --- Entry points --------------------------------------------------------------------


def test_cli_no_command_exit_2():
    run = run_kvplan()

    assert run.returncode == 2
    assert "usage:" in run.stderr


def test_cli_console_script_reports_version():
    script = shutil.which("kvplan", path=str(Path(sys.executable).parent))
    assert script is not None

    run = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)

    assert run.returncode == 0
    assert run.stdout.startswith("kvplan ")
