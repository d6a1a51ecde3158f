"""Tests of ``load_plan_with_overrides``, the loader behind ``kvplan sweep --set`` and ``kvplan size``."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvplan
import kvplan.spec
from kvplan.spec import SpecError, load_plan_with_overrides

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

# The workload is a path to an offline batch of 2,000 requests, and the node a built-in name.
QWEN_PLAN = EXAMPLES_DIR / "h200-reasoning" / "qwen-32b-8xh200.yaml"
# The workload is inline, with a base and its own requests: 10000.
LLAMA_PLAN = EXAMPLES_DIR / "h200-reasoning" / "llama-8b-1xh200.yaml"


def load_issues(path, overrides) -> list[kvplan.SpecIssue]:
    with pytest.raises(SpecError) as caught:
        load_plan_with_overrides(path, overrides)
    return caught.value.issues


def test_overrides_exported_from_kvplan():
    assert kvplan.load_plan_with_overrides is kvplan.spec.load_plan_with_overrides


def test_overrides_none_equal_load_plan():
    assert load_plan_with_overrides(QWEN_PLAN, {}) == kvplan.load_plan(QWEN_PLAN)


def test_overrides_rate_on_referenced_workload():
    plan = load_plan_with_overrides(QWEN_PLAN, {"workload.arrival_rate": "4/s", "objective": "throughput"})
    original = kvplan.load_plan(QWEN_PLAN)

    assert plan.workload.arrival_mode == "rate"
    assert plan.workload.arrival_rate_per_s == 4.0
    assert plan.workload.requests is None
    assert plan.workload.name == "natural-reasoning"
    assert plan.workload.output_tokens == original.workload.output_tokens
    assert plan.objective == "output_tokens_per_s"


def test_overrides_rate_drops_inline_requests():
    plan = load_plan_with_overrides(LLAMA_PLAN, {"workload.arrival_rate": "2/s", "objective": None})

    assert plan.workload.arrival_mode == "rate"
    assert plan.workload.requests is None
    assert plan.workload.name == "natural-reasoning-short-answers"
    # Without an objective, a rate workload defaults to throughput per GPU.
    assert plan.objective == "output_tokens_per_s_per_gpu"


def test_overrides_concurrency_replaces_rate():
    plan = load_plan_with_overrides(
        QWEN_PLAN, {"workload": "../workloads/chat-from-logs.yaml", "workload.concurrency": 8, "objective": None}
    )

    assert plan.workload.arrival_mode == "concurrency"
    assert plan.workload.concurrency == 8
    assert plan.workload.arrival_rate_per_s is None


def test_overrides_later_mode_wins():
    plan = load_plan_with_overrides(QWEN_PLAN, {"workload.arrival_rate": "4/s", "workload.requests": 100})

    assert plan.workload.arrival_mode == "batch"
    assert plan.workload.requests == 100
    assert plan.workload.arrival_rate_per_s is None


def test_overrides_nested_key_of_builtin_node():
    plan = load_plan_with_overrides(QWEN_PLAN, {"hardware.node.efficiency.compute": 0.7})
    builtin = kvplan.spec.load_node("h200-sxm-8")

    assert plan.node.compute_efficiency == 0.7
    assert plan.node.hbm_bandwidth_efficiency == builtin.hbm_bandwidth_efficiency


def test_overrides_null_removes_inherited_key(tmp_path):
    (tmp_path / "priced-node.yaml").write_text(
        "apiVersion: kvplan/v1\nkind: Node\nbase: h200-sxm-8\nname: h200-priced\nprice_per_gpu_hour: 3.0\n",
        encoding="utf-8",
    )
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(
        "apiVersion: kvplan/v1\nkind: Plan\nname: priced\n"
        f"model: {EXAMPLES_DIR / 'models' / 'deepseek-r1-distill-llama-8b.yaml'}\n"
        "hardware:\n  node: priced-node.yaml\n"
        f"workload: {EXAMPLES_DIR / 'workloads' / 'chat-from-logs.yaml'}\n",
        encoding="utf-8",
    )

    plan = load_plan_with_overrides(plan_path, {"hardware.node.price_per_gpu_hour": None})

    assert kvplan.load_plan(plan_path).node.price_per_gpu_hour == 3.0
    assert plan.node.name == "h200-priced"
    assert plan.node.price_per_gpu_hour is None


def test_overrides_nested_key_keeps_inherited_keys():
    plan = load_plan_with_overrides(QWEN_PLAN, {"workload.output_tokens.max": 8192})

    assert plan.workload.output_tokens.max_tokens == 8192
    assert plan.workload.output_tokens.description.startswith("lognormal(median=4500, sigma=0.7)")


def test_overrides_nested_key_keeps_lengths_file():
    plan = load_plan_with_overrides(
        QWEN_PLAN,
        {"workload": "../workloads/chat-from-logs.yaml", "workload.output_tokens.max": 1024, "objective": None},
    )
    original = kvplan.spec.load_workload(EXAMPLES_DIR / "workloads" / "chat-from-logs.yaml")

    assert plan.workload.output_tokens.max_tokens == 1024
    assert "chat-lengths.csv" in plan.workload.output_tokens.description
    assert plan.workload.prompt_tokens == original.prompt_tokens


def test_overrides_price_on_builtin_node():
    plan = load_plan_with_overrides(QWEN_PLAN, {"hardware.node.price_per_gpu_hour": 3.5})

    assert plan.node.price_per_gpu_hour == 3.5
    assert plan.node.name == "h200-sxm-8"
    assert plan.node.gpus_per_node == 8


def test_overrides_node_and_model_paths():
    plan = load_plan_with_overrides(
        QWEN_PLAN, {"hardware.node": "h100-sxm-8", "model": "../models/deepseek-r1-distill-llama-8b.yaml"}
    )

    assert plan.node.name == "h100-sxm-8"
    assert plan.model.name == "deepseek-r1-distill-llama-8b"


def test_overrides_null_restores_default_budget():
    plan = load_plan_with_overrides(QWEN_PLAN, {"hardware.nodes": 2, "search.gpu_budget": None})

    assert plan.num_nodes == 2
    assert plan.search.gpu_budget == 16


def test_overrides_create_missing_mappings():
    plan = load_plan_with_overrides(QWEN_PLAN, {"sla": None, "sla.tpot.p50": "40ms"})

    assert [(bound.metric, bound.statistic, bound.max_s) for bound in plan.sla] == [("tpot", "p50", 0.04)]


def test_overrides_leave_file_unchanged():
    load_plan_with_overrides(QWEN_PLAN, {"hardware.nodes": 2, "workload.arrival_rate": "1/s", "objective": None})

    assert kvplan.load_plan(QWEN_PLAN).workload.arrival_mode == "batch"


@pytest.mark.parametrize(
    ("overrides", "file", "path", "message"),
    [
        ({"workload.arrival_rate": "4", "objective": None}, "--set workload.arrival_rate=4",
         "$.workload.arrival_rate", "has no unit"),
        ({"workload.arival_rate": "4/s"}, "--set workload.arival_rate=4/s",
         "$.workload.arival_rate", "did you mean 'arrival_rate'?"),
        ({"hardware.node.price_per_gpu_hour": 0}, "--set hardware.node.price_per_gpu_hour=0",
         "$.hardware.node.price_per_gpu_hour", "must be greater than 0"),
        ({"model": "../models/missing.yaml"}, "--set model=../models/missing.yaml", "$.model", "not found"),
        ({"hardware.nodes.count": 2}, "--set hardware.nodes.count=2", "$.hardware.nodes.count",
         "hardware.nodes is 1, not a mapping"),
        ({"search..tp": [1]}, "--set search..tp=[1]", "$", "invalid path 'search..tp'"),
    ],
)
def test_overrides_problem_names_set_text(overrides, file, path, message):
    issues = load_issues(QWEN_PLAN, overrides)

    assert len(issues) == 1, issues
    assert issues[0].file == file
    assert issues[0].line is None
    assert issues[0].path == path
    assert message in issues[0].message


def test_overrides_problem_in_plan_keeps_line():
    issues = load_issues(QWEN_PLAN, {"workload.arrival_rate": "4/s"})

    assert len(issues) == 1, issues
    assert issues[0].file == str(QWEN_PLAN)
    assert issues[0].path == "$.objective"
    assert issues[0].line is not None
    assert "objective makespan needs an offline batch" in issues[0].message
