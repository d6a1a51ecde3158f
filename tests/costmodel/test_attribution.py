"""Tests of the time attribution, the bottleneck and the proposed changes
(kvplan.costmodel.attribution), through ``kvplan.evaluate`` and the cost model."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

import kvplan
from kvplan.costmodel import attribution
from kvplan.costmodel.evaluate import CostModel
from kvplan.optimizer.search import OBJECTIVES
from kvplan.spec.types import Plan

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

# DeepSeek-R1-Distill-Llama-8B on up to eight H200s, as an offline batch.
BATCH_PLAN = {
    "apiVersion": "kvplan/v1",
    "kind": "Plan",
    "name": "attribution-8b",
    "model": "models/deepseek-r1-distill-llama-8b.yaml",
    "hardware": {"node": "h200-sxm-8"},
    "workload": {"name": "filled-in-by-each-test"},
    "search": {"gpu_budget": 8},
}

# Changes that give a deployment more KV capacity per request or fewer requests to hold.
KV_MOVES = {"tp_up", "tp_up_same_gpus", "pp_up", "pp_up_same_gpus", "seqs_fit_kv", "seqs_down"}


def batch_plan(prompt: dict, output: dict, requests: int, **changes) -> Plan:
    data = copy.deepcopy(BATCH_PLAN)
    data["workload"] = {"name": "inline", "prompt_tokens": prompt, "output_tokens": output, "requests": requests}
    data.update(changes)
    return kvplan.load_plan_from_dict(data, base_dir=EXAMPLES_DIR)


def fixed(tokens: int) -> dict:
    return {"distribution": "fixed", "value": tokens}


def evaluate_one(plan: Plan, config: dict) -> kvplan.RankedDeployment:
    (ranked,) = kvplan.evaluate(plan, [config]).results
    assert ranked.evaluation.feasible, ranked.evaluation.infeasible_reason
    return ranked


def proposals_for(plan: Plan, ranked: kvplan.RankedDeployment, limit: int = 10):
    direction, metric = OBJECTIVES[plan.objective]
    config = ranked.evaluation.config
    model = CostModel(plan, tp_values={config.tp}, pp_values={config.pp})
    (alternatives,) = attribution.propose_changes(model, [ranked.evaluation], metric, direction, limit)
    return alternatives


def assert_shares_sum_to_one(shares: dict[str, float]) -> None:
    assert all(0.0 <= share <= 1.0 for share in shares.values()), shares
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6), shares


# --- what binds -------------------------------------------------------------------------


def test_kv_bound_reasoning_is_kv_capacity(example_plans):
    plan = example_plans["qwen-32b-8xh200"]

    ranked = evaluate_one(plan, {"dp": 8, "tp": 1})
    found = attribution.bottleneck(plan, ranked.evaluation)

    assert ranked.evaluation.metrics["binding_resource"] == "kv_capacity"
    assert ranked.bottleneck == "KV capacity"
    assert found.code == "kv_capacity"
    assert "KV cache holds" in found.detail


def test_kv_bound_proposes_more_tp_with_gain(example_plans):
    plan = example_plans["qwen-32b-8xh200"]
    ranked = evaluate_one(plan, {"dp": 8, "tp": 1})

    alternatives = proposals_for(plan, ranked)
    gains = [a for a in alternatives if a.move in KV_MOVES and a.sla_met and a.objective_change > 0]

    assert gains, [(a.move, a.objective_change) for a in alternatives]
    best = max(gains, key=lambda a: a.objective_change)
    assert best.evaluation.config.tp == 2
    assert best.evaluation.metrics["kv_capacity_tokens"] > 2 * ranked.evaluation.metrics["kv_capacity_tokens"]


def test_proposal_numbers_match_direct_evaluation(example_plans):
    plan = example_plans["qwen-32b-8xh200"]
    ranked = evaluate_one(plan, {"dp": 8, "tp": 1})

    for alternative in proposals_for(plan, ranked):
        direct = evaluate_one(plan, alternative.evaluation.config.to_dict())
        base = ranked.evaluation.metrics["makespan_s"]
        expected_change = (base - direct.evaluation.metrics["makespan_s"]) / base

        assert alternative.objective_value == pytest.approx(direct.evaluation.metrics["makespan_s"], rel=1e-6)
        assert alternative.objective_change == pytest.approx(expected_change, rel=1e-6, abs=1e-9)


def test_capacity_trap_proposes_fewer_seqs(example_plans):
    plan = example_plans["llama-8b-1xh200"]
    ranked = evaluate_one(plan, {"max_num_seqs": 10000})

    alternatives = proposals_for(plan, ranked)
    fit = next(a for a in alternatives if a.move == "seqs_fit_kv")

    assert ranked.bottleneck == "KV capacity"
    assert fit.evaluation.config.max_num_seqs < 10000
    assert fit.objective_change > 0.05
    assert fit.evaluation.metrics["preemptions"] < ranked.evaluation.metrics["preemptions"]


def test_short_output_small_batch_is_hbm_bound():
    plan = batch_plan(fixed(100), fixed(64), 8)

    ranked = evaluate_one(plan, {"max_num_seqs": 256})
    shares = ranked.evaluation.metrics["engine_time_shares"]

    assert ranked.evaluation.metrics["binding_resource"] == "hbm_bandwidth"
    assert ranked.bottleneck == "HBM bandwidth"
    assert shares["weight_read"] > shares["compute"]
    assert shares["recomputation"] == 0.0


def test_prefill_heavy_batch_is_compute_bound():
    plan = batch_plan(fixed(8000), fixed(4), 2000)

    ranked = evaluate_one(plan, {"max_num_seqs": 256})
    shares = ranked.evaluation.metrics["engine_time_shares"]

    assert ranked.evaluation.metrics["binding_resource"] == "compute"
    assert ranked.bottleneck == "compute"
    assert shares["compute"] > 0.5


def test_missed_sla_names_the_bound():
    plan = batch_plan(fixed(500), fixed(200), 1000, sla={"ttft": {"p99": "1ms"}})

    ranked = evaluate_one(plan, {"max_num_seqs": 256})
    found = attribution.bottleneck(plan, ranked.evaluation)

    assert ranked.bottleneck == "SLA: ttft_p99"
    assert found.code == "sla"
    assert found.resource in attribution.RESOURCE_LABELS
    assert "TTFT p99" in found.detail


def test_unkept_rate_is_arrival_rate_sla():
    plan = kvplan.load_plan_from_dict(
        {**copy.deepcopy(BATCH_PLAN), "workload": {
            "name": "fast", "prompt_tokens": fixed(200), "output_tokens": fixed(2000), "arrival_rate": "500/s"}},
        base_dir=EXAMPLES_DIR,
    )

    ranked = evaluate_one(plan, {"tp": 1})

    assert ranked.evaluation.metrics["keeps_up"] is False
    assert ranked.bottleneck == "SLA: arrival rate"
    assert ranked.evaluation.metrics["time_shares"] is None


def test_infeasible_has_no_bottleneck(example_plans):
    plan = example_plans["llama-405b-8xh200"]

    (ranked,) = kvplan.evaluate(plan, [{"tp": 1}]).results

    assert not ranked.evaluation.feasible
    assert ranked.bottleneck is None
    assert attribution.bottleneck(plan, ranked.evaluation) is None


# --- where the time goes ----------------------------------------------------------------


@pytest.mark.parametrize("config", [{"dp": 8}, {"dp": 4, "tp": 2}, {"tp": 8}, {"dp": 2, "tp": 2, "pp": 2},
                                    {"pp": 8}, {"dp": 8, "max_num_seqs": 128}])
def test_batch_shares_sum_to_one(example_plans, config):
    plan = example_plans["qwen-32b-8xh200"]

    metrics = evaluate_one(plan, config).evaluation.metrics

    assert_shares_sum_to_one(metrics["engine_time_shares"])
    assert_shares_sum_to_one(metrics["time_shares"])
    assert set(metrics["time_shares"]) == set(attribution.REQUEST_PARTS)


def test_every_layout_shares_sum_to_one(exhaustive_result):
    result = exhaustive_result("qwen-32b-8xh200")
    feasible = [ranked for ranked in result.results if ranked.evaluation.feasible]

    assert len(feasible) > 100
    for ranked in feasible:
        metrics = ranked.evaluation.metrics
        assert_shares_sum_to_one(metrics["engine_time_shares"])
        assert_shares_sum_to_one(metrics["time_shares"])
        assert ranked.bottleneck is not None


@pytest.mark.parametrize("plan_fixture", ["rate_plan", "concurrency_plan"])
def test_steady_shares_sum_to_one(request, plan_fixture):
    plan = request.getfixturevalue(plan_fixture)

    for ranked in kvplan.evaluate(plan, [{"tp": 1}, {"dp": 2, "tp": 2}, {"tp": 2, "pp": 2}]).results:
        metrics = ranked.evaluation.metrics
        assert_shares_sum_to_one(metrics["engine_time_shares"])
        assert_shares_sum_to_one(metrics["time_shares"])


def test_communication_split_by_kind(example_plans):
    plan = example_plans["qwen-32b-8xh200"]

    tp_only = evaluate_one(plan, {"tp": 8}).evaluation.metrics["engine_time_shares"]
    pp_only = evaluate_one(plan, {"pp": 8}).evaluation.metrics["engine_time_shares"]

    assert tp_only["tp_allreduce"] > 0.0
    assert tp_only["pp_transfer"] == 0.0
    assert pp_only["pp_transfer"] > 0.0
    assert pp_only["tp_allreduce"] == 0.0


def test_recomputation_follows_preemptions(example_plans):
    plan = example_plans["llama-8b-1xh200"]

    trapped = evaluate_one(plan, {"max_num_seqs": 10000}).evaluation.metrics
    fitting = evaluate_one(plan, {"max_num_seqs": 1000}).evaluation.metrics

    assert trapped["preemptions"] > 0
    assert trapped["engine_time_shares"]["recomputation"] > 0.0
    assert fitting["preemptions"] == 0
    assert fitting["engine_time_shares"]["recomputation"] == 0.0


def test_queueing_grows_with_fewer_seqs(example_plans):
    plan = example_plans["qwen-32b-8xh200"]

    few = evaluate_one(plan, {"dp": 8, "max_num_seqs": 128}).evaluation.metrics
    many = evaluate_one(plan, {"dp": 8, "max_num_seqs": 1024}).evaluation.metrics

    assert few["mean_queueing_s"] > 10 * many["mean_queueing_s"]
    assert few["time_shares"]["queueing"] > many["time_shares"]["queueing"]


# --- proposals --------------------------------------------------------------------------


def test_proposals_stay_within_budget(example_plans):
    plan = example_plans["qwen-32b-8xh200"]
    ranked = evaluate_one(plan, {"dp": 4, "tp": 2})

    alternatives = proposals_for(plan, ranked)

    assert alternatives
    assert all(a.evaluation.config.gpus <= plan.search.gpu_budget for a in alternatives)
    assert all(a.evaluation.config != ranked.evaluation.config for a in alternatives)
    assert len({a.evaluation.config for a in alternatives}) == len(alternatives)


def test_proposals_respect_limit(example_plans):
    plan = example_plans["qwen-32b-8xh200"]
    ranked = evaluate_one(plan, {"dp": 8})

    assert len(proposals_for(plan, ranked, limit=2)) == 2


@pytest.mark.parametrize(("running", "text"), [(1.0, "1 running request"), (1.2, "1 running request"),
                                               (2.0, "2 running requests"), (1517.4, "1,517 running requests")])
def test_running_request_count_wording(running, text):
    from kvplan.costmodel.attribution import _running_requests

    assert _running_requests(running) == text
