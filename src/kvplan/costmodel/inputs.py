"""Array inputs of the cost model, built once per plan in plain Python.

The JAX functions never see a spec dataclass: :func:`build_model_inputs` turns a plan
into :class:`ModelInputs`, a NamedTuple of arrays and floats that is a JAX pytree, and
:class:`ConfigBatch` holds one row per candidate deployment.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kvplan.costmodel import constants
from kvplan.costmodel.architecture import (
    kv_bytes_per_token,
    parallel_tables,
    routed_expert_bytes_per_expert,
)
from kvplan.spec.types import DISTRIBUTION_BINS, DTYPE_BYTES, Plan

ARRIVAL_MODES = ("batch", "rate", "concurrency")


class ModelInputs(NamedTuple):
    """Everything about a plan that the cost model needs, as arrays.

    Tables are indexed ``[i_tp, i_pp, stage]`` (stages padded with zero layers), and
    length distributions are padded to ``DISTRIBUTION_BINS`` points with zero weight.
    """

    # Parallel layout tables, shape [n_tp, n_pp, n_stage] unless noted.
    layout_valid: np.ndarray  # [n_tp, n_pp] bool
    stage_layers: np.ndarray
    stage_moe_layers: np.ndarray
    stage_weight_bytes: np.ndarray
    stage_routed_expert_bytes: np.ndarray
    stage_kv_bytes_per_token: np.ndarray
    stage_linear_flops_per_token: np.ndarray
    stage_attention_flops_per_context_token: np.ndarray
    stage_pp_send_bytes_per_token: np.ndarray

    # Architecture scalars.
    hidden_size: float
    mlp_width: float  # widest per-token MLP width before TP split (dense or top-k experts)
    vocab_size: float
    num_experts: float  # 0 for dense models
    experts_per_token: float
    routed_expert_bytes_per_expert: float  # one whole expert of one MoE layer, 0 for dense models
    model_kv_bytes_per_token: float
    activation_bytes: float  # bytes per activation element

    # Node.
    gpus_per_node: float
    gpu_memory_bytes: float
    hbm_bytes_per_s: float  # achieved
    flops_per_s: float  # achieved, at the dtype the linear layers run in
    nvlink_bytes_per_s: float  # achieved, per direction, for collectives
    nvlink_latency_s: float
    internode_bytes_per_s: float
    internode_latency_s: float
    price_per_gpu_hour: float  # 0 when unknown

    # Engine.
    block_size: float
    watermark: float
    require_full_prompt: float  # 0.0 or 1.0
    pp_batches_in_flight: float  # 0 means pp_size
    kv_cache_tokens_override: float  # 0 means computed
    async_scheduling: float  # 0.0 or 1.0
    cpu_overhead_per_step_s: float
    cpu_overhead_per_request_s: float
    kernel_overhead_per_layer_s: float
    non_torch_memory_bytes: float
    cuda_graph_memory_bytes: float

    # Workload.
    prompt_values: np.ndarray  # [DISTRIBUTION_BINS]
    prompt_probabilities: np.ndarray
    output_values: np.ndarray
    output_probabilities: np.ndarray
    max_request_tokens: float  # longest prompt + longest output
    num_requests: float  # batch mode
    arrival_rate_per_s: float  # rate mode
    concurrency: float  # concurrency mode
    gpu_budget: float


class ConfigBatch(NamedTuple):
    """Candidate deployments, one per row; every field has shape [n]."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    i_tp: np.ndarray
    i_pp: np.ndarray
    max_num_seqs: np.ndarray
    max_num_batched_tokens: np.ndarray
    gpu_memory_utilization: np.ndarray
    # vLLM's --enable-expert-parallel as 0.0 (off) or 1.0 (on).
    enable_expert_parallel: np.ndarray


def _pad_distribution(values: tuple[float, ...], probabilities: tuple[float, ...]):
    padded_values = np.ones(DISTRIBUTION_BINS, dtype=np.float32)
    padded_probabilities = np.zeros(DISTRIBUTION_BINS, dtype=np.float32)
    padded_values[: len(values)] = values
    padded_probabilities[: len(probabilities)] = probabilities
    padded_probabilities /= padded_probabilities.sum()
    return padded_values, padded_probabilities


def _engine_constant(value: float | None, default: float) -> float:
    return float(default if value is None else value)


def build_model_inputs(
    plan: Plan, tp_values: tuple[int, ...], pp_values: tuple[int, ...]
) -> tuple[ModelInputs, list[list[str | None]]]:
    """Build the cost model's inputs for ``plan``.

    Returns the inputs and, for each ``[i_tp][i_pp]``, the reason a layout is invalid
    (``None`` when valid).
    """
    model = plan.model
    architecture = model.architecture
    node = plan.node
    engine = plan.engine
    workload = plan.workload

    tables = parallel_tables(model, tp_values, pp_values)

    weight_dtype = model.weight_dtype
    if weight_dtype == "fp8":
        peak_flops = node.peak_flops_per_s["fp8"] * node.fp8_compute_efficiency
    else:
        peak_flops = node.peak_flops_per_s[weight_dtype] * node.compute_efficiency

    kv_dtype_bytes = 1 if model.kv_cache_dtype == "fp8" else DTYPE_BYTES[
        "float16" if weight_dtype == "float16" else "bfloat16"
    ]

    if architecture.moe is not None:
        moe = architecture.moe
        routed_width = moe.num_experts_per_token * moe.moe_intermediate_size
        shared_width = moe.num_shared_experts * moe.shared_expert_intermediate_size
        mlp_width = max(architecture.intermediate_size, routed_width + shared_width)
        num_experts = moe.num_experts
        experts_per_token = moe.num_experts_per_token
    else:
        mlp_width = architecture.intermediate_size
        num_experts = 0
        experts_per_token = 0

    if engine.block_size is not None:
        block_size = engine.block_size
    elif architecture.mla is not None:
        block_size = constants.DEFAULT_MLA_BLOCK_SIZE
    else:
        block_size = constants.DEFAULT_BLOCK_SIZE

    prompt_values, prompt_probabilities = _pad_distribution(
        workload.prompt_tokens.values, workload.prompt_tokens.probabilities
    )
    output_values, output_probabilities = _pad_distribution(
        workload.output_tokens.values, workload.output_tokens.probabilities
    )

    inputs = ModelInputs(
        layout_valid=tables.valid,
        stage_layers=tables.num_layers.astype(np.float32),
        stage_moe_layers=tables.num_moe_layers.astype(np.float32),
        stage_weight_bytes=tables.weight_bytes.astype(np.float32),
        stage_routed_expert_bytes=tables.routed_expert_weight_bytes.astype(np.float32),
        stage_kv_bytes_per_token=tables.kv_bytes_per_token.astype(np.float32),
        stage_linear_flops_per_token=tables.linear_flops_per_token.astype(np.float32),
        stage_attention_flops_per_context_token=(
            tables.attention_flops_per_token_per_context_token.astype(np.float32)
        ),
        stage_pp_send_bytes_per_token=tables.pp_send_bytes_per_token.astype(np.float32),
        hidden_size=float(architecture.hidden_size),
        mlp_width=float(mlp_width),
        vocab_size=float(architecture.vocab_size),
        num_experts=float(num_experts),
        experts_per_token=float(experts_per_token),
        routed_expert_bytes_per_expert=float(
            routed_expert_bytes_per_expert(architecture, weight_dtype)
        ),
        model_kv_bytes_per_token=float(kv_bytes_per_token(architecture, kv_dtype_bytes)),
        activation_bytes=2.0,
        gpus_per_node=float(node.gpus_per_node),
        gpu_memory_bytes=float(node.gpu_memory_bytes),
        hbm_bytes_per_s=float(node.hbm_bandwidth_bytes_per_s * node.hbm_bandwidth_efficiency),
        flops_per_s=float(peak_flops),
        nvlink_bytes_per_s=float(
            node.nvlink_bandwidth_bytes_per_s * node.allreduce_bandwidth_efficiency
        ),
        nvlink_latency_s=float(node.nvlink_latency_s),
        internode_bytes_per_s=float(node.internode_bandwidth_bytes_per_s),
        internode_latency_s=float(node.internode_latency_s),
        price_per_gpu_hour=float(node.price_per_gpu_hour or 0.0),
        block_size=float(block_size),
        watermark=float(engine.watermark),
        require_full_prompt=float(engine.require_full_prompt_admission),
        pp_batches_in_flight=float(engine.pp_batches_in_flight or 0),
        kv_cache_tokens_override=float(engine.kv_cache_tokens or 0),
        async_scheduling=float(engine.async_scheduling),
        cpu_overhead_per_step_s=_engine_constant(
            engine.cpu_overhead_per_step_s, constants.CPU_OVERHEAD_PER_STEP_S
        ),
        cpu_overhead_per_request_s=_engine_constant(
            engine.cpu_overhead_per_request_s, constants.CPU_OVERHEAD_PER_REQUEST_S
        ),
        kernel_overhead_per_layer_s=_engine_constant(
            engine.kernel_overhead_per_layer_s, constants.KERNEL_OVERHEAD_PER_LAYER_S
        ),
        non_torch_memory_bytes=_engine_constant(
            engine.non_torch_memory_bytes, constants.NON_TORCH_MEMORY_BYTES
        ),
        cuda_graph_memory_bytes=_engine_constant(
            engine.cuda_graph_memory_bytes, constants.CUDA_GRAPH_MEMORY_BYTES
        ),
        prompt_values=prompt_values,
        prompt_probabilities=prompt_probabilities,
        output_values=output_values,
        output_probabilities=output_probabilities,
        max_request_tokens=float(
            workload.prompt_tokens.max_tokens + workload.output_tokens.max_tokens
        ),
        num_requests=float(workload.requests or 0),
        arrival_rate_per_s=float(workload.arrival_rate_per_s or 0.0),
        concurrency=float(workload.concurrency or 0),
        gpu_budget=float(plan.search.gpu_budget),
    )
    return inputs, tables.reasons
