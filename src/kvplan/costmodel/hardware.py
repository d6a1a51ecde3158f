"""Memory and step time of one engine replica, for one configuration, in JAX.

Every function here takes scalars for one configuration; :mod:`kvplan.costmodel.evaluate`
batches them with ``jax.vmap``. Units: bytes, seconds, tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kvplan.costmodel.constants import (
    ACTIVATION_HIDDEN_TENSORS,
    ACTIVATION_MLP_TENSORS,
    SAMPLER_BYTES_PER_VOCAB_ENTRY,
)
from kvplan.costmodel.inputs import ModelInputs


class Layout(NamedTuple):
    """Per-stage table rows of one (tp, pp) pair and the deployment's expert parallelism.

    The table fields have shape [n_stage]. The expert-parallel fields are scalars, set by
    :func:`apply_expert_parallel`, and their defaults mean expert parallelism is off.
    """

    layers: jnp.ndarray
    moe_layers: jnp.ndarray
    weight_bytes: jnp.ndarray
    routed_expert_bytes: jnp.ndarray
    kv_bytes_per_token: jnp.ndarray
    linear_flops_per_token: jnp.ndarray
    attention_flops_per_context_token: jnp.ndarray
    pp_send_bytes_per_token: jnp.ndarray
    # DP ranks whose tokens each GPU's experts process in one step, dp with expert
    # parallelism and 1 without.
    expert_step_replicas: jnp.ndarray | float = 1.0
    # Link of the EP dispatch and combine, achieved bytes per second and latency.
    expert_link_bytes_per_s: jnp.ndarray | float = 1.0
    expert_link_latency_s: jnp.ndarray | float = 0.0


def select_layout(inputs: ModelInputs, i_tp, i_pp) -> Layout:
    return Layout(
        layers=inputs.stage_layers[i_tp, i_pp],
        moe_layers=inputs.stage_moe_layers[i_tp, i_pp],
        weight_bytes=inputs.stage_weight_bytes[i_tp, i_pp],
        routed_expert_bytes=inputs.stage_routed_expert_bytes[i_tp, i_pp],
        kv_bytes_per_token=inputs.stage_kv_bytes_per_token[i_tp, i_pp],
        linear_flops_per_token=inputs.stage_linear_flops_per_token[i_tp, i_pp],
        attention_flops_per_context_token=(
            inputs.stage_attention_flops_per_context_token[i_tp, i_pp]
        ),
        pp_send_bytes_per_token=inputs.stage_pp_send_bytes_per_token[i_tp, i_pp],
    )


def apply_expert_parallel(inputs: ModelInputs, layout: Layout, dp, tp, pp,
                          enable_expert_parallel) -> Layout:
    """Lay out the routed experts of an MoE model over its data-parallel group.

    An MoE model with dp > 1 is not dp independent replicas in vLLM: its expert layers
    form one group of dp x tp GPUs per pipeline stage, the DP ranks step in lockstep and
    gather each other's tokens before every MoE layer ("By default, expert layers form a
    tensor parallel group of size DP x TP", docs/serving/data_parallel_deployment.md).
    Without ``--enable-expert-parallel`` each GPU of the group stores a 1/(dp x tp) slice
    of every expert. With it, each GPU stores whole experts, the fullest ceil(E / (dp x tp))
    of them in recent versions (``FusedMoEParallelConfig.make`` in
    vllm/model_executor/layers/fused_moe/config.py, ``determine_expert_map`` in
    vllm/model_executor/layers/fused_moe/layer.py). Attention, dense MLPs, shared
    experts and the router stay tensor-parallel within each DP rank. Either way,
    routed-expert bytes per GPU drop from routed / tp to about routed / (dp x tp).

    With dp 1 and no expert parallelism, or on one GPU, or for a dense model (which the
    cost model rejects with the flag set), the layout is returned unchanged.
    """
    expert_parallel = (enable_expert_parallel > 0) & (dp * tp > 1)
    grouped = (inputs.num_experts > 0) & (expert_parallel | (dp > 1))
    ep_size = jnp.where(expert_parallel, dp * tp, 1.0)
    experts_per_gpu = jnp.ceil(inputs.num_experts / ep_size)
    whole_expert_bytes = layout.moe_layers * experts_per_gpu * inputs.routed_expert_bytes_per_expert
    grouped_routed_bytes = jnp.where(expert_parallel, whole_expert_bytes, layout.routed_expert_bytes / dp)
    grouped_weight_bytes = layout.weight_bytes - layout.routed_expert_bytes + grouped_routed_bytes

    # vLLM numbers ranks as (dp, pp, tp), tp fastest (initialize_model_parallel in
    # vllm/distributed/parallel_state.py), so a DP group spans all dp x pp x tp GPUs.
    crosses_node = dp * tp * pp > inputs.gpus_per_node
    return layout._replace(
        weight_bytes=jnp.where(grouped, grouped_weight_bytes, layout.weight_bytes),
        routed_expert_bytes=jnp.where(grouped, grouped_routed_bytes, layout.routed_expert_bytes),
        expert_step_replicas=jnp.where(grouped, dp, 1.0),
        expert_link_bytes_per_s=jnp.where(
            crosses_node, inputs.internode_bytes_per_s, inputs.nvlink_bytes_per_s
        ),
        expert_link_latency_s=jnp.where(
            crosses_node, inputs.internode_latency_s, inputs.nvlink_latency_s
        ),
    )


class Memory(NamedTuple):
    """KV cache sizing of one replica."""

    kv_capacity_tokens: jnp.ndarray  # per replica, whole blocks
    weight_bytes_per_gpu: jnp.ndarray  # the fullest stage
    kv_memory_bytes_per_gpu: jnp.ndarray  # budget left for KV on the binding stage
    weights_fit: jnp.ndarray  # bool


def activation_peak_bytes(inputs: ModelInputs, tp, max_num_seqs, max_num_batched_tokens):
    """Estimate the peak of vLLM's profiling forward pass, in bytes per GPU.

    tokens * bytes * (4 * hidden + 3 * mlp_width / tp) for the forward pass, plus
    min(max_num_seqs, max_num_batched_tokens) * vocab * 8 bytes for the sampler.
    """
    forward = (
        max_num_batched_tokens
        * inputs.activation_bytes
        * (
            ACTIVATION_HIDDEN_TENSORS * inputs.hidden_size
            + ACTIVATION_MLP_TENSORS * inputs.mlp_width / tp
        )
    )
    sampled_requests = jnp.minimum(max_num_seqs, max_num_batched_tokens)
    sampler = sampled_requests * inputs.vocab_size * SAMPLER_BYTES_PER_VOCAB_ENTRY
    return forward + sampler


def kv_memory(inputs: ModelInputs, layout: Layout, tp, max_num_seqs, max_num_batched_tokens,
              gpu_memory_utilization) -> Memory:
    """Size the KV cache the way vLLM v1 does.

    Per GPU: budget = memory * utilization - weights - activation peak - non-torch memory
    - CUDA graph memory. Each stage's blocks = budget / (block_size * KV bytes per token
    of its layers on one GPU); the replica gets the smallest stage's block count, since
    every stage must hold every running request.

    With expert parallelism the profiling pass's MoE layers also hold the hidden states
    that the dispatch gathers from the other dp - 1 ranks and the outputs that the
    combine scatters back: 2 x (dp-1) x max_num_batched_tokens x hidden x 2 bytes.
    """
    reserved = (
        activation_peak_bytes(inputs, tp, max_num_seqs, max_num_batched_tokens)
        + inputs.non_torch_memory_bytes
        + inputs.cuda_graph_memory_bytes
    )
    # NOTE: an estimate from the tensor sizes of vLLM's allgather_reducescatter backend,
    # not from a measured profiling peak. It is 0 without expert parallelism.
    gathered_rows = (layout.expert_step_replicas - 1.0) * max_num_batched_tokens
    reserved = reserved + 2.0 * gathered_rows * inputs.hidden_size * inputs.activation_bytes
    budget = inputs.gpu_memory_bytes * gpu_memory_utilization - layout.weight_bytes - reserved

    is_stage = layout.layers > 0
    page_bytes = inputs.block_size * jnp.maximum(layout.kv_bytes_per_token, 1.0)
    stage_blocks = jnp.where(is_stage, jnp.floor(jnp.maximum(budget, 0.0) / page_bytes), jnp.inf)
    blocks = jnp.min(stage_blocks)
    computed_tokens = blocks * inputs.block_size
    capacity = jnp.where(
        inputs.kv_cache_tokens_override > 0, inputs.kv_cache_tokens_override, computed_tokens
    )

    stage_budget = jnp.where(is_stage, budget, jnp.inf)
    return Memory(
        kv_capacity_tokens=capacity,
        weight_bytes_per_gpu=jnp.max(jnp.where(is_stage, layout.weight_bytes, 0.0)),
        kv_memory_bytes_per_gpu=jnp.min(stage_budget),
        weights_fit=jnp.min(stage_budget) > 0,
    )


class StepTime(NamedTuple):
    """Wall time of one scheduler round and how it splits, all in seconds.

    A round advances every running request by one token; under pipeline parallelism
    it is the time for every micro-batch to pass through every stage.
    """

    total: jnp.ndarray
    compute: jnp.ndarray
    weight_read: jnp.ndarray
    kv_read: jnp.ndarray
    communication: jnp.ndarray
    fixed_gpu: jnp.ndarray
    cpu: jnp.ndarray
    # The parts of ``communication``: TP all-reduces, PP stage-to-stage sends, and the
    # dispatch and combine of expert parallelism.
    tp_allreduce: jnp.ndarray = 0.0
    pp_transfer: jnp.ndarray = 0.0
    ep_dispatch_combine: jnp.ndarray = 0.0


def _experts_touched_fraction(inputs: ModelInputs, tokens):
    """Fraction of routed experts read in a step of ``tokens`` tokens.

    Each token picks k of E experts, so one expert is missed by all of them with
    probability (1 - k/E)^tokens (uniform routing).
    """
    safe_experts = jnp.maximum(inputs.num_experts, 1.0)
    miss = jnp.power(1.0 - inputs.experts_per_token / safe_experts, tokens)
    return jnp.where(inputs.num_experts > 0, 1.0 - miss, 1.0)


def round_time(inputs: ModelInputs, layout: Layout, tp, pp, decode_tokens, prefill_tokens,
               prefill_requests, kv_context_tokens, prefill_context_tokens) -> StepTime:
    """Time one scheduler round of a replica.

    decode_tokens: running requests that decode one token each.
    prefill_tokens: prompt (or recomputed) tokens processed in the round.
    prefill_requests: requests those prefill tokens belong to.
    kv_context_tokens: KV tokens the decoding requests read (sum of their contexts).
    prefill_context_tokens: mean context each prefill token attends to.

    Per stage and micro-batch: linear layers take max(FLOPs / achieved FLOP/s, weight
    bytes read / achieved HBM bandwidth); attention takes max(FLOPs, KV bytes / HBM
    bandwidth); each TP all-reduce takes latency + 2 (tp-1)/tp * bytes / link bandwidth,
    two per layer; each layer adds a fixed kernel time. With m micro-batches in flight
    over pp stages, a round takes max(sum of stage times, m * slowest stage).

    With expert parallelism (see :func:`apply_expert_parallel`) the dp DP ranks step
    together, and every GPU runs its experts on the tokens of all of them: the experts
    touched are those of dp x tokens, and each MoE layer adds a dispatch and a combine
    of latency + (dp-1) * tokens * hidden * 2 bytes / link bandwidth each.
    """
    micro_batches = jnp.where(inputs.pp_batches_in_flight > 0,
                              jnp.minimum(inputs.pp_batches_in_flight, pp), pp)
    # A micro-batch needs at least one request.
    micro_batches = jnp.clip(micro_batches, 1.0, jnp.maximum(decode_tokens + prefill_requests, 1.0))

    tokens = (decode_tokens + prefill_tokens) / micro_batches
    decode_context = kv_context_tokens / micro_batches
    prefill_context = prefill_tokens / micro_batches * prefill_context_tokens

    # With expert parallelism a GPU's experts serve the tokens of every DP rank.
    touched = _experts_touched_fraction(inputs, tokens * layout.expert_step_replicas)
    weight_bytes_read = layout.weight_bytes - layout.routed_expert_bytes * (1.0 - touched)
    linear_flops = layout.linear_flops_per_token * tokens
    linear_compute = linear_flops / inputs.flops_per_s
    linear_memory = weight_bytes_read / inputs.hbm_bytes_per_s
    linear = jnp.maximum(linear_compute, linear_memory)

    attention_flops = layout.attention_flops_per_context_token * (decode_context + prefill_context)
    kv_bytes_read = layout.kv_bytes_per_token * decode_context
    attention_compute = attention_flops / inputs.flops_per_s
    attention_memory = kv_bytes_read / inputs.hbm_bytes_per_s
    attention = jnp.maximum(attention_compute, attention_memory)

    allreduce_bytes = tokens * inputs.hidden_size * inputs.activation_bytes
    ring_factor = 2.0 * (tp - 1.0) / tp
    one_allreduce = inputs.nvlink_latency_s + ring_factor * allreduce_bytes / inputs.nvlink_bytes_per_s
    allreduce = jnp.where(tp > 1, 2.0 * layout.layers * one_allreduce, 0.0)

    # vLLM's default EP backend, allgather_reducescatter (AgRsAll2AllManager in
    # vllm/distributed/device_communicators/all2all.py), all-gathers the hidden states of
    # the DP group before each MoE layer and reduce-scatters the outputs after it. A ring
    # moves (dp-1)/dp of the gathered dp x tokens rows through each GPU, each way. Within
    # a DP rank the TP all-reduce above still sums the partial outputs of the TP ranks.
    gathered_rows = (layout.expert_step_replicas - 1.0) * tokens
    one_exchange = (
        layout.expert_link_latency_s
        + gathered_rows * inputs.hidden_size * inputs.activation_bytes / layout.expert_link_bytes_per_s
    )
    dispatch_combine = jnp.where(
        layout.expert_step_replicas > 1, 2.0 * layout.moe_layers * one_exchange, 0.0
    )

    # A stage boundary crosses nodes once the stages of one replica span more GPUs
    # than a node has.
    crosses_node = tp * pp > inputs.gpus_per_node
    link_bytes_per_s = jnp.where(crosses_node, inputs.internode_bytes_per_s, inputs.nvlink_bytes_per_s)
    link_latency = jnp.where(crosses_node, inputs.internode_latency_s, inputs.nvlink_latency_s)
    send = jnp.where(
        layout.pp_send_bytes_per_token > 0,
        link_latency + layout.pp_send_bytes_per_token * tokens / link_bytes_per_s,
        0.0,
    )

    fixed = layout.layers * inputs.kernel_overhead_per_layer_s
    stage = linear + attention + allreduce + dispatch_combine + send + fixed
    gpu = jnp.maximum(jnp.sum(stage), micro_batches * jnp.max(stage))

    requests_in_step = decode_tokens + prefill_requests
    cpu_per_micro_batch = (
        inputs.cpu_overhead_per_step_s
        + inputs.cpu_overhead_per_request_s * requests_in_step / micro_batches
    )
    cpu = micro_batches * cpu_per_micro_batch
    # With several micro-batches in flight, or with async scheduling, the host prepares
    # one batch while the GPUs run another; otherwise the two run back to back.
    overlapped = (micro_batches > 1) | (inputs.async_scheduling > 0)
    total = jnp.where(overlapped, jnp.maximum(gpu, cpu) + inputs.cpu_overhead_per_step_s, gpu + cpu)

    # Attribute the GPU time to its parts, scaled so that they add up to ``gpu``.
    share = gpu / jnp.maximum(jnp.sum(stage), 1e-30)
    compute_part = jnp.sum(jnp.where(linear_compute >= linear_memory, linear, 0.0)
                           + jnp.where(attention_compute >= attention_memory, attention, 0.0))
    weight_part = jnp.sum(jnp.where(linear_compute < linear_memory, linear, 0.0))
    kv_part = jnp.sum(jnp.where(attention_compute < attention_memory, attention, 0.0))
    return StepTime(
        total=total,
        compute=compute_part * share,
        weight_read=weight_part * share,
        kv_read=kv_part * share,
        # Summed apart, so that the EP term (0 without expert parallelism) leaves the
        # float32 sum of the other two unchanged.
        communication=jnp.sum(allreduce + send) * share + jnp.sum(dispatch_combine) * share,
        fixed_gpu=jnp.sum(fixed) * share,
        cpu=total - gpu,
        tp_allreduce=jnp.sum(allreduce) * share,
        pp_transfer=jnp.sum(send) * share,
        ep_dispatch_combine=jnp.sum(dispatch_combine) * share,
    )
