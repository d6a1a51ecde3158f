"""Tests of the cost model through ``kvplan.evaluate``: KV memory sizing, the reasons
given for infeasible deployments, and the rate and concurrency arrival modes."""

from __future__ import annotations

import dataclasses

import pytest

import kvplan
from kvplan.optimizer.search import RankedDeployment
from kvplan.spec.types import Plan

# H200 SXM memory as nvidia-smi reports it.
H200_MEMORY_BYTES = 143_771 * 2**20

# DeepSeek-R1-Distill-Llama-8B: 8.03e9 bf16 parameters, and 32 layers x 8 KV heads x
# 128 head_dim x (K + V) x 2 bytes of KV cache per token.
WEIGHT_BYTES_8B = 16.06e9
KV_BYTES_PER_TOKEN_8B = 131_072

# Activation peak of vLLM's profiling pass, non-torch memory and CUDA graphs at vLLM's
# default max_num_seqs 1024 and max_num_batched_tokens 8192, estimated at about 3 GB.
RESERVED_BYTES_ESTIMATE = 3e9

GQA_PLANS = ("qwen-14b-8xh200", "qwen-32b-8xh200", "llama-70b-8xh200")

# Closed-loop client counts. With the inline workload, the KV pool of one H200 binds
# between 256 and 512 clients.
CONCURRENCY_SWEEP = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def evaluate_by_layout(plan: Plan, configs: list[dict]) -> dict[tuple[int, int, int], RankedDeployment]:
    """Evaluate ``configs`` and key each ranked row by its (dp, tp, pp)."""
    result = kvplan.evaluate(plan, configs)
    rows = {}
    for ranked in result.results:
        config = ranked.evaluation.config
        rows[(config.dp, config.tp, config.pp)] = ranked
    return rows


def evaluate_one(plan: Plan, config: dict) -> RankedDeployment:
    return kvplan.evaluate(plan, [config]).results[0]


def mean_output_tokens(plan: Plan) -> float:
    distribution = plan.workload.output_tokens
    weighted = sum(v * p for v, p in zip(distribution.values, distribution.probabilities))
    return weighted / sum(distribution.probabilities)


def with_workload(plan: Plan, **changes) -> Plan:
    return dataclasses.replace(plan, workload=dataclasses.replace(plan.workload, **changes))


# --- KV memory ---------------------------------------------------------------------


def test_node_h200_memory_matches_nvidia_smi(example_plans):
    assert example_plans["llama-8b-1xh200"].node.gpu_memory_bytes == H200_MEMORY_BYTES


def test_kv_bytes_per_token_8b_bf16(example_plans):
    ranked = evaluate_one(example_plans["llama-8b-1xh200"], {"gpu_memory_utilization": 0.9})

    assert ranked.evaluation.metrics["kv_bytes_per_token"] == KV_BYTES_PER_TOKEN_8B


def test_weight_bytes_8b_one_gpu(example_plans):
    ranked = evaluate_one(example_plans["llama-8b-1xh200"], {"gpu_memory_utilization": 0.9})

    assert ranked.evaluation.metrics["weight_bytes_per_gpu"] == pytest.approx(WEIGHT_BYTES_8B, rel=0.005)


def test_kv_capacity_8b_one_h200(example_plans):
    ranked = evaluate_one(example_plans["llama-8b-1xh200"], {"gpu_memory_utilization": 0.9})
    expected_tokens = (
        0.9 * H200_MEMORY_BYTES - WEIGHT_BYTES_8B - RESERVED_BYTES_ESTIMATE
    ) / KV_BYTES_PER_TOKEN_8B

    assert ranked.evaluation.feasible
    assert ranked.evaluation.metrics["kv_capacity_tokens"] == pytest.approx(expected_tokens, rel=0.03)


def test_weight_bytes_70b_halve_tp2_to_tp4(example_plans):
    rows = evaluate_by_layout(example_plans["llama-70b-8xh200"], [{"tp": 2}, {"tp": 4}])
    tp2_bytes = rows[(1, 2, 1)].evaluation.metrics["weight_bytes_per_gpu"]
    tp4_bytes = rows[(1, 4, 1)].evaluation.metrics["weight_bytes_per_gpu"]

    assert tp4_bytes == pytest.approx(tp2_bytes / 2, rel=0.01)


def test_kv_capacity_mla_larger_with_pp_than_tp(example_plans):
    # MLA stores one latent vector per token and layer, and every TP rank stores all of
    # it, so tp=8 keeps 8 copies while tp=2 x pp=4 splits the layers four ways.
    rows = evaluate_by_layout(example_plans["deepseek-r1-8xh200"], [{"tp": 8}, {"tp": 2, "pp": 4}])
    tp8 = rows[(1, 8, 1)].evaluation
    tp2_pp4 = rows[(1, 2, 4)].evaluation

    assert tp8.feasible
    assert tp2_pp4.feasible
    assert tp2_pp4.metrics["kv_capacity_tokens"] > 2 * tp8.metrics["kv_capacity_tokens"]


@pytest.mark.parametrize("plan_name", GQA_PLANS)
def test_kv_capacity_gqa_tp8_equals_tp2_pp4(example_plans, plan_name):
    # With 8 KV heads, tp=8 stores one head of every layer per GPU and tp=2 x pp=4 four
    # heads of a quarter of the layers, so each GPU stores the same KV bytes per token.
    rows = evaluate_by_layout(example_plans[plan_name], [{"tp": 8}, {"tp": 2, "pp": 4}])
    tp8 = rows[(1, 8, 1)].evaluation
    tp2_pp4 = rows[(1, 2, 4)].evaluation

    assert tp8.feasible
    assert tp2_pp4.feasible
    assert tp2_pp4.metrics["kv_capacity_tokens"] == pytest.approx(tp8.metrics["kv_capacity_tokens"], rel=0.10)


# --- Infeasible deployments ----------------------------------------------------------


@pytest.fixture(scope="module")
def llama_405b_rows(example_plans):
    return evaluate_by_layout(example_plans["llama-405b-8xh200"], [{"dp": 2, "tp": 4}, {"tp": 4}, {"tp": 8}])


@pytest.mark.parametrize("layout", [(2, 4, 1), (1, 4, 1)], ids=["dp2-tp4", "tp4"])
def test_evaluate_405b_tp4_weights_do_not_fit(llama_405b_rows, layout):
    evaluation = llama_405b_rows[layout].evaluation

    assert not evaluation.feasible
    assert "weights do not fit" in evaluation.infeasible_reason


def test_evaluate_405b_tp8_feasible(llama_405b_rows):
    evaluation = llama_405b_rows[(1, 8, 1)].evaluation

    assert evaluation.feasible
    assert evaluation.infeasible_reason is None


@pytest.mark.parametrize(
    ("plan_name", "config"),
    [("llama-8b-1xh200", {"tp": 2}), ("llama-70b-8xh200", {"dp": 4, "tp": 4})],
)
def test_evaluate_over_gpu_budget_infeasible(example_plans, plan_name, config):
    evaluation = evaluate_one(example_plans[plan_name], config).evaluation

    assert not evaluation.feasible
    assert "budget" in evaluation.infeasible_reason


def test_evaluate_tp_not_dividing_heads_infeasible(example_plans):
    plan = example_plans["qwen-14b-8xh200"]
    evaluation = evaluate_one(plan, {"tp": 3}).evaluation

    assert plan.model.architecture.num_attention_heads == 40
    assert not evaluation.feasible
    assert "does not divide num_attention_heads" in evaluation.infeasible_reason


def test_optimize_405b_reports_weights_do_not_fit(default_search_result):
    reasons = default_search_result("llama-405b-8xh200").infeasible_reasons

    assert reasons.get("weights do not fit in GPU memory", 0) > 0


# --- Arrival modes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [{"tp": 1}, {"dp": 2}, {"tp": 2}, {"dp": 2, "tp": 2, "pp": 2}, {"tp": 1, "max_num_seqs": 64}],
    ids=["tp1", "dp2", "tp2", "dp2-tp2-pp2", "seqs64"],
)
def test_rate_mode_throughput_equals_offered_load(rate_plan, config):
    metrics = evaluate_one(rate_plan, config).evaluation.metrics
    expected = rate_plan.workload.arrival_rate_per_s * mean_output_tokens(rate_plan)

    assert metrics["keeps_up"] is True
    assert metrics["output_tokens_per_s"] == pytest.approx(expected, rel=1e-4)


def test_rate_mode_overload_cannot_keep_up(rate_plan):
    max_rate = evaluate_one(rate_plan, {"tp": 1}).evaluation.metrics["max_arrival_rate_per_s"]
    overloaded = with_workload(rate_plan, arrival_rate_per_s=10 * max_rate)
    ranked = evaluate_one(overloaded, {"tp": 1})

    assert ranked.evaluation.feasible
    assert ranked.evaluation.metrics["keeps_up"] is False
    assert not ranked.sla_met
    assert any("cannot keep up" in violation for violation in ranked.violations)


@pytest.fixture(scope="module")
def concurrency_sweep(concurrency_plan):
    """Metrics of tp=1 (max_num_seqs high enough never to bind) per client count."""
    sweep = {}
    for clients in CONCURRENCY_SWEEP:
        plan = with_workload(concurrency_plan, concurrency=clients)
        sweep[clients] = evaluate_one(plan, {"tp": 1, "max_num_seqs": 16384}).evaluation.metrics
    return sweep


def test_concurrency_mode_kv_binds_within_sweep(concurrency_sweep):
    assert concurrency_sweep[CONCURRENCY_SWEEP[0]]["bottleneck"] != "kv_capacity"
    assert concurrency_sweep[CONCURRENCY_SWEEP[-1]]["bottleneck"] == "kv_capacity"


def test_concurrency_mode_throughput_grows_until_kv_binds(concurrency_sweep):
    for fewer, more in zip(CONCURRENCY_SWEEP, CONCURRENCY_SWEEP[1:]):
        if concurrency_sweep[more]["bottleneck"] == "kv_capacity":
            break
        low = concurrency_sweep[fewer]["output_tokens_per_s"]
        high = concurrency_sweep[more]["output_tokens_per_s"]
        assert high > low, f"{more} clients give {high:.0f} tokens/s, {fewer} give {low:.0f}"


def test_concurrency_mode_throughput_flat_once_kv_bound(concurrency_sweep):
    bound = [clients for clients in CONCURRENCY_SWEEP if concurrency_sweep[clients]["bottleneck"] == "kv_capacity"]
    assert len(bound) >= 2, f"KV capacity binds only at {bound} clients"

    for fewer, more in zip(bound, bound[1:]):
        low = concurrency_sweep[fewer]["output_tokens_per_s"]
        high = concurrency_sweep[more]["output_tokens_per_s"]
        assert high <= low * (1 + 1e-6), f"{more} clients give {high:.0f} tokens/s, {fewer} give {low:.0f}"


# --- A batch that refills without filling the pool --------------------------------------


def test_short_batch_never_fills_pool(example_plans):
    # 2,000 requests and max_num_seqs 1,024 against a steady count of about 900: the first
    # 1,024 grow together and are replaced gradually, so the pool never fills.
    ranked = evaluate_one(example_plans["qwen-32b-8xh200"], {"tp": 4, "pp": 2, "max_num_seqs": 1024})
    metrics = ranked.evaluation.metrics

    assert metrics["preemptions"] == 0.0
    assert metrics["binding_resource"] == "max_num_seqs"
    assert metrics["running_requests_per_replica"] == pytest.approx(1024.0)
    assert metrics["peak_kv_usage"] < 1.0


def test_long_batch_overflows_pool(example_plans):
    # The same deployment with ten times the requests reaches the steady mix of ages,
    # whose KV demand overflows the pool.
    plan = with_workload(example_plans["qwen-32b-8xh200"], requests=20000)
    ranked = evaluate_one(plan, {"tp": 4, "pp": 2, "max_num_seqs": 1024})
    metrics = ranked.evaluation.metrics

    assert metrics["preemptions"] > 1000
    assert metrics["binding_resource"] == "kv_capacity"
    assert metrics["running_requests_per_replica"] < 1024.0
