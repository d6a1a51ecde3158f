"""Tests that every spec under examples/ loads and has the documented values."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvplan.spec import load_model, load_plan, load_workload, validate_paths
from kvplan.spec.distributions import distribution_mean, lognormal_cut_mean

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
MODEL_FILES = sorted((EXAMPLES_DIR / "models").glob("*.yaml"))
WORKLOAD_FILES = sorted((EXAMPLES_DIR / "workloads").glob("*.yaml"))
PLAN_FILES = sorted((EXAMPLES_DIR / "h200-reasoning").glob("*.yaml"))


def test_examples_present() -> None:
    assert sorted(path.stem for path in MODEL_FILES) == [
        "deepseek-r1",
        "deepseek-r1-distill-llama-70b",
        "deepseek-r1-distill-llama-8b",
        "deepseek-r1-distill-qwen-14b",
        "deepseek-r1-distill-qwen-32b",
        "llama-3.1-405b",
    ]
    assert sorted(path.stem for path in PLAN_FILES) == [
        "deepseek-r1-8xh200",
        "llama-405b-8xh200",
        "llama-70b-8xh200",
        "llama-8b-1xh200",
        "qwen-14b-8xh200",
        "qwen-32b-8xh200",
    ]
    assert sorted(path.stem for path in WORKLOAD_FILES) == ["chat-from-logs", "natural-reasoning"]


def test_examples_folder_valid() -> None:
    # examples/gitops/broken/ is invalid on purpose; tests/gitops checks its errors.
    broken = EXAMPLES_DIR / "gitops" / "broken"
    issues = validate_paths([EXAMPLES_DIR])
    assert [str(issue) for issue in issues if broken not in Path(issue.file).parents] == []


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda path: path.stem)
def test_example_model_loads(path: Path) -> None:
    model = load_model(path)
    assert model.name == path.stem
    expected_dtype = "fp8" if path.stem == "deepseek-r1" else "bfloat16"
    assert model.weight_dtype == expected_dtype
    assert model.kv_cache_dtype == "auto"


@pytest.mark.parametrize("path", WORKLOAD_FILES, ids=lambda path: path.stem)
def test_example_workload_loads(path: Path) -> None:
    workload = load_workload(path)
    assert workload.name == path.stem


def test_natural_reasoning_values() -> None:
    workload = load_workload(EXAMPLES_DIR / "workloads" / "natural-reasoning.yaml")
    assert workload.arrival_mode == "batch"
    assert workload.requests == 2000
    assert workload.prompt_tokens.max_tokens == 4096
    assert workload.output_tokens.max_tokens == 16384
    assert distribution_mean(workload.prompt_tokens) == pytest.approx(lognormal_cut_mean(95, 0.45, 4096), rel=1e-9)
    assert distribution_mean(workload.output_tokens) == pytest.approx(lognormal_cut_mean(4500, 0.7, 16384), rel=1e-9)
    # The comment in the file states these cut means.
    assert round(distribution_mean(workload.prompt_tokens)) == 105
    assert round(distribution_mean(workload.output_tokens)) == 5557


def test_chat_from_logs_reads_csv() -> None:
    workload = load_workload(EXAMPLES_DIR / "workloads" / "chat-from-logs.yaml")
    assert workload.arrival_mode == "rate"
    assert workload.arrival_rate_per_s == 4.0
    assert workload.output_tokens.max_tokens == 2048
    assert workload.prompt_tokens.description.startswith("file(chat-lengths.csv, field=prompt_tokens, 240 values)")


@pytest.mark.parametrize("path", PLAN_FILES, ids=lambda path: path.stem)
def test_example_plan_loads(path: Path) -> None:
    plan = load_plan(path)
    assert plan.name == path.stem
    assert plan.node.name == "h200-sxm-8"
    assert plan.num_nodes == 1
    assert plan.objective == "makespan_s"
    assert plan.workload.arrival_mode == "batch"


@pytest.mark.parametrize("path", PLAN_FILES, ids=lambda path: path.stem)
def test_example_plan_search_is_small(path: Path) -> None:
    search = load_plan(path).search
    sizes = [len(values) for values in (search.max_num_seqs, search.max_num_batched_tokens, search.gpu_memory_utilization)]
    budget_powers = [2**exponent for exponent in range(search.gpu_budget.bit_length()) if 2**exponent <= search.gpu_budget]
    layouts = [
        (dp, tp, pp)
        for dp in (search.dp or budget_powers)
        for tp in (search.tp or budget_powers)
        for pp in (search.pp or budget_powers)
        if dp * tp * pp <= search.gpu_budget
    ]
    points = len(layouts) * sizes[0] * sizes[1] * sizes[2]
    assert 1 <= points <= 300


def test_llama_8b_plan_values() -> None:
    plan = load_plan(EXAMPLES_DIR / "h200-reasoning" / "llama-8b-1xh200.yaml")
    assert plan.workload.requests == 10000
    assert plan.workload.output_tokens.description == "lognormal(median=600, sigma=0.5), max 16384"
    assert plan.workload.prompt_tokens.description == "lognormal(median=95, sigma=0.45), max 4096"
    assert plan.search.gpu_budget == 1
    assert (plan.search.dp, plan.search.tp, plan.search.pp) == ((1,), (1,), (1,))
    assert plan.search.max_num_seqs == (1000, 2000, 4000, 6000, 8000, 10000)


@pytest.mark.parametrize("path", [path for path in PLAN_FILES if "8xh200" in path.stem], ids=lambda path: path.stem)
def test_eight_gpu_plans_share_workload_and_sla(path: Path) -> None:
    plan = load_plan(path)
    assert plan.workload.name == "natural-reasoning"
    assert plan.workload.requests == 2000
    assert plan.search.gpu_budget == 8
    assert plan.search.max_num_batched_tokens == (8192, 16384)
    assert [(bound.metric, bound.statistic) for bound in plan.sla] == [("ttft", "p99")]
