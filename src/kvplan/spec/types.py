"""Frozen dataclasses produced by the spec loader and consumed by the cost model and optimizer.

Every quantity is stored in SI base units (bytes, seconds, FLOP/s, bytes/s) after the
loader has parsed unit strings such as ``143771MiB`` or ``250ms``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

WeightDtype = Literal["bfloat16", "float16", "fp8"]
KVCacheDtype = Literal["auto", "fp8"]
ArrivalMode = Literal["batch", "rate", "concurrency"]
LatencyMetric = Literal["ttft", "tpot", "e2e"]
LatencyStatistic = Literal["mean", "p50", "p90", "p99"]
ObjectiveName = Literal[
    "makespan_s",
    "output_tokens_per_s",
    "output_tokens_per_s_per_gpu",
    "cost_per_million_tokens",
]

# Bytes per element of each supported dtype.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "fp8": 1}


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-experts block of a decoder layer."""

    num_experts: int
    num_experts_per_token: int
    moe_intermediate_size: int
    # Shared experts are always active (DeepSeek-V3/R1); 0 for Qwen3-MoE and Mixtral.
    num_shared_experts: int
    shared_expert_intermediate_size: int
    # Indices of layers whose MLP is dense (DeepSeek's first_k_dense_replace, Qwen3-MoE's
    # mlp_only_layers); every other layer holds the experts.
    dense_layer_indices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3/R1)."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Transformer architecture facts read from a Hugging Face ``config.json``."""

    hf_architecture: str
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    # Biases on the q, k and v projections (Qwen2).
    attention_bias: bool
    # Per-head RMSNorm on q and k (Qwen3).
    qk_norm: bool
    moe: MoEConfig | None
    mla: MLAConfig | None
    # Block-quantized FP8 checkpoint (DeepSeek-V3/R1): (rows, columns) of one scale block.
    fp8_weight_block_size: tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    config_path: str
    architecture: Architecture
    weight_dtype: WeightDtype
    kv_cache_dtype: KVCacheDtype
    # Hugging Face Hub repository that ``kvplan launch`` passes to ``vllm serve``, or None
    # when the spec names none.
    hf_repo: str | None = None


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """One GPU node type; every GPU in the node is identical."""

    name: str
    gpu_name: str
    gpus_per_node: int
    gpu_memory_bytes: float
    hbm_bandwidth_bytes_per_s: float
    # Dense tensor-core peak per dtype name ("bfloat16", "float16", "fp8").
    peak_flops_per_s: dict[str, float]
    # Per GPU, one direction.
    nvlink_bandwidth_bytes_per_s: float
    nvlink_latency_s: float
    internode_bandwidth_bytes_per_s: float
    internode_latency_s: float
    # Achieved fractions of the peaks above.
    hbm_bandwidth_efficiency: float
    compute_efficiency: float
    fp8_compute_efficiency: float
    allreduce_bandwidth_efficiency: float
    price_per_gpu_hour: float | None


@dataclasses.dataclass(frozen=True)
class LengthDistribution:
    """A token-length distribution discretized to at most ``DISTRIBUTION_BINS`` points."""

    values: tuple[float, ...]
    probabilities: tuple[float, ...]
    max_tokens: int
    # Human-readable origin, for example "lognormal(median=4500, sigma=0.7), max 16384".
    description: str


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    name: str
    prompt_tokens: LengthDistribution
    output_tokens: LengthDistribution
    arrival_mode: ArrivalMode
    # Exactly one of the next three is set, matching ``arrival_mode``.
    requests: int | None
    arrival_rate_per_s: float | None
    concurrency: int | None


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """vLLM engine settings held fixed during the search, with vLLM v1 defaults."""

    gpu_memory_utilization: float = 0.90
    # None means vLLM's default for the attention backend: 16, or 64 for MLA on Hopper.
    block_size: int | None = None
    # Fraction of KV blocks kept free at admission.
    watermark: float = 0.0
    # Newer vLLM can require the whole prompt to fit in free KV blocks before admission.
    require_full_prompt_admission: bool = False
    # Batches in flight under pipeline parallelism; None means pp_size.
    pp_batches_in_flight: int | None = None
    # Overrides the computed KV cache size, in tokens per replica. vLLM's
    # --kv-cache-memory-bytes sets it in bytes per GPU instead.
    kv_cache_tokens: int | None = None
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    async_scheduling: bool = False
    # Engine constants; defaults and sources live in kvplan.costmodel.constants.
    cpu_overhead_per_step_s: float | None = None
    cpu_overhead_per_request_s: float | None = None
    kernel_overhead_per_layer_s: float | None = None
    non_torch_memory_bytes: float | None = None
    cuda_graph_memory_bytes: float | None = None


@dataclasses.dataclass(frozen=True)
class SLABound:
    metric: LatencyMetric
    statistic: LatencyStatistic
    max_s: float


@dataclasses.dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclasses.dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    step: float | None = None


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Candidate values of each searched setting; a tuple lists choices, a range spans them.

    ``None`` for dp, tp or pp means every power of two up to the GPU budget.
    """

    gpu_budget: int
    dp: tuple[int, ...] | None = None
    tp: tuple[int, ...] | None = None
    pp: tuple[int, ...] | None = None
    max_num_seqs: tuple[int, ...] | IntRange = (256, 512, 1024, 2048, 4096)
    max_num_batched_tokens: tuple[int, ...] | IntRange = (8192,)
    gpu_memory_utilization: tuple[float, ...] | FloatRange = (0.90,)
    # Settings searched only when the plan lists them; None means the plan's own setting.
    # Node types to compare, with the GPU budget of each (search.gpu_budget, or
    # hardware.nodes times the type's gpus_per_node).
    node: tuple[NodeSpec, ...] | None = None
    node_gpu_budgets: tuple[int, ...] | None = None
    kv_cache_dtype: tuple[KVCacheDtype, ...] | None = None
    watermark: tuple[float, ...] | FloatRange | None = None
    require_full_prompt_admission: tuple[bool, ...] | None = None
    enable_expert_parallel: tuple[bool, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Deployment:
    """One vLLM deployment: parallel degrees and the searched engine settings.

    The fields after ``gpu_memory_utilization`` are None unless the search varies them or
    a config sets them; None means the plan's own setting (its node, the model's KV cache
    dtype, the engine's watermark and admission rule, expert parallelism off).
    """

    dp: int
    tp: int
    pp: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    # Name of the node type, one of the plan's search.node entries or hardware.node.
    node: str | None = None
    kv_cache_dtype: KVCacheDtype | None = None
    watermark: float | None = None
    require_full_prompt_admission: bool | None = None
    # vLLM's --enable-expert-parallel: MoE experts split across the tp x dp GPUs.
    enable_expert_parallel: bool | None = None

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp

    def to_dict(self) -> dict[str, int | float | str | bool]:
        """Return the settings as a dict, leaving out the optional ones that are None."""
        values = dataclasses.asdict(self)
        return {key: value for key, value in values.items()
                if value is not None or key not in OPTIONAL_DEPLOYMENT_FIELDS}


# Deployment fields that stay None unless searched or set, in output order.
OPTIONAL_DEPLOYMENT_FIELDS = (
    "node",
    "kv_cache_dtype",
    "watermark",
    "require_full_prompt_admission",
    "enable_expert_parallel",
)


# A plan's ``deployed`` section: the deployment running now, with the settings the
# section leaves out filled from the plan's engine settings.
DeployedConfig = Deployment


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    # Path of the plan file, or "<string>" / "<dict>" when loaded from memory.
    source: str
    model: ModelSpec
    node: NodeSpec
    num_nodes: int
    engine: EngineSettings
    workload: WorkloadSpec
    sla: tuple[SLABound, ...]
    search: SearchSpace
    objective: ObjectiveName
    # The deployment running now, which ``kvplan check`` judges, or None when the plan declares none.
    deployed: DeployedConfig | None = None


DISTRIBUTION_BINS = 64
