"""Tests of ``kvplan sweep``: the grid, its output formats and its exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvplan.cli import UsageError
from kvplan.commands.sweep import grid_points, parse_setting

# The last rate is far above what 8 GPUs of the 8B model keep up with.
RATES = "workload.arrival_rate=1/s,4/s,100000/s"


@pytest.fixture(scope="module")
def sweep_runs(run_cli, rate_plan_path):
    """Run the three-rate sweep in each output format, keyed by format; Markdown runs one rate."""
    runs = {
        output_format: run_cli("sweep", rate_plan_path, "--set", RATES, "--exhaustive", "--format", output_format)
        for output_format in ("table", "json", "csv")
    }
    runs["markdown"] = run_cli("sweep", rate_plan_path, "--set", "workload.arrival_rate=1/s", "--exhaustive",
                               "--format", "markdown")
    return runs


def table_rows(stdout: str, first_cell: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.split(" ", 1)[0] == first_cell]


# --- Parsing --set -----------------------------------------------------------------


def test_parse_setting_types_values():
    setting = parse_setting("engine.gpu_memory_utilization=0.9,0.95")

    assert setting.path == "engine.gpu_memory_utilization"
    assert setting.texts == ("0.9", "0.95")
    assert setting.values == (0.9, 0.95)


def test_parse_setting_keeps_bracketed_commas():
    setting = parse_setting("search.tp=[1,2], [4, 8],'a,b'")

    assert setting.values == ([1, 2], [4, 8], "a,b")


def test_parse_setting_null_value():
    assert parse_setting("search.gpu_budget=null").values == (None,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workload.arrival_rate", "write PATH=VALUE"),
        ("=1/s", "write PATH=VALUE"),
        ("workload.arrival_rate=1/s,,2/s", "empty value"),
        ("workload.arrival_rate=1/s,1/s", "lists a value twice"),
        ("search.tp=[1,2", "not valid YAML"),
    ],
)
def test_parse_setting_rejects(text, message):
    with pytest.raises(UsageError, match=message):
        parse_setting(text)


def test_grid_points_last_varies_fastest():
    points = grid_points([parse_setting("a=1,2"), parse_setting("b=x,y,z")])

    assert [point.label for point in points] == [
        "a=1, b=x", "a=1, b=y", "a=1, b=z", "a=2, b=x", "a=2, b=y", "a=2, b=z",
    ]
    assert points[0].values == {"a": 1, "b": "x"}


# --- Output formats ----------------------------------------------------------------


def test_sweep_table_one_row_per_point(sweep_runs):
    run = sweep_runs["table"]

    assert run.exit_code == 0, run.stderr
    assert run.stdout.startswith("Sweep of ")
    assert "workload.arrival_rate    dp    tp    pp" in run.stdout
    for rate in ("1/s", "4/s", "100000/s"):
        assert len(table_rows(run.stdout, rate)) == 1, run.stdout
    assert table_rows(run.stdout, "1/s")[0].endswith(" met")
    assert table_rows(run.stdout, "4/s")[0].endswith(" met")
    assert "cannot keep up with 100000 requests/s" in table_rows(run.stdout, "100000/s")[0]
    assert "2 of 3 point(s) have a deployment that meets the SLA." in run.stdout


def test_sweep_table_shows_price_column(sweep_runs):
    run = sweep_runs["table"]

    assert "$/M tok" in run.stdout
    assert "max req/s" in run.stdout


def test_sweep_json_is_only_stdout(sweep_runs):
    run = sweep_runs["json"]
    document = json.loads(run.stdout)

    assert run.exit_code == 0, run.stderr
    assert document["schema_version"] == 1
    assert document["command"] == "sweep"
    assert document["parameters"] == [{"path": "workload.arrival_rate", "values": ["1/s", "4/s", "100000/s"]}]
    assert [point["status"] for point in document["points"]] == ["met", "met", "sla_missed"]


def test_sweep_json_point_fields(sweep_runs):
    first, _, last = json.loads(sweep_runs["json"].stdout)["points"]

    assert first["values"] == {"workload.arrival_rate": "1/s"}
    assert first["reason"] is None
    assert first["plan"]["arrival_rate_per_s"] == 1.0
    assert first["deployment"]["sla_met"] is True
    assert first["deployment"]["config"]["tp"] == 1
    assert last["deployment"]["sla_met"] is False
    assert "cannot keep up" in last["reason"]


def test_sweep_csv_rows(sweep_runs):
    run = sweep_runs["csv"]
    rows = list(csv.DictReader(io.StringIO(run.stdout)))

    assert run.exit_code == 0, run.stderr
    assert [row["set.workload.arrival_rate"] for row in rows] == ["1/s", "4/s", "100000/s"]
    assert [row["status"] for row in rows] == ["met", "met", "sla_missed"]
    assert all(float(row["cost_per_million_tokens"]) > 0 for row in rows)


def test_sweep_markdown_table(sweep_runs):
    run = sweep_runs["markdown"]

    assert run.exit_code == 0, run.stderr
    assert "| workload.arrival_rate   | dp " in run.stdout
    assert "|---" in run.stdout
    assert "| 1/s " in run.stdout


def test_sweep_grid_of_two_settings(run_cli, rate_plan_path):
    run = run_cli("sweep", rate_plan_path, "--set", "workload.arrival_rate=1/s,2/s",
                  "--set", "hardware.node.price_per_gpu_hour=2.5,5", "--exhaustive", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    costs = {(row["set.workload.arrival_rate"], row["set.hardware.node.price_per_gpu_hour"]):
             float(row["cost_per_million_tokens"]) for row in rows}

    assert run.exit_code == 0, run.stderr
    assert len(rows) == 4
    assert costs[("1/s", "5")] == pytest.approx(2 * costs[("1/s", "2.5")])
    assert costs[("2/s", "5")] == pytest.approx(2 * costs[("2/s", "2.5")])


def test_sweep_tpe_search_per_point(run_cli, rate_plan_path):
    run = run_cli("sweep", rate_plan_path, "--set", "workload.arrival_rate=1/s,2/s", "--trials", "40",
                  "--seed", "1")

    assert run.exit_code == 0, run.stderr
    assert "Optuna TPE search + local polish (40 trials, seed 1)" in run.stdout


# --- Failures ------------------------------------------------------------------------


def test_sweep_invalid_point_exit_1(run_cli, rate_plan_path):
    run = run_cli("sweep", rate_plan_path, "--set", "workload.arrival_rate=1/s,4", "--exhaustive")

    assert run.exit_code == 1
    assert "invalid: $.workload.arrival_rate: 4 has no unit" in table_rows(run.stdout, "4")[0]
    assert table_rows(run.stdout, "1/s")[0].endswith(" met")
    assert "point workload.arrival_rate=4 is invalid" in run.stderr
    assert "--set workload.arrival_rate=4: $.workload.arrival_rate:" in run.stderr


def test_sweep_same_problem_everywhere_exit_1(run_cli, rate_plan_path):
    run = run_cli("sweep", rate_plan_path, "--set", "workload.arival_rate=1/s,2/s")

    assert run.exit_code == 1
    assert run.stdout == ""
    assert run.stderr.count("unknown key 'arival_rate'; did you mean 'arrival_rate'?") == 1


def test_sweep_no_point_meets_sla_exit_1(run_cli, rate_plan_path):
    run = run_cli("sweep", rate_plan_path, "--set", "workload.arrival_rate=100000/s,200000/s", "--exhaustive")

    assert run.exit_code == 1
    assert "no point has a deployment that meets the SLA" in run.stderr
    assert "0 of 2 point(s)" in run.stdout


@pytest.mark.parametrize(
    "options",
    [
        ["--set", "workload.arrival_rate=1/s,,2/s"],
        ["--set", "workload.arrival_rate=1/s", "--set", "workload.arrival_rate=2/s"],
        ["--set", "workload.arrival_rate=1/s", "--trials", "0"],
    ],
)
def test_sweep_usage_error_exit_2(run_cli, rate_plan_path, options):
    run = run_cli("sweep", rate_plan_path, *options)

    assert run.exit_code == 2
    assert "kvplan sweep: error:" in run.stderr
    assert run.stdout == ""


def test_sweep_console_script_json(rate_plan_path, tmp_path):
    script = shutil.which("kvplan", path=str(Path(sys.executable).parent))
    assert script is not None
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache")}

    run = subprocess.run([script, "sweep", str(rate_plan_path), "--set", "workload.arrival_rate=1/s,2/s",
                          "--exhaustive", "--format", "json"],
                         capture_output=True, text=True, env=env, timeout=300)
    document = json.loads(run.stdout)

    assert run.returncode == 0, run.stderr
    assert [point["status"] for point in document["points"]] == ["met", "met"]
