"""Numerical guards: degenerate and extreme plans give finite, exact answers or a stated reason.

Each degenerate variant of every example plan is evaluated over the plan's whole search
space. A feasible deployment must report finite metrics (None only where a metric does
not apply), and an infeasible one must say why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kvplan
from kvplan.costmodel.evaluate import CostModel, Evaluation
from kvplan.optimizer.space import build_search_space
from kvplan.spec.distributions import build_length_distribution
from kvplan.spec.limits import MAX_COUNT
from kvplan.spec.types import Deployment, Plan

from .conftest import EXAMPLES_DIR, config_8b, plan_text

EXAMPLE_PLANS = tuple(sorted(path.stem for path in (EXAMPLES_DIR / "h200-reasoning").glob("*.yaml")))


def fixed(length: int):
    return build_length_distribution({"distribution": "fixed", "value": length}, base_dir=".")


def with_workload(plan: Plan, **changes: Any) -> Plan:
    return dataclasses.replace(plan, workload=dataclasses.replace(plan.workload, **changes))


def with_engine(plan: Plan, **changes: Any) -> Plan:
    return dataclasses.replace(plan, engine=dataclasses.replace(plan.engine, **changes))


def longest_request(plan: Plan) -> int:
    return plan.workload.prompt_tokens.max_tokens + plan.workload.output_tokens.max_tokens


# Degenerate variants of a plan, by name. Each keeps the plan's arrays the same shape, so
# the cost model compiled for the example is reused.
DEGENERATE_VARIANTS: dict[str, Callable[[Plan], Plan]] = {
    "single request": lambda plan: with_workload(plan, requests=1),
    "outputs of one token": lambda plan: with_workload(plan, output_tokens=fixed(1)),
    "prompts of one token": lambda plan: with_workload(plan, prompt_tokens=fixed(1)),
    "one request of one token each": lambda plan: with_workload(
        plan, requests=1, prompt_tokens=fixed(1), output_tokens=fixed(1)
    ),
    "most requests allowed": lambda plan: with_workload(plan, requests=MAX_COUNT),
    "KV cache of one token": lambda plan: with_engine(plan, kv_cache_tokens=1),
    "KV cache of one longest request": lambda plan: with_engine(plan, kv_cache_tokens=longest_request(plan)),
    "zero free memory": lambda plan: with_engine(plan, non_torch_memory_bytes=plan.node.gpu_memory_bytes),
}


def degenerate_deployments(plan: Plan) -> list[Deployment]:
    """Return the plan's whole search space, then every layout at one running request and a budget of one token."""
    space = build_search_space(plan)
    deployments = space.deployments()
    for layout in space.layouts:
        deployments.append(Deployment(layout.dp, layout.tp, layout.pp, 1, 8192, 0.9))
        deployments.append(Deployment(layout.dp, layout.tp, layout.pp, 1, 1, 0.9))
    return deployments


def metric_leaves(metrics: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from metric_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def undefined_metrics(plan: Plan, evaluation: Evaluation) -> list[str]:
    """Describe every NaN or infinite metric, and every None where the metric applies."""
    problems = []
    optional = {"cost_per_million_tokens"}
    if plan.workload.arrival_mode != "batch":
        optional.add("makespan_s")
    if evaluation.metrics.get("keeps_up") is False:
        optional.update(f"{name}.{statistic}" for name in ("ttft_s", "e2e_s") for statistic in ("mean", "p50", "p90", "p99"))
    # TPOT statistics are None when float32 cannot resolve them (CostModel._tpot_resolved).
    optional.update(f"tpot_s.{statistic}" for statistic in ("mean", "p50", "p90", "p99"))
    for name, value in metric_leaves(evaluation.metrics):
        if value is None:
            if evaluation.feasible and name not in optional:
                problems.append(f"{evaluation.config}: {name} is None")
        elif isinstance(value, (bool, str)):
            continue
        elif not math.isfinite(value):
            problems.append(f"{evaluation.config}: {name} = {value}")
    return problems


@pytest.fixture(scope="module")
def example_plans() -> dict[str, Plan]:
    return {name: kvplan.load_plan(EXAMPLES_DIR / "h200-reasoning" / f"{name}.yaml") for name in EXAMPLE_PLANS}


@pytest.mark.parametrize("variant", sorted(DEGENERATE_VARIANTS))
@pytest.mark.parametrize("name", EXAMPLE_PLANS)
def test_degenerate_plans_finite(example_plans, name: str, variant: str) -> None:
    plan = DEGENERATE_VARIANTS[variant](example_plans[name])

    evaluations = CostModel(plan).evaluate(degenerate_deployments(plan))

    problems = [problem for evaluation in evaluations for problem in undefined_metrics(plan, evaluation)]
    assert problems == []
    assert all(evaluation.infeasible_reason for evaluation in evaluations if not evaluation.feasible)


@pytest.mark.parametrize("name", EXAMPLE_PLANS)
def test_one_token_kv_cache_always_infeasible(example_plans, name: str) -> None:
    plan = DEGENERATE_VARIANTS["KV cache of one token"](example_plans[name])

    evaluations = CostModel(plan).evaluate(degenerate_deployments(plan))

    assert not any(evaluation.feasible for evaluation in evaluations)
    kv_reasons = [evaluation for evaluation in evaluations if evaluation.infeasible_reason.startswith("KV cache holds 1 tokens")]
    assert kv_reasons


@pytest.mark.parametrize("name", EXAMPLE_PLANS)
def test_zero_free_memory_always_infeasible(example_plans, name: str) -> None:
    plan = DEGENERATE_VARIANTS["zero free memory"](example_plans[name])

    evaluations = CostModel(plan).evaluate(degenerate_deployments(plan))

    assert not any(evaluation.feasible for evaluation in evaluations)


@pytest.mark.parametrize("name", EXAMPLE_PLANS)
def test_one_token_outputs_exact(example_plans, name: str) -> None:
    plan = DEGENERATE_VARIANTS["outputs of one token"](example_plans[name])

    evaluations = [evaluation for evaluation in CostModel(plan).evaluate(degenerate_deployments(plan))
                   if evaluation.feasible]

    assert evaluations
    for evaluation in evaluations:
        # A request of one output token has no time between tokens and ends with its first.
        metrics = evaluation.metrics
        assert metrics["tpot_s"] == {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
        # Equal up to float32 rounding: the two are summed and capped at the makespan apart.
        for statistic in ("mean", "p50", "p90", "p99"):
            assert metrics["e2e_s"][statistic] == pytest.approx(metrics["ttft_s"][statistic], rel=1e-6)


@pytest.mark.parametrize("name", EXAMPLE_PLANS)
def test_single_request_exact(example_plans, name: str) -> None:
    # Fixed lengths, because one request of a length distribution has one latency per length.
    plan = with_workload(example_plans[name], requests=1, prompt_tokens=fixed(512), output_tokens=fixed(256))

    evaluations = [evaluation for evaluation in CostModel(plan).evaluate(degenerate_deployments(plan))
                   if evaluation.feasible]

    assert evaluations
    for evaluation in evaluations:
        metrics = evaluation.metrics
        assert metrics["preemptions"] == 0.0
        assert metrics["running_requests_per_replica"] <= 1.0
        # One request has one TTFT, one TPOT and one end-to-end latency.
        for name in ("ttft_s", "tpot_s", "e2e_s"):
            statistics = metrics[name]
            assert statistics["p50"] == statistics["p90"] == statistics["p99"], (evaluation.config, name)
            assert statistics["mean"] == pytest.approx(statistics["p50"], rel=1e-5), (evaluation.config, name)
        assert metrics["ttft_s"]["p99"] <= metrics["e2e_s"]["p99"]
        assert metrics["e2e_s"]["p99"] <= metrics["makespan_s"] * (1.0 + 1e-6)


@pytest.mark.parametrize("mode", ["one client", "one arrival per 11 days"])
def test_open_and_closed_loop_minimum_load_finite(example_plans, mode: str) -> None:
    plan = example_plans["llama-8b-1xh200"]
    if mode == "one client":
        plan = with_workload(plan, arrival_mode="concurrency", requests=None, concurrency=1)
    else:
        plan = with_workload(plan, arrival_mode="rate", requests=None, arrival_rate_per_s=1e-6)
    plan = dataclasses.replace(plan, objective="output_tokens_per_s")

    evaluations = CostModel(plan).evaluate(degenerate_deployments(plan))

    assert any(evaluation.feasible for evaluation in evaluations)
    assert [problem for evaluation in evaluations for problem in undefined_metrics(plan, evaluation)] == []


def test_ten_to_fifteen_parameter_model_finite(write, tmp_path: Path) -> None:
    # About 10^15 parameters (2.35 PB of bfloat16 weights) on a GPU of 1,000,000 TB.
    write("config.json", config_8b(hidden_size=262_144, intermediate_size=1_048_576, num_hidden_layers=1200,
                                   num_attention_heads=2048, num_key_value_heads=256, head_dim=128))
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: huge\nconfig: config.json\n")
    node = "{base: h200-sxm-8, name: giant, gpu_memory: 1000000TB}"
    plan = kvplan.load_plan(write("plan.yaml", plan_text(model=model, node=node)))

    evaluations = CostModel(plan).evaluate(degenerate_deployments(plan))

    feasible = [evaluation for evaluation in evaluations if evaluation.feasible]
    assert feasible
    assert [problem for evaluation in evaluations for problem in undefined_metrics(plan, evaluation)] == []
    for evaluation in feasible:
        # Each decode step reads every weight once at 0.85 x 4.8 TB/s.
        weight_read_s = evaluation.metrics["weight_bytes_per_gpu"] / (0.85 * 4.8e12)
        assert evaluation.metrics["tpot_s"]["p50"] >= weight_read_s


def test_overflowing_deployment_reported_infeasible(example_plans) -> None:
    # 1e-30 B/s is below the spec's limit of 1 B/s, so only a plan built in Python reaches
    # the model with it. Every step then takes about 10^40 s, past float32's maximum.
    plan = example_plans["llama-8b-1xh200"]
    plan = dataclasses.replace(plan, node=dataclasses.replace(plan.node, hbm_bandwidth_bytes_per_s=1e-30))

    evaluations = CostModel(plan).evaluate(build_search_space(plan).deployments())

    assert not any(evaluation.feasible for evaluation in evaluations)
    assert {evaluation.infeasible_reason for evaluation in evaluations} == {
        "the cost model's makespan_s is not a finite float32 number for this deployment; check the plan for"
        " rates, sizes or counts far outside real hardware and workloads"
    }


def test_unresolved_tpot_reported_undefined(example_plans) -> None:
    # 10^6 requests through one running slot end after about 10^6 s, where float32 steps
    # are 0.06 s apart: more than 1 % of a 6 ms TPOT over 199 tokens.
    plan = with_workload(example_plans["llama-8b-1xh200"], requests=1_000_000,
                         prompt_tokens=fixed(100), output_tokens=fixed(200))
    few = with_workload(plan, requests=1000)
    deployment = Deployment(1, 1, 1, 1, 8192, 0.9)

    [crowded] = CostModel(plan).evaluate([deployment])
    [light] = CostModel(few).evaluate([deployment])

    assert crowded.feasible
    assert crowded.metrics["tpot_s"] == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert light.metrics["tpot_s"]["p50"] == pytest.approx(light.metrics["step_time_s"], rel=1e-3)


# The spec's lowest arrival rate, 0.0036 requests per hour.
LOWEST_ARRIVAL_RATE_PER_S = 1e-6


def mean_output_tokens(plan: Plan) -> float:
    output = plan.workload.output_tokens
    return sum(value * weight for value, weight in zip(output.values, output.probabilities))


@pytest.mark.parametrize("name", EXAMPLE_PLANS)
def test_vanishing_rate_single_request_values(example_plans, name: str) -> None:
    # Below one running request a replica idles between requests, and a request alone
    # still decodes one token per round. At the lowest rate every replica therefore
    # serves one request at a time, as with one closed-loop client per replica.
    plan = dataclasses.replace(example_plans[name], objective="output_tokens_per_s")
    open_loop = with_workload(plan, arrival_mode="rate", requests=None, concurrency=None,
                              arrival_rate_per_s=LOWEST_ARRIVAL_RATE_PER_S)
    layouts = build_search_space(plan).layouts
    deployments = [Deployment(layout.dp, layout.tp, layout.pp, 256, 8192, 0.9) for layout in layouts]

    evaluations = CostModel(open_loop).evaluate(deployments)

    assert any(evaluation.feasible for evaluation in evaluations)
    for deployment, evaluation in zip(deployments, evaluations):
        if not evaluation.feasible:
            continue
        one_client = with_workload(plan, arrival_mode="concurrency", requests=None, arrival_rate_per_s=None,
                                   concurrency=deployment.dp)
        [alone] = CostModel(one_client).evaluate([deployment])
        metrics = evaluation.metrics
        assert metrics["running_requests_per_replica"] < 1e-3, deployment
        # Little's law: every request is served, so the output rate is the arrival rate
        # times the mean output, whatever the replica count.
        expected_tokens_per_s = LOWEST_ARRIVAL_RATE_PER_S * mean_output_tokens(plan)
        assert metrics["output_tokens_per_s"] == pytest.approx(expected_tokens_per_s, rel=1e-3), deployment
        for statistic in ("mean", "p50", "p90", "p99"):
            assert metrics["tpot_s"][statistic] == pytest.approx(alone.metrics["tpot_s"][statistic], rel=1e-5), \
                (deployment, statistic)
        decoding_s = metrics["e2e_s"]["mean"] - metrics["ttft_s"]["mean"]
        alone_decoding_s = alone.metrics["e2e_s"]["mean"] - alone.metrics["ttft_s"]["mean"]
        assert decoding_s == pytest.approx(alone_decoding_s, rel=1e-4), deployment
