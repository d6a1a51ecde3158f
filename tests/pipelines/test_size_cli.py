"""Tests of ``kvplan size``: node counts, the chosen fleet, its cost and the exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

import kvplan
from kvplan.commands.size import replica_counts
from kvplan.costmodel.attribution import RESOURCE_LABELS

LLAMA_PLAN = Path(__file__).resolve().parents[2] / "examples" / "h200-reasoning" / "llama-8b-1xh200.yaml"


@pytest.fixture(scope="module")
def one_node_rate(rate_plan_path) -> float:
    """The highest arrival rate a deployment on one node of the rate plan keeps up with."""
    plan = kvplan.load_plan_with_overrides(rate_plan_path, {"search.dp": replica_counts(1, 8)})
    result = kvplan.optimize(plan, exhaustive=True)
    return max(r.evaluation.metrics["max_arrival_rate_per_s"] for r in result.results if r.evaluation.feasible)


@pytest.fixture(scope="module")
def two_node_rate(one_node_rate) -> str:
    """A rate that one node cannot keep up with, but two nodes can."""
    return f"{1.5 * one_node_rate:.0f}/s"


@pytest.fixture(scope="module")
def size_runs(run_cli, rate_plan_path, two_node_rate):
    """Size the rate plan for two nodes' worth of traffic in each output format, keyed by format.

    Markdown sizes for the plan's own rate, which one node serves, to save a search.
    """
    runs = {
        output_format: run_cli("size", rate_plan_path, "--arrival-rate", two_node_rate, "--exhaustive",
                               "--format", output_format)
        for output_format in ("table", "json", "csv")
    }
    runs["markdown"] = run_cli("size", rate_plan_path, "--exhaustive", "--format", "markdown")
    return runs


def table_rows(stdout: str, first_cell: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.split(" ", 1)[0] == first_cell]


def test_replica_counts_fill_three_nodes():
    assert replica_counts(3, 24) == [1, 2, 3, 4, 6, 8, 12, 16, 24]


def test_replica_counts_one_node():
    assert replica_counts(1, 8) == [1, 2, 4, 8]


# --- Output formats ----------------------------------------------------------------


def test_size_table_stops_at_two_nodes(size_runs, two_node_rate):
    run = size_runs["table"]

    assert run.exit_code == 0, run.stderr
    assert run.stdout.startswith(f"Sizing plan small-8b-chat for {two_node_rate.removesuffix('/s')} requests/s")
    assert f"cannot keep up with {two_node_rate.removesuffix('/s')} requests/s" in table_rows(run.stdout, "1")[0]
    assert table_rows(run.stdout, "2")[0].endswith(" met")
    assert table_rows(run.stdout, "3") == []
    assert "Fleet: 2 x h200-priced (16 GPUs)." in run.stdout


def test_size_table_prints_cost(size_runs):
    run = size_runs["table"]

    assert "Cost: $40.00 per hour (16 GPUs x $2.5), $" in run.stdout
    assert " per million output tokens." in run.stdout


def test_size_json_fleet(size_runs):
    run = size_runs["json"]
    document = json.loads(run.stdout)
    fleet = document["fleet"]

    assert run.exit_code == 0, run.stderr
    assert document["schema_version"] == 1
    assert document["command"] == "size"
    assert [step["status"] for step in document["steps"]] == ["sla_missed", "met"]
    assert fleet["nodes"] == 2
    assert fleet["gpus"] == 16
    assert fleet["cost_per_hour"] == pytest.approx(40.0)
    assert fleet["deployment"]["sla_met"] is True
    assert document["reason"] is None


def test_size_json_cost_per_million_tokens(size_runs):
    fleet = json.loads(size_runs["json"].stdout)["fleet"]
    tokens_per_s = fleet["deployment"]["metrics"]["output_tokens_per_s"]

    assert fleet["cost_per_million_tokens"] == pytest.approx(40.0 / 3600 / tokens_per_s * 1e6)


def test_size_csv_rows(size_runs):
    run = size_runs["csv"]
    rows = list(csv.DictReader(io.StringIO(run.stdout)))

    assert run.exit_code == 0, run.stderr
    assert [row["nodes"] for row in rows] == ["1", "2"]
    assert [row["gpus"] for row in rows] == ["8", "16"]
    assert [row["status"] for row in rows] == ["sla_missed", "met"]
    assert [float(row["cost_per_hour"]) for row in rows] == [20.0, 40.0]


def test_size_names_bottleneck_in_words(size_runs):
    csv_rows = list(csv.DictReader(io.StringIO(size_runs["csv"].stdout)))
    met = table_rows(size_runs["table"].stdout, "2")[0]

    label = csv_rows[1]["bottleneck_label"]

    assert label in RESOURCE_LABELS.values()
    assert label in met


def test_size_markdown_table(size_runs):
    run = size_runs["markdown"]

    assert run.exit_code == 0, run.stderr
    assert "| nodes   | GPUs   |" in run.stdout
    assert "Fleet: 1 x h200-priced (8 GPUs)." in run.stdout


# --- Plans that need care ------------------------------------------------------------


def test_size_without_price_says_so(run_cli, write_plan):
    path = write_plan("unpriced", ("""  node:
    base: h200-sxm-8
    name: h200-priced
    price_per_gpu_hour: 2.5
""", "  node: h200-sxm-8\n"))

    run = run_cli("size", path, "--exhaustive")

    assert run.exit_code == 0, run.stderr
    assert "Fleet: 1 x h200-sxm-8 (8 GPUs)." in run.stdout
    assert "Cost: node h200-sxm-8 has no price" in run.stdout
    assert "$/h" not in run.stdout


def test_size_skips_too_few_gpus(run_cli, write_plan):
    path = write_plan("tp8-pp2", ("  tp: [1]\n  pp: [1]\n", "  dp: [1]\n  tp: [8]\n  pp: [2]\n"))

    run = run_cli("size", path, "--exhaustive", "--format", "json")
    steps = json.loads(run.stdout)["steps"]

    assert run.exit_code == 0, run.stderr
    assert [step["status"] for step in steps] == ["search_too_large", "met"]
    assert steps[0]["issues"][0]["path"].startswith("$.search")
    assert steps[1]["deployment"]["config"] == {**steps[1]["deployment"]["config"], "dp": 1, "tp": 8, "pp": 2}


def test_size_makespan_plan_uses_throughput(run_cli):
    run = run_cli("size", LLAMA_PLAN, "--arrival-rate", "1/s", "--exhaustive")

    assert run.exit_code == 0, run.stderr
    assert "throughput_per_gpu in place of the plan's makespan" in run.stdout
    assert "Fleet: 1 x h200-sxm-8 (8 GPUs)." in run.stdout


def test_size_pinned_layouts_stop_early(run_cli):
    # The plan pins dp, tp and pp to 1, so a second node cannot add capacity.
    run = run_cli("size", LLAMA_PLAN, "--arrival-rate", "10000/s", "--exhaustive")

    assert run.exit_code == 1
    assert table_rows(run.stdout, "2") == []
    assert "more nodes cannot help" in run.stderr
    assert "the highest rate sustained was" in run.stderr


def test_size_max_nodes_reached_exit_1(run_cli, rate_plan_path, two_node_rate):
    run = run_cli("size", rate_plan_path, "--arrival-rate", two_node_rate, "--max-nodes", "1", "--exhaustive")

    assert run.exit_code == 1
    assert "no deployment on up to 1 node(s) of h200-priced keeps up with" in run.stderr
    assert "the highest rate sustained was" in run.stderr
    assert "No fleet found:" in run.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--arrival-rate", "20"], "invalid --arrival-rate"),
        (["--arrival-rate", "0/s"], "must be greater than 0"),
        (["--max-nodes", "0"], "--max-nodes must be at least 1"),
    ],
)
def test_size_usage_error_exit_2(run_cli, rate_plan_path, options, message):
    run = run_cli("size", rate_plan_path, *options)

    assert run.exit_code == 2
    assert message in run.stderr
    assert run.stdout == ""


def test_size_batch_plan_needs_rate_exit_2(run_cli):
    run = run_cli("size", LLAMA_PLAN)

    assert run.exit_code == 2
    assert "--arrival-rate is required, because workload 'natural-reasoning-short-answers' sets requests" in (
        run.stderr
    )
