"""Parse a Hugging Face ``config.json`` into an :class:`~kvplan.spec.types.Architecture`.

Supported architectures (the first entry of the config's ``architectures`` list):

* ``LlamaForCausalLM``: dense decoder with grouped-query attention (GQA).
* ``Qwen2ForCausalLM``: as Llama, with biases on the q, k and v projections.
* ``Qwen3ForCausalLM``: as Llama, with an explicit ``head_dim`` and a per-head RMSNorm on
  q and k.
* ``Qwen3MoeForCausalLM``: Qwen3 attention with mixture-of-experts (MoE) MLPs.
* ``MixtralForCausalLM``: Llama attention with MoE MLPs in every layer.
* ``DeepseekV2ForCausalLM`` and ``DeepseekV3ForCausalLM``: multi-head latent attention
  (MLA) with MoE MLPs and shared experts.

Defaults follow the Hugging Face config classes of these models: a missing ``head_dim``
is ``hidden_size // num_attention_heads``, a missing ``num_key_value_heads`` is
``num_attention_heads`` and a missing ``tie_word_embeddings`` is false.
"""

from __future__ import annotations

from typing import Any

from kvplan.spec.errors import ValueProblem
from kvplan.spec.types import Architecture, MLAConfig, MoEConfig

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "MixtralForCausalLM",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
)

_DEEPSEEK_ARCHITECTURES = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")


def parse_hf_config(config: dict[str, Any], *, source: str) -> Architecture:
    """Validate a Hugging Face ``config.json`` and convert it to an Architecture.

    ``source`` names the config (usually its path) in error messages. Raises
    :class:`ValueProblem` naming the offending field when the architecture is not
    supported, a required field is missing, or a size is not a positive integer.
    """
    if not isinstance(config, dict):
        raise ValueProblem(
            f"invalid config {source}: expected a JSON object, got {type(config).__name__}"
        )

    hf_architecture = _read_architecture(config, source)
    if hf_architecture in _DEEPSEEK_ARCHITECTURES:
        return _parse_deepseek(config, hf_architecture, source)
    return _parse_gqa_model(config, hf_architecture, source)


def _read_architecture(config: dict[str, Any], source: str) -> str:
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    architectures = config.get("architectures")
    if architectures is None:
        raise ValueProblem(
            f"missing required field 'architectures' in {source}; "
            f"expected a list naming one of: {supported}",
            field="architectures",
        )
    if (
        not isinstance(architectures, list)
        or not architectures
        or not isinstance(architectures[0], str)
    ):
        raise ValueProblem(
            f"invalid 'architectures' in {source}: expected a non-empty list of names, "
            f"got {architectures!r}",
            field="architectures",
        )

    hf_architecture = architectures[0]
    if hf_architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueProblem(
            f"unsupported architecture {hf_architecture!r} in {source}; "
            f"supported architectures: {supported}",
            field="architectures",
        )
    return hf_architecture


def _parse_gqa_model(config: dict[str, Any], hf_architecture: str, source: str) -> Architecture:
    """Parse the Llama, Qwen2, Qwen3, Qwen3-MoE and Mixtral families."""
    hidden_size = _required_int(config, "hidden_size", source)
    num_hidden_layers = _required_int(config, "num_hidden_layers", source)
    num_attention_heads = _required_int(config, "num_attention_heads", source)
    num_key_value_heads = _optional_int(config, "num_key_value_heads", source, num_attention_heads)
    head_dim = _read_head_dim(config, hidden_size, num_attention_heads, source)
    intermediate_size = _required_int(config, "intermediate_size", source)
    vocab_size = _required_int(config, "vocab_size", source)

    if num_attention_heads % num_key_value_heads != 0:
        raise ValueProblem(
            f"invalid num_key_value_heads in {source}: num_key_value_heads="
            f"{num_key_value_heads} does not divide num_attention_heads={num_attention_heads}",
            field="num_key_value_heads",
        )

    # Qwen2 always has q, k and v biases and its config has no attention_bias field.
    # Llama, Qwen3 and Mixtral read attention_bias as a bias on q, k, v and o_proj, which
    # Architecture cannot express, so true is rejected for them.
    attention_bias = hf_architecture == "Qwen2ForCausalLM"
    if not attention_bias and _optional_bool(config, "attention_bias", source, False):
        raise ValueProblem(
            f"unsupported attention_bias=true for {hf_architecture} in {source}; "
            "only configs without attention biases are supported for this architecture",
            field="attention_bias",
        )
    if _optional_bool(config, "mlp_bias", source, False):
        raise ValueProblem(
            f"unsupported mlp_bias=true in {source}; only MLPs without biases are supported",
            field="mlp_bias",
        )

    if hf_architecture == "Qwen3MoeForCausalLM":
        moe = _parse_qwen3_moe(config, num_hidden_layers, source)
    elif hf_architecture == "MixtralForCausalLM":
        moe = _parse_mixtral_moe(config, intermediate_size, source)
    else:
        moe = None

    return Architecture(
        hf_architecture=hf_architecture,
        model_type=_model_type(config, source),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        tie_word_embeddings=_optional_bool(config, "tie_word_embeddings", source, False),
        attention_bias=attention_bias,
        qk_norm=hf_architecture in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"),
        moe=moe,
        mla=None,
        fp8_weight_block_size=_read_fp8_block_size(config, source),
    )


def _parse_qwen3_moe(config: dict[str, Any], num_hidden_layers: int, source: str) -> MoEConfig:
    num_experts = _required_int(config, "num_experts", source)
    num_experts_per_token = _required_int(config, "num_experts_per_tok", source)
    moe_intermediate_size = _required_int(config, "moe_intermediate_size", source)
    decoder_sparse_step = _optional_int(config, "decoder_sparse_step", source, 1)
    mlp_only_layers = _read_layer_indices(config, "mlp_only_layers", num_hidden_layers, source)
    _check_experts_per_token(num_experts, num_experts_per_token, source)

    # A layer is dense when listed in mlp_only_layers or when (index + 1) is not a
    # multiple of decoder_sparse_step, as in Hugging Face's Qwen3MoeDecoderLayer.
    dense_layer_indices = tuple(
        index
        for index in range(num_hidden_layers)
        if index in mlp_only_layers or (index + 1) % decoder_sparse_step != 0
    )
    return MoEConfig(
        num_experts=num_experts,
        num_experts_per_token=num_experts_per_token,
        moe_intermediate_size=moe_intermediate_size,
        num_shared_experts=0,
        shared_expert_intermediate_size=0,
        dense_layer_indices=dense_layer_indices,
    )


def _parse_mixtral_moe(config: dict[str, Any], intermediate_size: int, source: str) -> MoEConfig:
    num_experts = _required_int(config, "num_local_experts", source)
    num_experts_per_token = _required_int(config, "num_experts_per_tok", source)
    _check_experts_per_token(num_experts, num_experts_per_token, source)

    # Every Mixtral layer is MoE, and intermediate_size is the size of one expert.
    return MoEConfig(
        num_experts=num_experts,
        num_experts_per_token=num_experts_per_token,
        moe_intermediate_size=intermediate_size,
        num_shared_experts=0,
        shared_expert_intermediate_size=0,
        dense_layer_indices=(),
    )


def _parse_deepseek(config: dict[str, Any], hf_architecture: str, source: str) -> Architecture:
    """Parse DeepSeek-V2/V3/R1: MLA attention and MoE with shared experts.

    The multi-token-prediction layers (``num_nextn_predict_layers``) are ignored because
    vLLM loads them only for speculative decoding.
    """
    hidden_size = _required_int(config, "hidden_size", source)
    num_hidden_layers = _required_int(config, "num_hidden_layers", source)
    num_attention_heads = _required_int(config, "num_attention_heads", source)
    num_key_value_heads = _optional_int(config, "num_key_value_heads", source, num_attention_heads)
    intermediate_size = _required_int(config, "intermediate_size", source)
    vocab_size = _required_int(config, "vocab_size", source)

    q_lora_rank = _optional_int(config, "q_lora_rank", source, None)
    mla = MLAConfig(
        q_lora_rank=q_lora_rank,
        kv_lora_rank=_required_int(config, "kv_lora_rank", source),
        qk_nope_head_dim=_required_int(config, "qk_nope_head_dim", source),
        qk_rope_head_dim=_required_int(config, "qk_rope_head_dim", source),
        v_head_dim=_required_int(config, "v_head_dim", source),
    )

    if config.get("n_routed_experts") is None:
        moe = None
    else:
        moe = _parse_deepseek_moe(config, num_hidden_layers, source)

    if _optional_bool(config, "attention_bias", source, False):
        raise ValueProblem(
            f"unsupported attention_bias=true for {hf_architecture} in {source}; "
            "only MLA without projection biases is supported",
            field="attention_bias",
        )

    return Architecture(
        hf_architecture=hf_architecture,
        model_type=_model_type(config, source),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        # MLA's query and key head size. Values use v_head_dim instead.
        head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        tie_word_embeddings=_optional_bool(config, "tie_word_embeddings", source, False),
        attention_bias=False,
        qk_norm=False,
        moe=moe,
        mla=mla,
        fp8_weight_block_size=_read_fp8_block_size(config, source),
    )


def _parse_deepseek_moe(config: dict[str, Any], num_hidden_layers: int, source: str) -> MoEConfig:
    num_experts = _required_int(config, "n_routed_experts", source)
    num_experts_per_token = _required_int(config, "num_experts_per_tok", source)
    moe_intermediate_size = _required_int(config, "moe_intermediate_size", source)
    num_shared_experts = _optional_int(config, "n_shared_experts", source, 0, allow_zero=True)
    first_k_dense_replace = _optional_int(
        config, "first_k_dense_replace", source, 0, allow_zero=True
    )
    moe_layer_freq = _optional_int(config, "moe_layer_freq", source, 1)
    _check_experts_per_token(num_experts, num_experts_per_token, source)

    # vLLM's DeepseekV2DecoderLayer builds an MoE MLP when the layer index is at least
    # first_k_dense_replace and a multiple of moe_layer_freq, and a dense MLP otherwise.
    dense_layer_indices = tuple(
        index
        for index in range(num_hidden_layers)
        if index < first_k_dense_replace or index % moe_layer_freq != 0
    )
    return MoEConfig(
        num_experts=num_experts,
        num_experts_per_token=num_experts_per_token,
        moe_intermediate_size=moe_intermediate_size,
        num_shared_experts=num_shared_experts,
        # vLLM builds the shared experts as one MLP of this width.
        shared_expert_intermediate_size=num_shared_experts * moe_intermediate_size,
        dense_layer_indices=dense_layer_indices,
    )


def _read_head_dim(
    config: dict[str, Any], hidden_size: int, num_attention_heads: int, source: str
) -> int:
    if config.get("head_dim") is not None:
        return _required_int(config, "head_dim", source)
    if hidden_size % num_attention_heads != 0:
        raise ValueProblem(
            f"missing required field 'head_dim' in {source}: hidden_size={hidden_size} is "
            f"not divisible by num_attention_heads={num_attention_heads}, so the head size "
            "must be given explicitly",
            field="head_dim",
        )
    return hidden_size // num_attention_heads


def _read_fp8_block_size(config: dict[str, Any], source: str) -> tuple[int, int] | None:
    """Return the (rows, columns) scale block of a block-quantized FP8 checkpoint.

    Returns None for unquantized checkpoints and for FP8 checkpoints with one scale per
    tensor. Other quantization methods are rejected because their weight sizes differ.
    """
    quantization = config.get("quantization_config")
    if quantization is None:
        return None
    field = "quantization_config"
    if not isinstance(quantization, dict):
        raise ValueProblem(
            f"invalid {field} in {source}: expected an object, got {quantization!r}",
            field=field,
        )

    method = quantization.get("quant_method")
    if method != "fp8":
        raise ValueProblem(
            f"unsupported quantization method {method!r} in {source}; only 'fp8' "
            "checkpoints and unquantized checkpoints are supported",
            field=f"{field}.quant_method",
        )

    block_size = quantization.get("weight_block_size")
    if block_size is None:
        return None
    if (
        not isinstance(block_size, list)
        or len(block_size) != 2
        or not all(_is_positive_int(value) for value in block_size)
    ):
        raise ValueProblem(
            f"invalid {field}.weight_block_size in {source}: expected two positive "
            f"integers such as [128, 128], got {block_size!r}",
            field=f"{field}.weight_block_size",
        )
    return (block_size[0], block_size[1])


def _read_layer_indices(
    config: dict[str, Any], name: str, num_hidden_layers: int, source: str
) -> frozenset[int]:
    value = config.get(name)
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(
        _is_int(index) and 0 <= index < num_hidden_layers for index in value
    ):
        raise ValueProblem(
            f"invalid {name} in {source}: expected a list of layer indices from 0 to "
            f"{num_hidden_layers - 1}, got {value!r}",
            field=name,
        )
    return frozenset(value)


def _check_experts_per_token(num_experts: int, num_experts_per_token: int, source: str) -> None:
    if num_experts_per_token > num_experts:
        raise ValueProblem(
            f"invalid num_experts_per_tok in {source}: {num_experts_per_token} is more than "
            f"the {num_experts} experts of a layer",
            field="num_experts_per_tok",
        )


def _model_type(config: dict[str, Any], source: str) -> str:
    model_type = config.get("model_type")
    if model_type is None:
        raise ValueProblem(
            f"missing required field 'model_type' in {source}", field="model_type"
        )
    if not isinstance(model_type, str):
        raise ValueProblem(
            f"invalid model_type in {source}: expected a string, got {model_type!r}",
            field="model_type",
        )
    return model_type


def _is_int(value: Any) -> bool:
    # JSON true/false load as bool, which is a subclass of int in Python.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _required_int(config: dict[str, Any], name: str, source: str) -> int:
    if name not in config or config[name] is None:
        raise ValueProblem(f"missing required field {name!r} in {source}", field=name)
    return _checked_int(config[name], name, source, allow_zero=False)


def _optional_int(
    config: dict[str, Any],
    name: str,
    source: str,
    default: int | None,
    *,
    allow_zero: bool = False,
) -> int | None:
    if config.get(name) is None:
        return default
    return _checked_int(config[name], name, source, allow_zero=allow_zero)


def _checked_int(value: Any, name: str, source: str, *, allow_zero: bool) -> int:
    lowest = 0 if allow_zero else 1
    if not _is_int(value) or value < lowest:
        expected = "a non-negative integer" if allow_zero else "a positive integer"
        raise ValueProblem(
            f"invalid {name} in {source}: expected {expected}, got {value!r}", field=name
        )
    return value


def _optional_bool(config: dict[str, Any], name: str, source: str, default: bool) -> bool:
    value = config.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueProblem(
            f"invalid {name} in {source}: expected true or false, got {value!r}", field=name
        )
    return value
