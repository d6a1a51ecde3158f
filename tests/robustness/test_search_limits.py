"""Limits of the search options: --trials and --seed, and a search that stops once its space is exhausted."""

from __future__ import annotations

import time

import pytest

import kvplan
from kvplan.optimizer.search import TRIALS_PER_BATCH, optimize
from kvplan.optimizer.space import build_search_space

from .conftest import EXAMPLES_DIR, assert_clean_failure

# Twelve deployments: one layout, six max_num_seqs values and two token budgets.
SMALL_PLAN = EXAMPLES_DIR / "h200-reasoning" / "llama-8b-1xh200.yaml"


def test_search_stops_when_space_exhausted() -> None:
    plan = kvplan.load_plan(SMALL_PLAN)
    space_size = build_search_space(plan).size
    reports: list[int] = []

    started = time.monotonic()
    result = optimize(plan, trials=1000, progress=lambda done, total, best: reports.append(done))
    elapsed = time.monotonic() - started

    assert result.evaluated == space_size
    # The first batch of random trials covers twelve points; later trials could only repeat them.
    assert reports[-1] <= 2 * TRIALS_PER_BATCH, reports
    assert elapsed < 60.0


def test_pareto_search_stops_when_space_exhausted() -> None:
    plan = kvplan.load_plan(SMALL_PLAN)
    space_size = build_search_space(plan).size

    started = time.monotonic()
    result = optimize(plan, trials=2000, objectives=["makespan_s", "ttft_p99"])
    elapsed = time.monotonic() - started

    assert result.evaluated == space_size
    assert elapsed < 60.0


@pytest.mark.parametrize("command", ["optimize", "size", "sweep", "check", "explain", "launch"])
def test_trials_above_limit_rejected(cli, command: str) -> None:
    extra = {"size": ["--arrival-rate", "1/s"], "sweep": ["--set", "workload.requests=1,2"],
             "launch": ["--rank", "1"]}.get(command, [])

    result = cli(command, SMALL_PLAN, *extra, "--trials", "1000000000")

    assert result.code == 2, result.output
    assert "--trials must be at most 100,000, but got 1,000,000,000" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("seed", ["-5", "4294967296"])
@pytest.mark.parametrize("command", ["optimize", "size"])
def test_seed_out_of_range_rejected(cli, command: str, seed: str) -> None:
    extra = ["--arrival-rate", "1/s"] if command == "size" else []

    result = cli(command, SMALL_PLAN, *extra, "--seed", seed)

    assert result.code == 2, result.output
    assert f"--seed must be from 0 to 4,294,967,295, but got {int(seed):,}" in result.stderr
    assert "internal error" not in result.output
    assert "Traceback" not in result.output
