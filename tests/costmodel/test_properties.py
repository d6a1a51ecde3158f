"""Physical and numerical properties of the cost model over the example plans.

Hypothesis draws deployments from each plan's search space. Batches stay at or below
``MIN_BATCH_ROWS`` rows, so every draw reuses the model compiled for that shape.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvplan.costmodel.evaluate import MIN_BATCH_ROWS, CostModel, Deployment, _evaluate_one
from kvplan.optimizer.space import build_search_space
from kvplan.spec.types import Plan

PROPERTY_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

LATENCY_STATISTICS = ("mean", "p50", "p90", "p99")

# max_num_seqs sweep of the 8B plan on one H200, at its other engine settings.
SEQS_SWEEP_8B = tuple(range(1000, 10_001, 1000))


def space_deployments(plan: Plan) -> list[Deployment]:
    return build_search_space(plan).deployments()


def draw_plan_and_deployments(data, example_plans: dict[str, Plan]) -> tuple[Plan, list[Deployment]]:
    name = data.draw(st.sampled_from(sorted(example_plans)), label="plan")
    plan = example_plans[name]
    deployments = data.draw(
        st.lists(st.sampled_from(space_deployments(plan)), min_size=1, max_size=MIN_BATCH_ROWS),
        label="deployments",
    )
    return plan, deployments


def with_node(plan: Plan, **changes) -> Plan:
    return dataclasses.replace(plan, node=dataclasses.replace(plan.node, **changes))


def with_output_scaled(plan: Plan, factor: float) -> Plan:
    output = plan.workload.output_tokens
    scaled = dataclasses.replace(
        output,
        values=tuple(value * factor for value in output.values),
        max_tokens=math.ceil(output.max_tokens * factor),
    )
    return dataclasses.replace(plan, workload=dataclasses.replace(plan.workload, output_tokens=scaled))


# --- Monotonicity --------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=st.data(), utilizations=st.lists(st.floats(0.3, 0.99), min_size=2, max_size=2))
def test_kv_capacity_monotonic_in_utilization(example_plans, data, utilizations):
    plan, deployments = draw_plan_and_deployments(data, example_plans)
    low, high = sorted(utilizations)
    model = CostModel(plan)

    capacity_low = model.evaluate_raw(
        [dataclasses.replace(d, gpu_memory_utilization=low) for d in deployments]
    )["kv_capacity_tokens"]
    capacity_high = model.evaluate_raw(
        [dataclasses.replace(d, gpu_memory_utilization=high) for d in deployments]
    )["kv_capacity_tokens"]

    assert np.all(capacity_high >= capacity_low)


@PROPERTY_SETTINGS
@given(data=st.data(), scales=st.lists(st.floats(0.5, 2.0), min_size=2, max_size=2))
def test_kv_capacity_monotonic_in_gpu_memory(example_plans, data, scales):
    plan, deployments = draw_plan_and_deployments(data, example_plans)
    small, large = sorted(scales)
    memory = plan.node.gpu_memory_bytes

    capacity_small = CostModel(with_node(plan, gpu_memory_bytes=memory * small)).evaluate_raw(deployments)
    capacity_large = CostModel(with_node(plan, gpu_memory_bytes=memory * large)).evaluate_raw(deployments)

    assert np.all(capacity_large["kv_capacity_tokens"] >= capacity_small["kv_capacity_tokens"])


@PROPERTY_SETTINGS
@given(data=st.data(), factor=st.floats(1.0, 3.0))
def test_makespan_monotonic_in_output_length(example_plans, data, factor):
    plan, deployments = draw_plan_and_deployments(data, example_plans)

    base = CostModel(plan).evaluate_raw(deployments)
    longer = CostModel(with_output_scaled(plan, factor)).evaluate_raw(deployments)
    feasible_in_both = (base["reason"] == 0) & (longer["reason"] == 0)

    assert np.all(longer["makespan_s"][feasible_in_both] >= base["makespan_s"][feasible_in_both])


# --- Batching ------------------------------------------------------------------------


def assert_trees_close(batched: dict[str, Any], single: dict[str, Any], row: int, deployment: Deployment) -> None:
    batched_leaves = jax.tree_util.tree_leaves_with_path(batched)
    single_leaves = jax.tree_util.tree_leaves_with_path(single)
    assert len(batched_leaves) == len(single_leaves)
    for (path, batched_leaf), (_, single_leaf) in zip(batched_leaves, single_leaves):
        np.testing.assert_allclose(
            np.asarray(batched_leaf)[row],
            np.asarray(single_leaf),
            rtol=1e-5,
            equal_nan=True,
            err_msg=f"{jax.tree_util.keystr(path)} of {deployment}",
        )


def test_evaluate_raw_batch_equals_single_rows(example_plans, example_plan_name):
    plan = example_plans[example_plan_name]
    deployments = space_deployments(plan)
    model = CostModel(plan)

    batched = model.evaluate_raw(deployments)

    for row in range(0, len(deployments), 5):
        single = model.evaluate_raw([deployments[row]])
        single_row = jax.tree_util.tree_map(lambda leaf: leaf[0], single)
        assert_trees_close(batched, single_row, row, deployments[row])


@pytest.fixture(scope="module")
def evaluate_unbatched():
    """``_evaluate_one`` jitted without vmap: one configuration per call."""
    return jax.jit(_evaluate_one, static_argnums=1)


@pytest.fixture(scope="module")
def plans_by_mode(example_plans, rate_plan, concurrency_plan) -> dict[str, Plan]:
    return {"batch": example_plans["qwen-14b-8xh200"], "rate": rate_plan, "concurrency": concurrency_plan}


@pytest.mark.parametrize("mode", ["batch", "rate", "concurrency"])
def test_evaluate_raw_vmap_equals_unbatched_loop(plans_by_mode, evaluate_unbatched, mode):
    plan = plans_by_mode[mode]
    assert plan.workload.arrival_mode == mode
    deployments = space_deployments(plan)[::4]
    model = CostModel(plan)

    batched = model.evaluate_raw(deployments)
    configs = model.config_batch(deployments)

    for row, deployment in enumerate(deployments):
        config = jax.tree_util.tree_map(lambda column: column[row], configs)
        single = evaluate_unbatched(model.inputs, plan.workload.arrival_mode, config)
        assert_trees_close(batched, single, row, deployment)


# --- Finite metrics ------------------------------------------------------------------


def walk_metrics(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (dotted path, value) for every leaf of nested metric dicts."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk_metrics(item, f"{path}.{key}" if path else key)
    else:
        yield path, value


def not_applicable_fields(plan: Plan, metrics: dict[str, Any]) -> set[str]:
    """Return the metric paths that may be None for this deployment."""
    fields = set()
    # Only an offline batch has a makespan.
    if plan.workload.arrival_mode != "batch":
        fields.add("makespan_s")
    # Cost needs a price per GPU hour, which a node spec may leave unset.
    if plan.node.price_per_gpu_hour is None:
        fields.add("cost_per_million_tokens")
    # An open-loop queue that cannot keep up has no steady-state waiting time.
    if metrics.get("keeps_up") is False:
        fields.update(f"{metric}.{statistic}" for metric in ("ttft_s", "e2e_s") for statistic in LATENCY_STATISTICS)
        # Nor a queueing time, so neither the split of a request's life.
        fields.update(("mean_queueing_s", "time_shares"))
    return fields


def undefined_metrics(plan: Plan, evaluations) -> list[str]:
    """Describe every None, NaN or infinite metric of a feasible evaluation."""
    problems = []
    for evaluation in evaluations:
        if not evaluation.feasible:
            continue
        allowed_none = not_applicable_fields(plan, evaluation.metrics)
        for path, value in walk_metrics(evaluation.metrics):
            if value is None:
                if path not in allowed_none:
                    problems.append(f"{evaluation.config}: {path} is None")
            elif isinstance(value, (bool, str)):
                continue
            elif not math.isfinite(value):
                problems.append(f"{evaluation.config}: {path} = {value}")
    return problems


def test_metrics_finite_over_exhaustive_space(exhaustive_result, example_plan_name):
    result = exhaustive_result(example_plan_name)
    evaluations = [ranked.evaluation for ranked in result.results]

    assert any(evaluation.feasible for evaluation in evaluations)
    assert undefined_metrics(result.plan, evaluations) == []


@pytest.mark.parametrize("mode", ["rate", "concurrency"])
@pytest.mark.parametrize("load", [1.0, 1000.0], ids=["nominal", "overloaded"])
def test_metrics_finite_in_arrival_modes(plans_by_mode, mode, load):
    plan = plans_by_mode[mode]
    workload = plan.workload
    if mode == "rate":
        workload = dataclasses.replace(workload, arrival_rate_per_s=workload.arrival_rate_per_s * load)
    else:
        workload = dataclasses.replace(workload, concurrency=int(workload.concurrency * load))
    plan = dataclasses.replace(plan, workload=workload)
    space = build_search_space(plan)
    # Every layout at the smallest and largest max_num_seqs keeps the batch within one
    # compiled shape.
    seqs = (space.max_num_seqs[0], space.max_num_seqs[-1])
    deployments = [d for d in space.deployments() if d.max_num_seqs in seqs]

    evaluations = CostModel(plan).evaluate(deployments)

    assert any(evaluation.feasible for evaluation in evaluations)
    assert undefined_metrics(plan, evaluations) == []


# --- max_num_seqs sweep of the 8B plan ------------------------------------------------


@pytest.fixture(scope="module")
def seqs_sweep_8b(example_plans) -> dict[int, dict[str, Any]]:
    """Metrics of dp=tp=pp=1 per max_num_seqs on the 8B plan."""
    plan = example_plans["llama-8b-1xh200"]
    engine = plan.engine
    deployments = [
        Deployment(1, 1, 1, seqs, engine.max_num_batched_tokens, engine.gpu_memory_utilization)
        for seqs in SEQS_SWEEP_8B
    ]
    evaluations = CostModel(plan).evaluate(deployments)
    assert all(evaluation.feasible for evaluation in evaluations)
    return {evaluation.config.max_num_seqs: evaluation.metrics for evaluation in evaluations}


def test_peak_kv_usage_full_at_10000_seqs(seqs_sweep_8b):
    assert seqs_sweep_8b[10_000]["peak_kv_usage"] == pytest.approx(1.0, abs=1e-6)


def test_preemptions_frequent_at_10000_seqs(example_plans, seqs_sweep_8b):
    requests = example_plans["llama-8b-1xh200"].workload.requests

    assert seqs_sweep_8b[10_000]["preemptions"] > 0.10 * requests


def test_preemptions_rare_at_1000_seqs(example_plans, seqs_sweep_8b):
    requests = example_plans["llama-8b-1xh200"].workload.requests

    assert seqs_sweep_8b[1000]["preemptions"] < 0.01 * requests
