"""Tests of how the cost model lays out an MoE model's experts over its DP group.

Expected values come from DeepSeek-R1's architecture fields, not from the cost model's
own tables. One replica (dp 1) stores a 1/tp slice of all E routed experts per GPU. With
dp > 1 the expert layers span all dp x tp GPUs: a 1/(dp x tp) slice of every expert, or
with expert parallelism ceil(E / (dp x tp)) whole experts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from kvplan.costmodel.evaluate import CostModel
from kvplan.costmodel.hardware import apply_expert_parallel, round_time, select_layout
from kvplan.spec.types import Deployment, Plan

REPO_ROOT = Path(__file__).resolve().parents[2]
DEEPSEEK_PLAN = "deepseek-r1-8xh200"
DENSE_PLAN = "llama-8b-1xh200"

# Decode tokens of one DP rank in the hand-checked step.
DECODE_TOKENS = 100
CONTEXT_TOKENS = 2_000


def expert_bytes(plan: Plan) -> int:
    """Bytes of one whole routed expert: gate, up and down in fp8 with 128 x 128 block scales."""
    architecture = plan.model.architecture
    moe = architecture.moe
    hidden, width = architecture.hidden_size, moe.moe_intermediate_size
    block_rows, block_columns = architecture.fp8_weight_block_size
    gate_or_up = hidden * width + math.ceil(width / block_rows) * math.ceil(hidden / block_columns) * 4
    down = width * hidden + math.ceil(hidden / block_rows) * math.ceil(width / block_columns) * 4
    return 2 * gate_or_up + down


def moe_layer_count(plan: Plan) -> int:
    architecture = plan.model.architecture
    return architecture.num_hidden_layers - len(architecture.moe.dense_layer_indices)


def deployment(dp: int, tp: int, pp: int = 1, *, expert_parallel: bool | None) -> Deployment:
    return Deployment(dp, tp, pp, 256, 8192, 0.9, enable_expert_parallel=expert_parallel)


def with_gpus(plan: Plan, nodes: int) -> Plan:
    """Return ``plan`` on ``nodes`` nodes with a GPU budget of all their GPUs."""
    budget = nodes * plan.node.gpus_per_node
    return dataclasses.replace(plan, num_nodes=nodes,
                               search=dataclasses.replace(plan.search, gpu_budget=budget))


@pytest.fixture(scope="module")
def deepseek(example_plans) -> Plan:
    return example_plans[DEEPSEEK_PLAN]


@pytest.fixture(scope="module")
def deepseek_model(deepseek) -> CostModel:
    return CostModel(deepseek)


def test_deepseek_expert_bytes_match_known_size(deepseek):
    # 3 x 2048 x 7168 fp8 weights plus 3 x 16 x 56 float32 block scales.
    assert expert_bytes(deepseek) == 44_050_944
    assert moe_layer_count(deepseek) == 58


@pytest.mark.parametrize("dp, tp, experts_per_gpu", [(8, 1, 32), (2, 4, 32), (3, 1, 86), (4, 1, 64)])
def test_dp_group_frees_routed_expert_bytes(deepseek_model, deepseek, dp, tp, experts_per_gpu):
    replica, sliced, whole = deepseek_model.evaluate([
        deployment(1, tp, expert_parallel=False),
        deployment(dp, tp, expert_parallel=False),
        deployment(dp, tp, expert_parallel=True),
    ])
    # One replica stores a 1/tp slice of all 256 experts per GPU. The DP group stores
    # 256 / (dp x tp) experts' worth as slices, or that many whole experts rounded up.
    layers, one_expert = moe_layer_count(deepseek), expert_bytes(deepseek)
    freed_sliced = layers * (256 / tp - 256 / (dp * tp)) * one_expert
    freed_whole = layers * (256 / tp - experts_per_gpu) * one_expert

    replica_bytes = replica.metrics["weight_bytes_per_gpu"]
    assert replica_bytes - sliced.metrics["weight_bytes_per_gpu"] == pytest.approx(freed_sliced, rel=1e-5)
    assert replica_bytes - whole.metrics["weight_bytes_per_gpu"] == pytest.approx(freed_whole, rel=1e-5)


@pytest.mark.parametrize("expert_parallel", [None, True])
def test_dp8_fits_on_one_node(deepseek_model, expert_parallel):
    # vLLM spreads the experts over all eight GPUs with or without expert parallelism.
    (evaluation,) = deepseek_model.evaluate([deployment(8, 1, expert_parallel=expert_parallel)])
    assert evaluation.feasible
    assert evaluation.metrics["kv_capacity_tokens"] > 0


def test_dp_group_raises_kv_capacity_by_freed_bytes(deepseek):
    # On two nodes: one tp 8 replica against a dp 2 x tp 8 group, whose replicas each
    # hold half the experts.
    plan = with_gpus(deepseek, nodes=2)
    replica, grouped = CostModel(plan).evaluate([
        deployment(1, 8, expert_parallel=False), deployment(2, 8, expert_parallel=True),
    ])
    assert replica.feasible
    assert grouped.feasible

    # The group stores 16 experts of each layer per GPU instead of 256 / 8 = 32.
    freed = moe_layer_count(deepseek) * (32 - 16) * expert_bytes(deepseek)
    # The profiling pass also stores the bf16 hidden states gathered from the other DP
    # rank and the outputs scattered back to it, 8192 tokens each.
    gathered = 2 * (2 - 1) * 8192 * deepseek.model.architecture.hidden_size * 2
    # MLA keeps the whole 576-element bf16 latent of all 61 layers on every GPU.
    kv_bytes_per_token = 576 * 2 * deepseek.model.architecture.num_hidden_layers
    gained = grouped.metrics["kv_capacity_tokens"] - replica.metrics["kv_capacity_tokens"]
    block_size = 64
    assert abs(gained - (freed - gathered) / kv_bytes_per_token) <= block_size


def test_dp_group_without_expert_parallel_gathers_tokens(deepseek_model):
    # The DP ranks gather each other's tokens before every MoE layer whether the experts
    # are sliced or whole, and 256 experts divide evenly over 8 GPUs, so the two match.
    sliced, whole = deepseek_model.evaluate([
        deployment(8, 1, expert_parallel=False), deployment(8, 1, expert_parallel=True),
    ])
    assert sliced.metrics["engine_time_shares"]["ep_dispatch_combine"] > 0.0
    assert sliced.metrics["weight_bytes_per_gpu"] == pytest.approx(whole.metrics["weight_bytes_per_gpu"], rel=1e-6)
    assert sliced.metrics["step_time_s"] == pytest.approx(whole.metrics["step_time_s"], rel=1e-5)


def test_expert_parallel_tp_only_unchanged(deepseek_model):
    # With dp 1, EP over the 8 TP ranks stores 32 whole experts per GPU, the same bytes
    # as a 1/8 slice of all 256, and there are no other DP ranks' tokens to gather.
    without, with_ep = deepseek_model.evaluate([
        deployment(1, 8, expert_parallel=False), deployment(1, 8, expert_parallel=True),
    ])
    assert with_ep.metrics["weight_bytes_per_gpu"] == pytest.approx(
        without.metrics["weight_bytes_per_gpu"], rel=1e-6)
    assert with_ep.metrics["step_time_s"] == pytest.approx(without.metrics["step_time_s"], rel=1e-5)
    assert with_ep.metrics["engine_time_shares"]["ep_dispatch_combine"] == 0.0


def test_expert_parallel_flag_off_matches_unset(deepseek_model):
    raw = deepseek_model.evaluate_raw([deployment(1, 8, expert_parallel=None),
                                       deployment(1, 8, expert_parallel=False)])
    for name in ("weight_bytes_per_gpu", "kv_capacity_tokens", "step_time_s", "makespan_s"):
        assert raw[name][0] == raw[name][1], name


def layout_for(model: CostModel, dp: int, tp: int, pp: int, expert_parallel: bool):
    inputs = model.inputs
    layout = select_layout(inputs, model._tp_values.index(tp), model._pp_values.index(pp))
    flag = 1.0 if expert_parallel else 0.0
    return apply_expert_parallel(inputs, layout, jnp.float32(dp), jnp.float32(tp), jnp.float32(pp),
                                 jnp.float32(flag))


def decode_step(model: CostModel, layout, tp: int):
    return round_time(model.inputs, layout, jnp.float32(tp), jnp.float32(1.0),
                      jnp.float32(DECODE_TOKENS), jnp.float32(0.0), jnp.float32(0.0),
                      jnp.float32(DECODE_TOKENS * CONTEXT_TOKENS), jnp.float32(0.0))


@pytest.mark.parametrize("nodes, dp, link", [(1, 8, "nvlink"), (2, 16, "internode")])
def test_expert_parallel_dispatch_combine_time(deepseek, nodes, dp, link):
    plan = with_gpus(deepseek, nodes)
    model = CostModel(plan)
    step = decode_step(model, layout_for(model, dp, 1, 1, expert_parallel=True), tp=1)

    node = plan.node
    if link == "nvlink":
        bytes_per_s = node.nvlink_bandwidth_bytes_per_s * node.allreduce_bandwidth_efficiency
        latency_s = node.nvlink_latency_s
    else:
        bytes_per_s = node.internode_bandwidth_bytes_per_s
        latency_s = node.internode_latency_s
    # Each MoE layer has an all-gather before it and a reduce-scatter after it. In each,
    # a GPU receives or sends the bf16 hidden states of the other dp - 1 ranks' tokens.
    exchange_bytes = (dp - 1) * DECODE_TOKENS * deepseek.model.architecture.hidden_size * 2
    expected = 2 * moe_layer_count(deepseek) * (latency_s + exchange_bytes / bytes_per_s)

    assert float(step.ep_dispatch_combine) == pytest.approx(expected, rel=1e-5)
    assert float(step.communication) == pytest.approx(expected, rel=1e-5)


def test_expert_parallel_reads_experts_touched_by_all_ranks(deepseek_model, deepseek):
    layout = layout_for(deepseek_model, 8, 1, 1, expert_parallel=True)
    step = decode_step(deepseek_model, layout, tp=1)

    # Each GPU stores 32 experts per layer, and the 8 ranks' 800 tokens each pick 8 of 256.
    routed = moe_layer_count(deepseek) * 32 * expert_bytes(deepseek)
    touched = 1.0 - (1.0 - 8 / 256) ** (8 * DECODE_TOKENS)
    weight_bytes = float(layout.weight_bytes[0])
    expected_read = weight_bytes - routed * (1.0 - touched)
    hbm_bytes_per_s = deepseek.node.hbm_bandwidth_bytes_per_s * deepseek.node.hbm_bandwidth_efficiency

    assert float(layout.routed_expert_bytes[0]) == pytest.approx(routed, rel=1e-6)
    assert float(step.weight_read) == pytest.approx(expected_read / hbm_bytes_per_s, rel=1e-5)


def test_expert_parallel_adds_to_dp8_step(deepseek_model):
    (with_ep,) = deepseek_model.evaluate([deployment(8, 1, expert_parallel=True)])
    shares = with_ep.metrics["engine_time_shares"]
    assert shares["ep_dispatch_combine"] > 0.0
    assert shares["tp_allreduce"] == 0.0
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6)


def test_expert_parallel_rejected_for_dense_model(example_plans):
    model = CostModel(example_plans[DENSE_PLAN])
    (evaluation,) = model.evaluate([deployment(1, 1, expert_parallel=True)])
    assert not evaluation.feasible
    assert "dense" in evaluation.infeasible_reason
    assert "enable_expert_parallel" in evaluation.infeasible_reason


def test_expert_parallel_off_keeps_dense_model_feasible(example_plans):
    model = CostModel(example_plans[DENSE_PLAN])
    (evaluation,) = model.evaluate([deployment(1, 1, expert_parallel=False)])
    assert evaluation.feasible


def test_expert_parallel_dp8_beats_tp8_makespan(deepseek_model):
    # DP attention keeps one MLA latent per replica instead of one per TP rank, so the
    # eight replicas hold more running requests than one tp 8 replica.
    tp8, dp8 = deepseek_model.evaluate([
        deployment(1, 8, expert_parallel=None), deployment(8, 1, expert_parallel=True),
    ])
    assert dp8.metrics["kv_capacity_tokens"] * 8 > tp8.metrics["kv_capacity_tokens"]
    assert dp8.metrics["makespan_s"] < tp8.metrics["makespan_s"]


def test_config_batch_expert_parallel_column(deepseek_model):
    batch = deepseek_model.config_batch([deployment(8, 1, expert_parallel=True),
                                         deployment(8, 1, expert_parallel=None)])
    np.testing.assert_array_equal(batch.enable_expert_parallel, np.array([1.0, 0.0], dtype=np.float32))


def test_cli_evaluate_dp8_expert_parallel(deepseek_model):
    plan_path = REPO_ROOT / "examples" / "h200-reasoning" / f"{DEEPSEEK_PLAN}.yaml"
    command = [sys.executable, "-m", "kvplan.cli", "evaluate", str(plan_path),
               "--config", "dp=8,tp=1,enable_expert_parallel=true", "--format", "json"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr

    (row,) = json.loads(run.stdout)["results"]
    assert row["config"]["enable_expert_parallel"] is True
    assert row["feasible"] is True
    # The command reports the weights of the expert-parallel layout, checked above
    # against the architecture.
    config = {key: row["config"][key] for key in ("max_num_seqs", "max_num_batched_tokens")}
    (api,) = deepseek_model.evaluate([Deployment(8, 1, 1, **config, gpu_memory_utilization=0.9,
                                                 enable_expert_parallel=True)])
    assert row["metrics"]["weight_bytes_per_gpu"] == api.metrics["weight_bytes_per_gpu"]
    assert row["metrics"]["makespan_s"] == pytest.approx(api.metrics["makespan_s"], rel=1e-6)
