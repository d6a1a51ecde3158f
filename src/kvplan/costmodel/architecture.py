"""Exact architecture arithmetic: parameters, weight bytes, KV cache and per-GPU layouts.

Everything here is pure Python integer arithmetic on an
:class:`~kvplan.spec.types.Architecture`. The tensor layout follows vLLM's model code
(``llama.py``, ``qwen2.py``, ``qwen3.py``, ``qwen3_moe.py``, ``mixtral.py`` and
``deepseek_v2.py`` under ``vllm/model_executor/models``):

* Column-parallel linear layers split their output rows across the tensor-parallel (TP)
  ranks and row-parallel ones split their input columns. The k and v projections split
  by KV head and hold one head per rank once tp exceeds the number of KV heads.
* The embedding and the output head (lm_head) are vocab-parallel: vLLM pads the
  vocabulary to a multiple of 64 and splits the padded rows across the TP ranks.
* Norms, MLA's ``q_a_proj`` and ``kv_a_proj_with_mqa`` and the MoE router are
  replicated on every TP rank.
* Every TP rank stores a 1/tp slice of every routed expert. vLLM's expert parallelism,
  which stores whole experts instead, is applied per deployment in ``hardware.py`` from
  :func:`routed_expert_bytes_per_expert`.

The parameter counts leave out DeepSeek's multi-token-prediction layer and the router's
``e_score_correction_bias`` because vLLM does not load them for plain decoding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from kvplan.spec.types import DTYPE_BYTES, Architecture, ModelSpec, WeightDtype

# vLLM pads the vocabulary of VocabParallelEmbedding and ParallelLMHead to a multiple of
# this (DEFAULT_VOCAB_PADDING_SIZE in vllm/model_executor/layers/vocab_parallel_embedding.py).
VOCAB_PADDING = 64

# Activations, the embedding, the output head, norms and routers stay in bf16 or fp16.
ACTIVATION_BYTES = 2
UNQUANTIZED_WEIGHT_BYTES = 2
FP8_SCALE_BYTES = 4

# vLLM's --kv-cache-dtype: "auto" stores the cache in the model's activation dtype
# (bf16 or fp16, also for fp8 weights), "fp8" in one byte per element.
KV_CACHE_DTYPE_BYTES = {"auto": 2, "fp8": 1}

# Tensors that vLLM sends from one pipeline stage to the next for each token: the hidden
# states and the residual (IntermediateTensors of the Llama, Qwen, Mixtral and DeepSeek
# models in vLLM).
PP_SEND_TENSORS = 2

TensorKind = Literal["linear", "router", "embedding", "lm_head", "norm", "bias"]
Sharding = Literal["column", "row", "vocab", "replicated"]
Placement = Literal["first_stage", "decoder_layer", "last_stage"]


@dataclasses.dataclass(frozen=True)
class WeightTensor:
    """One weight tensor of the model at its full, unsharded shape.

    Linear weights have shape ``(out_features, in_features)``. The routed experts of one
    MoE layer are stacked like vLLM's fused-MoE weights, as
    ``(num_experts, out_features, in_features)``.
    """

    name: str
    shape: tuple[int, ...]
    kind: TensorKind
    sharding: Sharding
    placement: Placement
    # Decoder layer index, or None for the embedding, the final norm and lm_head.
    layer: int | None
    is_routed_expert: bool = False
    # Smallest unit that the sharded axis splits into: head_dim for the k and v
    # projections, which are replicated per head once tp exceeds the KV head count.
    shard_granule: int = 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_tp_sharded(self) -> bool:
        return self.sharding != "replicated"

    @property
    def is_quantizable(self) -> bool:
        """Whether an fp8 checkpoint stores this tensor in fp8 with float32 scales."""
        return self.kind == "linear"

    @property
    def is_matmul(self) -> bool:
        """Whether the forward pass multiplies every token by this weight."""
        return self.kind in ("linear", "router", "lm_head")


@dataclasses.dataclass(frozen=True)
class StageShard:
    """Resident weights and per-token costs on one GPU of one pipeline stage.

    The counts are per token of the batch, over this stage's decoder layers and, on the
    first and last stage, the embedding and the output head. They are per GPU except
    pp_send_bytes_per_token, which is for the stage as a whole.
    """

    start_layer: int
    # One past the last decoder layer of the stage.
    end_layer: int
    num_layers: int
    num_moe_layers: int
    weight_bytes: int
    # Part of weight_bytes in routed experts, read only for experts that a token selects.
    routed_expert_weight_bytes: int
    kv_bytes_per_token: int
    # 2 FLOPs per multiply-add over the active linear weights, lm_head included.
    linear_flops_per_token: int
    # Attention FLOPs per new token and per token already in its context.
    attention_flops_per_token_per_context_token: int
    allreduce_bytes_per_token: int
    # Bytes of hidden states and residual that cross to the next stage, not divided by
    # tp. Zero on the last stage.
    pp_send_bytes_per_token: int


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    """A tensor- and pipeline-parallel layout of one model replica.

    ``stages`` lists one StageShard per pipeline stage when the layout is valid and is
    empty otherwise. ``reason`` explains why an invalid layout cannot run in vLLM.
    """

    tp: int
    pp: int
    valid: bool
    reason: str | None
    stages: tuple[StageShard, ...]


STAGE_FIELDS = tuple(field.name for field in dataclasses.fields(StageShard))
_INTEGER_STAGE_FIELDS = ("start_layer", "end_layer", "num_layers", "num_moe_layers")


@dataclasses.dataclass(frozen=True, eq=False)
class ParallelTables:
    """StageShard fields of many (tp, pp) layouts as dense arrays for the JAX cost model.

    With ``n_tp = len(tp_values)``, ``n_pp = len(pp_values)`` and
    ``n_stages = max(pp_values)``:

    * ``tp_values`` and ``pp_values``: int64 arrays of shape ``(n_tp,)`` and ``(n_pp,)``.
    * ``valid``: bool array of shape ``(n_tp, n_pp)``.
    * ``reasons``: ``reasons[i_tp][i_pp]`` is None for a valid layout and the
      ParallelLayout reason otherwise.
    * One array of shape ``(n_tp, n_pp, n_stages)`` per StageShard field, indexed
      ``[i_tp, i_pp, stage]``. The layer fields are int64. Byte and FLOP fields are
      float64, which represents them exactly because they stay far below 2**53. Stages past
      a layout's pp, and every stage of an invalid layout, are zero, so
      ``num_layers == 0`` marks padding.

    The arrays are read-only.
    """

    tp_values: np.ndarray
    pp_values: np.ndarray
    valid: np.ndarray
    reasons: list[list[str | None]]
    start_layer: np.ndarray
    end_layer: np.ndarray
    num_layers: np.ndarray
    num_moe_layers: np.ndarray
    weight_bytes: np.ndarray
    routed_expert_weight_bytes: np.ndarray
    kv_bytes_per_token: np.ndarray
    linear_flops_per_token: np.ndarray
    attention_flops_per_token_per_context_token: np.ndarray
    allreduce_bytes_per_token: np.ndarray
    pp_send_bytes_per_token: np.ndarray


# ---------------------------------------------------------------------------------------
# Weight inventory
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def weight_inventory(arch: Architecture) -> tuple[WeightTensor, ...]:
    """List every weight tensor of the model, embedding first and lm_head last.

    Names follow the Hugging Face checkpoint, except that routed experts are stacked
    into one tensor per projection and layer. With tied embeddings there is no lm_head
    tensor because the output head reuses the embedding.
    """
    hidden = arch.hidden_size
    tensors = [
        WeightTensor(
            "model.embed_tokens.weight",
            (arch.vocab_size, hidden),
            "embedding",
            "vocab",
            "first_stage",
            None,
        )
    ]
    for layer in range(arch.num_hidden_layers):
        tensors.extend(_layer_tensors(arch, layer))

    tensors.append(
        WeightTensor("model.norm.weight", (hidden,), "norm", "replicated", "last_stage", None)
    )
    if not arch.tie_word_embeddings:
        tensors.append(
            WeightTensor(
                "lm_head.weight", (arch.vocab_size, hidden), "lm_head", "vocab", "last_stage", None
            )
        )
    return tuple(tensors)


def is_moe_layer(arch: Architecture, layer: int) -> bool:
    """Return whether decoder layer ``layer`` has routed experts instead of a dense MLP."""
    return arch.moe is not None and layer not in arch.moe.dense_layer_indices


# Builds a WeightTensor of the current decoder layer from a name relative to the layer.
_TensorFactory = Callable[..., WeightTensor]


def _layer_tensors(arch: Architecture, layer: int) -> list[WeightTensor]:
    prefix = f"model.layers.{layer}."
    hidden = arch.hidden_size

    def tensor(
        name: str,
        shape: tuple[int, ...],
        kind: TensorKind,
        sharding: Sharding,
        *,
        is_routed_expert: bool = False,
        shard_granule: int = 1,
    ) -> WeightTensor:
        return WeightTensor(
            prefix + name,
            shape,
            kind,
            sharding,
            "decoder_layer",
            layer,
            is_routed_expert=is_routed_expert,
            shard_granule=shard_granule,
        )

    tensors = [
        tensor("input_layernorm.weight", (hidden,), "norm", "replicated"),
        tensor("post_attention_layernorm.weight", (hidden,), "norm", "replicated"),
    ]
    if arch.mla is None:
        tensors.extend(_gqa_attention_tensors(arch, tensor))
    else:
        tensors.extend(_mla_attention_tensors(arch, tensor))

    if is_moe_layer(arch, layer):
        tensors.extend(_moe_tensors(arch, tensor))
    else:
        tensors.extend(_mlp_tensors("mlp.", arch.intermediate_size, hidden, tensor))
    return tensors


def _gqa_attention_tensors(arch: Architecture, tensor: _TensorFactory) -> list[WeightTensor]:
    hidden = arch.hidden_size
    head_dim = arch.head_dim
    q_size = arch.num_attention_heads * head_dim
    kv_size = arch.num_key_value_heads * head_dim

    tensors = [
        tensor("self_attn.q_proj.weight", (q_size, hidden), "linear", "column"),
        tensor(
            "self_attn.k_proj.weight", (kv_size, hidden), "linear", "column",
            shard_granule=head_dim,
        ),
        tensor(
            "self_attn.v_proj.weight", (kv_size, hidden), "linear", "column",
            shard_granule=head_dim,
        ),
        tensor("self_attn.o_proj.weight", (hidden, q_size), "linear", "row"),
    ]
    if arch.attention_bias:
        tensors += [
            tensor("self_attn.q_proj.bias", (q_size,), "bias", "column"),
            tensor("self_attn.k_proj.bias", (kv_size,), "bias", "column", shard_granule=head_dim),
            tensor("self_attn.v_proj.bias", (kv_size,), "bias", "column", shard_granule=head_dim),
        ]
    if arch.qk_norm:
        # Qwen3 normalizes each head with one weight vector shared by all heads.
        tensors += [
            tensor("self_attn.q_norm.weight", (head_dim,), "norm", "replicated"),
            tensor("self_attn.k_norm.weight", (head_dim,), "norm", "replicated"),
        ]
    return tensors


def _mla_attention_tensors(arch: Architecture, tensor: _TensorFactory) -> list[WeightTensor]:
    mla = arch.mla
    assert mla is not None
    hidden = arch.hidden_size
    heads = arch.num_attention_heads
    qk_head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim

    tensors = []
    if mla.q_lora_rank is None:
        tensors.append(
            tensor("self_attn.q_proj.weight", (heads * qk_head_dim, hidden), "linear", "column")
        )
    else:
        tensors += [
            tensor("self_attn.q_a_proj.weight", (mla.q_lora_rank, hidden), "linear", "replicated"),
            tensor("self_attn.q_a_layernorm.weight", (mla.q_lora_rank,), "norm", "replicated"),
            tensor(
                "self_attn.q_b_proj.weight",
                (heads * qk_head_dim, mla.q_lora_rank),
                "linear",
                "column",
            ),
        ]
    tensors += [
        tensor(
            "self_attn.kv_a_proj_with_mqa.weight",
            (mla.kv_lora_rank + mla.qk_rope_head_dim, hidden),
            "linear",
            "replicated",
        ),
        tensor("self_attn.kv_a_layernorm.weight", (mla.kv_lora_rank,), "norm", "replicated"),
        tensor(
            "self_attn.kv_b_proj.weight",
            (heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank),
            "linear",
            "column",
        ),
        tensor("self_attn.o_proj.weight", (hidden, heads * mla.v_head_dim), "linear", "row"),
    ]
    return tensors


def _mlp_tensors(
    prefix: str, intermediate: int, hidden: int, tensor: _TensorFactory
) -> list[WeightTensor]:
    """SwiGLU MLP: gate and up projections are column-parallel, down is row-parallel."""
    return [
        tensor(prefix + "gate_proj.weight", (intermediate, hidden), "linear", "column"),
        tensor(prefix + "up_proj.weight", (intermediate, hidden), "linear", "column"),
        tensor(prefix + "down_proj.weight", (hidden, intermediate), "linear", "row"),
    ]


def _moe_tensors(arch: Architecture, tensor: _TensorFactory) -> list[WeightTensor]:
    moe = arch.moe
    assert moe is not None
    hidden = arch.hidden_size
    experts = moe.num_experts
    expert_size = moe.moe_intermediate_size

    if arch.hf_architecture == "MixtralForCausalLM":
        # Mixtral's checkpoint names w1 (gate), w3 (up) and w2 (down).
        block = "block_sparse_moe."
        gate_name, up_name, down_name = "w1", "w3", "w2"
    else:
        block = "mlp."
        gate_name, up_name, down_name = "gate_proj", "up_proj", "down_proj"

    tensors = [
        tensor(block + "gate.weight", (experts, hidden), "router", "replicated"),
        tensor(
            f"{block}experts.{gate_name}.weight",
            (experts, expert_size, hidden),
            "linear",
            "column",
            is_routed_expert=True,
        ),
        tensor(
            f"{block}experts.{up_name}.weight",
            (experts, expert_size, hidden),
            "linear",
            "column",
            is_routed_expert=True,
        ),
        tensor(
            f"{block}experts.{down_name}.weight",
            (experts, hidden, expert_size),
            "linear",
            "row",
            is_routed_expert=True,
        ),
    ]
    if moe.num_shared_experts > 0:
        tensors += _mlp_tensors(
            block + "shared_experts.", moe.shared_expert_intermediate_size, hidden, tensor
        )
    return tensors


# ---------------------------------------------------------------------------------------
# Whole-model counts
# ---------------------------------------------------------------------------------------


def parameter_count(arch: Architecture) -> int:
    """Return the number of parameters, counting a tied embedding once."""
    return sum(tensor.numel for tensor in weight_inventory(arch))


def active_parameter_count(arch: Architecture) -> int:
    """Return the parameters that one token uses.

    That is every tensor except the routed experts, plus num_experts_per_token of the
    routed experts in each MoE layer. The router, the embedding and an untied lm_head
    count in full.
    """
    return sum(_active_numel(tensor, arch) for tensor in weight_inventory(arch))


def _active_numel(tensor: WeightTensor, arch: Architecture) -> int:
    if not tensor.is_routed_expert:
        return tensor.numel
    assert arch.moe is not None
    return tensor.numel // arch.moe.num_experts * arch.moe.num_experts_per_token


def routed_expert_bytes_per_expert(arch: Architecture, weight_dtype: WeightDtype) -> int:
    """Return the bytes of one whole routed expert of one MoE layer, or 0 for a dense model.

    That is its gate, up and down projections unsharded, with their fp8 block scales when
    the checkpoint is fp8. Every MoE layer's experts have the same shapes.
    """
    if arch.moe is None:
        return 0
    first_moe_layer = next(
        layer for layer in range(arch.num_hidden_layers) if is_moe_layer(arch, layer)
    )
    layer_bytes = sum(
        _tensor_bytes(tensor, tensor.shape, arch, weight_dtype)
        for tensor in _layer_tensors(arch, first_moe_layer)
        if tensor.is_routed_expert
    )
    # Each expert's matrices carry their own scales, so the division is exact.
    return layer_bytes // arch.moe.num_experts


def kv_cache_elements_per_token_per_layer(arch: Architecture) -> int:
    """Return the KV-cache elements that one token adds to one layer, unsharded.

    GQA caches a key and a value per KV head. MLA caches one latent vector of
    kv_lora_rank + qk_rope_head_dim elements that all heads share.
    """
    if arch.mla is not None:
        return arch.mla.kv_lora_rank + arch.mla.qk_rope_head_dim
    return 2 * arch.num_key_value_heads * arch.head_dim


def kv_bytes_per_token(arch: Architecture, kv_dtype_bytes: int = 2) -> int:
    """Return the KV-cache bytes that one token adds over all layers, unsharded."""
    return kv_cache_elements_per_token_per_layer(arch) * arch.num_hidden_layers * kv_dtype_bytes


def total_weight_bytes(arch: Architecture, weight_dtype: WeightDtype) -> int:
    """Return the bytes of all weights of one unsharded copy of the model.

    The vocabulary is not padded here, unlike the per-GPU bytes of parallel_layout.
    """
    return sum(
        _tensor_bytes(tensor, tensor.shape, arch, weight_dtype)
        for tensor in weight_inventory(arch)
    )


# ---------------------------------------------------------------------------------------
# Per-GPU shards
# ---------------------------------------------------------------------------------------


def padded_vocab_size(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_PADDING) * VOCAB_PADDING


def shard_shape(tensor: WeightTensor, tp: int) -> tuple[int, ...]:
    """Return the shape of the slice of ``tensor`` that one of ``tp`` TP ranks holds.

    Assumes a layout that parallel_layout accepts, so that every split is exact.
    """
    if tensor.sharding == "replicated":
        return tensor.shape

    axis = _sharded_axis(tensor)
    size = tensor.shape[axis]
    if tensor.sharding == "vocab":
        # vLLM allocates the padded vocabulary even at tp=1.
        rank_size = -(-padded_vocab_size(size) // tp)
    else:
        units = size // tensor.shard_granule
        # max(1, ...) keeps one whole KV head per rank when tp exceeds the head count.
        rank_size = max(1, units // tp) * tensor.shard_granule
    return tensor.shape[:axis] + (rank_size,) + tensor.shape[axis + 1 :]


def _sharded_axis(tensor: WeightTensor) -> int:
    if tensor.sharding == "vocab":
        return 0
    if tensor.sharding == "row":
        return len(tensor.shape) - 1
    # Column-parallel weights split their output rows, and their biases the only axis.
    return max(0, len(tensor.shape) - 2)


def tensor_bytes(
    tensor: WeightTensor, arch: Architecture, weight_dtype: WeightDtype, tp: int = 1
) -> int:
    """Return the bytes of the slice of ``tensor`` that one of ``tp`` TP ranks holds.

    bfloat16 and float16 take 2 bytes per element. With fp8, quantizable linear weights
    take 1 byte per element plus float32 scales, while embeddings, lm_head, norms,
    biases and routers stay at 2 bytes.
    """
    return _tensor_bytes(tensor, shard_shape(tensor, tp), arch, weight_dtype)


def _tensor_bytes(
    tensor: WeightTensor, shape: tuple[int, ...], arch: Architecture, weight_dtype: WeightDtype
) -> int:
    numel = math.prod(shape)
    if weight_dtype != "fp8":
        return numel * DTYPE_BYTES[weight_dtype]
    if not tensor.is_quantizable:
        return numel * UNQUANTIZED_WEIGHT_BYTES

    rows, columns = shape[-2], shape[-1]
    num_matrices = math.prod(shape[:-2])
    if arch.fp8_weight_block_size is None:
        # One per-tensor scale per matrix.
        scales_per_matrix = 1
    else:
        block_rows, block_columns = arch.fp8_weight_block_size
        scales_per_matrix = -(-rows // block_rows) * -(-columns // block_columns)
    return numel * DTYPE_BYTES["fp8"] + num_matrices * scales_per_matrix * FP8_SCALE_BYTES


def split_layers(num_hidden_layers: int, pp: int) -> tuple[tuple[int, int], ...]:
    """Return the (start, end) decoder-layer range of each of ``pp`` pipeline stages.

    This follows get_pp_indices in vllm/distributed/utils.py when
    VLLM_PP_LAYER_PARTITION is unset. Every stage gets num_hidden_layers // pp layers.
    The remainder adds one layer each to the stages counted back from the second-to-last
    one. The last stage, which also runs the final norm and lm_head, therefore keeps the
    base count.
    """
    base, remainder = divmod(num_hidden_layers, pp)
    counts = [base] * pp
    for offset in range(2, remainder + 2):
        counts[-offset] += 1

    ranges = []
    start = 0
    for count in counts:
        ranges.append((start, start + count))
        start += count
    return tuple(ranges)


@dataclasses.dataclass(frozen=True)
class _RankCosts:
    """Per-GPU weight bytes and linear FLOPs at one tp, grouped by where they live."""

    layer_weight_bytes: tuple[int, ...]
    layer_routed_expert_bytes: tuple[int, ...]
    layer_linear_flops: tuple[int, ...]
    embedding_bytes: int
    # The final norm and an untied lm_head.
    output_weight_bytes: int
    # lm_head, or the tied embedding used as the output head.
    output_linear_flops: int


@functools.lru_cache(maxsize=256)
def _rank_costs(arch: Architecture, weight_dtype: WeightDtype, tp: int) -> _RankCosts:
    num_layers = arch.num_hidden_layers
    layer_weight_bytes = [0] * num_layers
    layer_routed_expert_bytes = [0] * num_layers
    layer_linear_flops = [0] * num_layers
    embedding_bytes = 0
    output_weight_bytes = 0
    output_linear_flops = 0

    for tensor in weight_inventory(arch):
        shape = shard_shape(tensor, tp)
        size_bytes = _tensor_bytes(tensor, shape, arch, weight_dtype)
        flops = 0
        if tensor.is_matmul:
            rank_tensor = dataclasses.replace(tensor, shape=shape)
            flops = 2 * _active_numel(rank_tensor, arch)

        if tensor.placement == "decoder_layer":
            assert tensor.layer is not None
            layer_weight_bytes[tensor.layer] += size_bytes
            layer_linear_flops[tensor.layer] += flops
            if tensor.is_routed_expert:
                layer_routed_expert_bytes[tensor.layer] += size_bytes
        elif tensor.placement == "first_stage":
            embedding_bytes += size_bytes
            if arch.tie_word_embeddings:
                # The output head multiplies by the embedding's vocab-parallel slice.
                output_linear_flops += 2 * math.prod(shape)
        else:
            output_weight_bytes += size_bytes
            output_linear_flops += flops

    return _RankCosts(
        layer_weight_bytes=tuple(layer_weight_bytes),
        layer_routed_expert_bytes=tuple(layer_routed_expert_bytes),
        layer_linear_flops=tuple(layer_linear_flops),
        embedding_bytes=embedding_bytes,
        output_weight_bytes=output_weight_bytes,
        output_linear_flops=output_linear_flops,
    )


def parallel_layout(model: ModelSpec, tp: int, pp: int) -> ParallelLayout:
    """Split one model replica over tp x pp GPUs the way vLLM does.

    Returns an invalid layout with a one-sentence reason when vLLM would reject the
    combination. Otherwise the layout has one StageShard per pipeline stage.
    """
    reason = layout_problem(model, tp, pp)
    if reason is not None:
        return ParallelLayout(tp=tp, pp=pp, valid=False, reason=reason, stages=())

    arch = model.architecture
    costs = _rank_costs(arch, model.weight_dtype, tp)
    kv_per_layer = _kv_bytes_per_token_per_layer_per_gpu(model, tp)
    attention_per_layer = _attention_flops_per_layer_per_gpu(arch, tp)
    allreduce_per_layer = 2 * arch.hidden_size * ACTIVATION_BYTES if tp > 1 else 0
    # NOTE: allreduce_bytes_per_token leaves out the all-reduce after the vocab-parallel
    # embedding (hidden_size * 2 bytes per token on the first stage) and the gather of
    # the logits on the last stage.

    stages = []
    ranges = split_layers(arch.num_hidden_layers, pp)
    for stage_index, (start, end) in enumerate(ranges):
        is_first = stage_index == 0
        is_last = stage_index == pp - 1
        layers = range(start, end)

        weight_bytes = sum(costs.layer_weight_bytes[start:end])
        linear_flops = sum(costs.layer_linear_flops[start:end])
        if is_first:
            weight_bytes += costs.embedding_bytes
        if is_last:
            weight_bytes += costs.output_weight_bytes
            linear_flops += costs.output_linear_flops
        if is_last and not is_first and arch.tie_word_embeddings:
            # vLLM also allocates the tied embedding on the last stage for lm_head.
            weight_bytes += costs.embedding_bytes

        num_layers = end - start
        stages.append(
            StageShard(
                start_layer=start,
                end_layer=end,
                num_layers=num_layers,
                num_moe_layers=sum(1 for layer in layers if is_moe_layer(arch, layer)),
                weight_bytes=weight_bytes,
                routed_expert_weight_bytes=sum(costs.layer_routed_expert_bytes[start:end]),
                kv_bytes_per_token=kv_per_layer * num_layers,
                linear_flops_per_token=linear_flops,
                attention_flops_per_token_per_context_token=attention_per_layer * num_layers,
                allreduce_bytes_per_token=allreduce_per_layer * num_layers,
                pp_send_bytes_per_token=(
                    0 if is_last else PP_SEND_TENSORS * arch.hidden_size * ACTIVATION_BYTES
                ),
            )
        )
    return ParallelLayout(tp=tp, pp=pp, valid=True, reason=None, stages=tuple(stages))


def _kv_bytes_per_token_per_layer_per_gpu(model: ModelSpec, tp: int) -> int:
    arch = model.architecture
    dtype_bytes = KV_CACHE_DTYPE_BYTES[model.kv_cache_dtype]
    if arch.mla is not None:
        # Every TP rank caches the whole latent because all heads read it.
        return kv_cache_elements_per_token_per_layer(arch) * dtype_bytes
    kv_heads_per_rank = max(1, arch.num_key_value_heads // tp)
    return 2 * kv_heads_per_rank * arch.head_dim * dtype_bytes


def _attention_flops_per_layer_per_gpu(arch: Architecture, tp: int) -> int:
    heads_per_rank = arch.num_attention_heads // tp
    if arch.mla is None:
        # q.k and p.v: 2 FLOPs per multiply-add, head_dim multiply-adds each.
        return 4 * heads_per_rank * arch.head_dim
    # vLLM decodes MLA in the absorbed form: each head scores against the cached
    # latent plus its rope part, then reads the kv_lora_rank latent values.
    mla = arch.mla
    return 2 * heads_per_rank * (mla.kv_lora_rank + mla.qk_rope_head_dim) + (
        2 * heads_per_rank * mla.kv_lora_rank
    )


# ---------------------------------------------------------------------------------------
# Layout validity
# ---------------------------------------------------------------------------------------


def layout_problem(model: ModelSpec, tp: int, pp: int) -> str | None:
    """Return why vLLM cannot run ``model`` at this tp and pp, or None if it can."""
    for name, value in (("tp", tp), ("pp", pp)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{name} must be a positive integer, got {value!r}"

    arch = model.architecture
    if arch.num_attention_heads % tp != 0:
        return f"tp={tp} does not divide num_attention_heads={arch.num_attention_heads}"
    kv_heads = arch.num_key_value_heads
    if arch.mla is None and kv_heads % tp != 0 and tp % kv_heads != 0:
        return (
            f"tp={tp} does not divide num_key_value_heads={kv_heads}, and "
            f"num_key_value_heads={kv_heads} does not divide tp={tp}"
        )
    if pp > arch.num_hidden_layers:
        return f"pp={pp} exceeds num_hidden_layers={arch.num_hidden_layers}"

    has_dense_mlp = any(
        not is_moe_layer(arch, layer) for layer in range(arch.num_hidden_layers)
    )
    if has_dense_mlp and arch.intermediate_size % tp != 0:
        return f"tp={tp} does not divide intermediate_size={arch.intermediate_size}"
    moe = arch.moe
    if moe is not None and moe.moe_intermediate_size % tp != 0:
        return f"tp={tp} does not divide moe_intermediate_size={moe.moe_intermediate_size}"
    if moe is not None and moe.shared_expert_intermediate_size % tp != 0:
        return (
            f"tp={tp} does not divide the shared-expert intermediate size "
            f"{moe.shared_expert_intermediate_size}"
        )
    padded_vocab = padded_vocab_size(arch.vocab_size)
    if padded_vocab % tp != 0:
        return (
            f"tp={tp} does not divide the vocabulary size {arch.vocab_size} padded to a "
            f"multiple of {VOCAB_PADDING} ({padded_vocab})"
        )

    if model.weight_dtype == "fp8" and arch.fp8_weight_block_size is not None and tp > 1:
        return _fp8_block_problem(arch, tp, has_dense_mlp)
    return None


def _fp8_block_problem(arch: Architecture, tp: int, has_dense_mlp: bool) -> str | None:
    """Apply vLLM's block-shape check to every TP-split fp8 weight.

    vLLM checks this in validate_fp8_block_shape (quantization/utils/fp8_utils.py) and
    in its fp8 fused-MoE method. Each rank's output rows of a column-parallel weight must
    be a multiple of the block rows. Each rank's input columns of a row-parallel weight
    must be a multiple of the block columns. MLPs split their intermediate size both
    ways, so it must be a multiple of both.
    """
    assert arch.fp8_weight_block_size is not None
    block_rows, block_columns = arch.fp8_weight_block_size
    if block_rows == block_columns:
        block_label = str(block_rows)
    else:
        block_label = f"{block_rows}x{block_columns}"

    named_sizes = []
    if arch.moe is not None:
        named_sizes.append(("moe_intermediate_size", arch.moe.moe_intermediate_size))
    if has_dense_mlp:
        named_sizes.append(("intermediate_size", arch.intermediate_size))
    for name, size in named_sizes:
        per_rank = size // tp
        if per_rank % block_rows != 0 or per_rank % block_columns != 0:
            return (
                f"with fp8 block quantization, {name} / tp = {size} / {tp} = {per_rank} "
                f"is not a multiple of the block size {block_label}"
            )

    for tensor in weight_inventory(arch):
        if not tensor.is_quantizable or tensor.sharding not in ("column", "row"):
            continue
        per_rank = shard_shape(tensor, tp)[_sharded_axis(tensor)]
        if tensor.sharding == "column":
            side, block_size = "output rows", block_rows
        else:
            side, block_size = "input columns", block_columns
        if per_rank % block_size != 0:
            return (
                f"with fp8 block quantization, {tensor.name} has {per_rank} {side} per "
                f"rank at tp={tp}, which is not a multiple of the block size {block_size}"
            )
    return None


# ---------------------------------------------------------------------------------------
# Tables for the vectorized cost model
# ---------------------------------------------------------------------------------------

def parallel_tables(
    model: ModelSpec, tp_values: Sequence[int], pp_values: Sequence[int]
) -> ParallelTables:
    """Compute parallel_layout for every (tp, pp) pair and stack the results.

    See ParallelTables for the array shapes.
    """
    tp_values = tuple(tp_values)
    pp_values = tuple(pp_values)
    if not tp_values or not pp_values:
        raise ValueError("parallel_tables needs at least one tp value and one pp value")

    # Non-integer pp values give invalid layouts and add no stages.
    num_stages = max(
        (pp for pp in pp_values if isinstance(pp, int) and not isinstance(pp, bool)), default=1
    )
    # A layout with more stages than layers is invalid and adds no stages, so the stage
    # axis stops at the layer count; a GPU budget of 2^16 would otherwise allocate tables
    # of 2^15 stages.
    num_stages = max(1, min(num_stages, model.architecture.num_hidden_layers))
    shape = (len(tp_values), len(pp_values), num_stages)
    stages = {
        name: np.zeros(shape, dtype=np.int64 if name in _INTEGER_STAGE_FIELDS else np.float64)
        for name in STAGE_FIELDS
    }
    valid = np.zeros(shape[:2], dtype=bool)
    reasons: list[list[str | None]] = []

    for i_tp, tp in enumerate(tp_values):
        row_reasons = []
        for i_pp, pp in enumerate(pp_values):
            layout = parallel_layout(model, tp, pp)
            valid[i_tp, i_pp] = layout.valid
            row_reasons.append(layout.reason)
            for stage_index, stage in enumerate(layout.stages):
                for name in STAGE_FIELDS:
                    stages[name][i_tp, i_pp, stage_index] = getattr(stage, name)
        reasons.append(row_reasons)

    for array in (valid, *stages.values()):
        array.flags.writeable = False
    return ParallelTables(
        tp_values=np.asarray(tp_values, dtype=np.int64),
        pp_values=np.asarray(pp_values, dtype=np.int64),
        valid=valid,
        reasons=reasons,
        **stages,
    )
