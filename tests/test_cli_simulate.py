"""Acceptance tests of ``kvplan simulate``: series as CSV and JSON, the PNG, and bad input."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PLAN_8B = "examples/h200-reasoning/llama-8b-1xh200.yaml"
PLAN_405B = "examples/h200-reasoning/llama-405b-8xh200.yaml"
KVPLAN = [sys.executable, "-m", "kvplan.cli"]
CONFIGS = ["--config", "dp=1,tp=1,pp=1,max_num_seqs=1000", "--config", "dp=1,tp=1,pp=1,max_num_seqs=10000"]
POINTS = 40


def run_kvplan(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*KVPLAN, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def plotted(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    folder = tmp_path_factory.mktemp("simulate")
    png = folder / "sim.png"
    series = folder / "series.csv"
    result = run_kvplan("simulate", PLAN_8B, *CONFIGS, "--format", "csv", "--points", str(POINTS),
                        "--output", str(series), "--plot", str(png))
    return result, png, series


def test_simulate_plot_renders_png(plotted):
    from matplotlib import image

    result, png, _ = plotted
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(png)
    height, width = pixels.shape[:2]
    assert width >= 800 and height >= 800
    # Not a blank canvas: the curves and labels vary the pixels.
    assert float(np.std(pixels[..., :3])) > 0.05
    assert f"wrote {png}" in result.stderr


def test_simulate_csv_has_row_per_config_and_time(plotted):
    result, _, series = plotted
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(series.read_text())))
    assert len(rows) == 2 * POINTS
    assert {row["max_num_seqs"] for row in rows} == {"1000", "10000"}
    columns = set(rows[0])
    for name in ("time_s", "output_tokens_per_s", "kv_cache_usage", "running_requests", "waiting_requests",
                 "preemptions", "cumulative_preemptions", "hbm_share"):
        assert name in columns
    large = [row for row in rows if row["max_num_seqs"] == "10000"]
    small = [row for row in rows if row["max_num_seqs"] == "1000"]
    assert max(float(row["kv_cache_usage"]) for row in large) >= 0.99
    assert max(float(row["kv_cache_usage"]) for row in small) < 0.9
    assert float(large[-1]["cumulative_preemptions"]) > 1000
    assert float(small[-1]["cumulative_preemptions"]) < 1


def test_simulate_json_and_table():
    result = run_kvplan("simulate", PLAN_8B, *CONFIGS, "--format", "json", "--points", "10")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["command"] == "simulate"
    assert len(document["time_s"]) == 10
    runs = document["runs"]
    assert [run["config"]["max_num_seqs"] for run in runs] == [1000, 10000]
    for run in runs:
        assert run["feasible"] and run["finished"]
        assert run["summary"]["makespan_s"] > 0
        assert run["closed_form"]["makespan_s"] > 0
        assert len(run["series"]["kv_cache_usage"]) == 10

    table = run_kvplan("simulate", PLAN_8B, "--config", "max_num_seqs=1000")
    assert table.returncode == 0, table.stderr
    assert "makespan" in table.stdout
    assert "Over time, dp=1,tp=1,pp=1,max_num_seqs=1000" in table.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--config", "dp=1", "--points", "1"], "--points must be between"),
        (["--config", "dp=1", "--plot", "sim.jpg"], "must end in .png"),
        (["--config", "dp=1,colour=red"], "unknown key 'colour'"),
        (["--config", "dp=1", "--duration", "60"], "--duration applies to an arrival rate"),
        (["--config", "dp=1", "--duration", "-5"], "--duration must be a positive"),
    ],
)
def test_simulate_usage_errors_exit_2(arguments, message):
    result = run_kvplan("simulate", PLAN_8B, *arguments)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_missing_plan_exits_1(tmp_path):
    result = run_kvplan("simulate", str(tmp_path / "missing.yaml"), "--config", "dp=1")
    assert result.returncode == 1
    assert "missing.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_infeasible_only_exits_1():
    result = run_kvplan("simulate", PLAN_405B, "--config", "tp=1")
    assert result.returncode == 1
    assert "weights do not fit" in result.stderr
    assert "no feasible deployment" in result.stderr


def test_simulate_plot_into_missing_folder_exits_1(tmp_path):
    target = tmp_path / "no-such-folder" / "sim.png"
    result = run_kvplan("simulate", PLAN_8B, "--config", "max_num_seqs=1000", "--points", "5",
                        "--plot", str(target))
    assert result.returncode == 1
    assert "cannot write" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists()
