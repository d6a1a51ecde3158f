"""Tests of the optional search settings in a plan: node types, KV cache dtype, watermark,
full-prompt admission and expert parallelism.

The plan that ``minimal_plan`` renders has 11 lines, so extra YAML starts at line 12.
"""

from __future__ import annotations

import pytest

from kvplan.spec import SpecError, SpecIssue, load_plan
from kvplan.spec.types import FloatRange


def raised_issues(path) -> list[SpecIssue]:
    with pytest.raises(SpecError) as excinfo:
        load_plan(path)
    return excinfo.value.issues


def locations(issues: list[SpecIssue]) -> list[tuple[int | None, str]]:
    return [(issue.line, issue.path) for issue in issues]


def test_search_axes_loaded(write, minimal_plan) -> None:
    plan = load_plan(write("plan.yaml", minimal_plan("""\
        search:
          node: [h200-sxm-8, h100-sxm-8]
          kv_cache_dtype: [auto, fp8]
          watermark: [0, 0.01, 0.05]
          require_full_prompt_admission: [false, true]
        """)))
    search = plan.search

    assert [node.name for node in search.node] == ["h200-sxm-8", "h100-sxm-8"]
    assert search.node_gpu_budgets == (8, 8)
    assert search.kv_cache_dtype == ("auto", "fp8")
    assert search.watermark == (0.0, 0.01, 0.05)
    assert search.require_full_prompt_admission == (False, True)
    assert search.enable_expert_parallel is None


def test_unsearched_axes_are_none(write, minimal_plan) -> None:
    search = load_plan(write("plan.yaml", minimal_plan())).search

    assert (search.node, search.kv_cache_dtype, search.watermark) == (None, None, None)
    assert (search.require_full_prompt_admission, search.enable_expert_parallel) == (None, None)


def test_watermark_range_loaded(write, minimal_plan) -> None:
    plan = load_plan(write("plan.yaml", minimal_plan("""\
        search:
          watermark: {min: 0, max: 0.1, step: 0.05}
        """)))

    assert plan.search.watermark == FloatRange(low=0.0, high=0.1, step=0.05)


def test_node_file_resolved_relative_to_plan(write, minimal_plan) -> None:
    write("nodes/h100.yaml", """\
        apiVersion: kvplan/v1
        kind: Node
        base: h100-sxm-8
        name: h100-priced
        price_per_gpu_hour: 2.5
        """)
    plan = load_plan(write("plan.yaml", minimal_plan("""\
        search:
          node: [nodes/h100.yaml, {base: h200-sxm-8, name: h200-4, gpus_per_node: 4}]
        """)))

    assert [node.name for node in plan.search.node] == ["h100-priced", "h200-4"]
    assert plan.search.node[0].price_per_gpu_hour == 2.5
    assert plan.search.node_gpu_budgets == (8, 4)


def test_node_budget_follows_nodes(write, minimal_plan) -> None:
    text = minimal_plan("""\
        search:
          node: [h200-sxm-8, {base: h200-sxm-8, name: h200-4, gpus_per_node: 4}]
        """).replace("  node: h200-sxm-8\n", "  node: h200-sxm-8\n  nodes: 2\n", 1)
    plan = load_plan(write("plan.yaml", text))

    assert plan.search.node_gpu_budgets == (16, 8)


@pytest.mark.parametrize(
    ("search", "line", "path", "message"),
    [
        ("  kv_cache_dtype: [fp16]\n", 13, "$.search.kv_cache_dtype[0]", "must be one of auto, fp8, but got 'fp16'"),
        ("  watermark: [1.0]\n", 13, "$.search.watermark[0]", "1.0"),
        ("  watermark: {min: 0.2, max: 0.1}\n", 13, "$.search.watermark.max", "max 0.1 is below min 0.2"),
        ("  require_full_prompt_admission: [yes please]\n", 13, "$.search.require_full_prompt_admission[0]",
         "must be true or false"),
        ("  node: []\n", 13, "$.search.node", "must list at least 1 value"),
        ("  node: [missing.yaml]\n", 13, "$.search.node[0]", "not found"),
    ],
)
def test_bad_axis_rejected_with_line(write, minimal_plan, search, line, path, message) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan("search:\n" + search)))

    assert locations(issues)[:1] == [(line, path)]
    assert message in issues[0].message


def test_expert_parallel_on_dense_model_rejected(write, minimal_plan) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan("""\
        search:
          enable_expert_parallel: [false, true]
        """)))

    assert locations(issues) == [(13, "$.search.enable_expert_parallel[1]")]
    assert "is dense (no MoE experts)" in issues[0].message
    assert "list only false" in issues[0].message


def test_expert_parallel_false_on_dense_model_accepted(write, minimal_plan) -> None:
    plan = load_plan(write("plan.yaml", minimal_plan("""\
        search:
          enable_expert_parallel: [false]
        """)))

    assert plan.search.enable_expert_parallel == (False,)


def test_duplicate_node_names_rejected(write, minimal_plan) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan("""\
        search:
          node: [h200-sxm-8, {base: h200-sxm-8}]
        """)))

    assert locations(issues) == [(13, "$.search.node[1]")]
    assert "already used by search.node[0]" in issues[0].message


@pytest.mark.parametrize("key, engine_value, search_value", [
    ("watermark", "0.01", "[0, 0.05]"),
    ("require_full_prompt_admission", "true", "[false, true]"),
])
def test_axis_under_engine_and_search_rejected(write, minimal_plan, key, engine_value, search_value) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan(f"""\
        engine:
          {key}: {engine_value}
        search:
          {key}: {search_value}
        """)))

    assert locations(issues) == [(13, f"$.engine.{key}")]
    assert f"{key} is set under both engine and search" in issues[0].message


def test_cost_objective_needs_price_on_search_nodes(write, minimal_plan) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan("""\
        objective: cost
        search:
          node: [{base: h200-sxm-8, name: priced, price_per_gpu_hour: 3}, h100-sxm-8]
        """)))

    assert locations(issues) == [(14, "$.search.node[1]")]
    assert "node 'h100-sxm-8' has no price_per_gpu_hour" in issues[0].message


def test_cost_objective_with_priced_search_nodes_accepted(write, minimal_plan) -> None:
    plan = load_plan(write("plan.yaml", minimal_plan("""\
        objective: cost
        search:
          node: [{base: h200-sxm-8, name: priced, price_per_gpu_hour: 3}]
        """)))

    assert plan.objective == "cost_per_million_tokens"


def test_gpu_budget_above_small_node_type_rejected(write, minimal_plan) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan("""\
        search:
          gpu_budget: 8
          node: [h200-sxm-8, {base: h200-sxm-8, name: h200-4, gpus_per_node: 4}]
        """)))

    assert locations(issues) == [(13, "$.search.gpu_budget")]
    assert "search.node[1]" in issues[0].message


def test_search_node_without_weight_dtype_peak_rejected(write, minimal_plan) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan("""\
        search:
          node:
            - h200-sxm-8
            - {base: h200-sxm-8, name: fp8-only, peak_flops: {fp8: 1979TFLOP/s}}
        """)))

    assert [issue.path for issue in issues] == ["$.search.node[1]"]
    assert "no peak_flops entry for bfloat16" in issues[0].message


def test_plan_schema_lists_axes() -> None:
    from kvplan.spec.validation import load_schema

    search = load_schema("plan.json")["properties"]["search"]["properties"]

    assert {"node", "kv_cache_dtype", "watermark", "require_full_prompt_admission",
            "enable_expert_parallel"} <= set(search)


def test_deployed_axes_loaded(write, minimal_plan) -> None:
    plan = load_plan(write("plan.yaml", minimal_plan("""\
        search:
          node: [h200-sxm-8, h100-sxm-8]
        deployed:
          dp: 1
          tp: 2
          pp: 1
          node: h100-sxm-8
          kv_cache_dtype: fp8
          watermark: 0.01
        """)))
    deployed = plan.deployed

    assert (deployed.node, deployed.kv_cache_dtype, deployed.watermark) == ("h100-sxm-8", "fp8", 0.01)
    assert deployed.enable_expert_parallel is None


def test_deployed_unknown_node_rejected(write, minimal_plan) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan("""\
        deployed:
          dp: 1
          tp: 2
          pp: 1
          node: a100
        """)))

    assert locations(issues) == [(16, "$.deployed.node")]
    assert issues[0].message.startswith("node 'a100' is not a node type of this plan; use one of h200-sxm-8")


def test_deployed_expert_parallel_on_dense_rejected(write, minimal_plan) -> None:
    issues = raised_issues(write("plan.yaml", minimal_plan("""\
        deployed:
          dp: 1
          tp: 2
          pp: 1
          enable_expert_parallel: true
        """)))

    assert locations(issues) == [(16, "$.deployed.enable_expert_parallel")]
    assert "is dense" in issues[0].message
