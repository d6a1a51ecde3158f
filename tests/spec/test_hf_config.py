"""Tests of parse_hf_config on the bundled Hugging Face configs and small synthetic ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvplan.spec.errors import ValueProblem
from kvplan.spec.hf_config import SUPPORTED_ARCHITECTURES, parse_hf_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "examples" / "models" / "hf-configs"
CONFIG_NAMES = (
    "deepseek-r1-distill-llama-8b",
    "deepseek-r1-distill-qwen-14b",
    "deepseek-r1-distill-qwen-32b",
    "deepseek-r1-distill-llama-70b",
    "llama-3.1-405b",
    "deepseek-r1",
)


def load_config(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def parse_named(name: str):
    return parse_hf_config(load_config(name), source=f"{name}.json")


QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 96,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
    "attention_bias": False,
}

QWEN3_MOE_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 128,
    "intermediate_size": 384,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "decoder_sparse_step": 2,
    "mlp_only_layers": [3],
    "vocab_size": 512,
    "tie_word_embeddings": False,
}

MIXTRAL_CONFIG = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "hidden_size": 128,
    "intermediate_size": 224,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 320,
}

DEEPSEEK_V2_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "n_shared_experts": 2,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "q_lora_rank": None,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "vocab_size": 1000,
}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_parse_hf_config_real_config_parses(name):
    arch = parse_named(name)
    config = load_config(name)

    assert arch.hf_architecture == config["architectures"][0]
    assert arch.hidden_size == config["hidden_size"]
    assert arch.num_hidden_layers == config["num_hidden_layers"]
    assert arch.vocab_size == config["vocab_size"]
    assert arch.tie_word_embeddings is False


@pytest.mark.parametrize(
    ("name", "head_dim", "kv_heads"),
    [
        ("deepseek-r1-distill-llama-8b", 128, 8),
        ("deepseek-r1-distill-qwen-14b", 128, 8),
        ("deepseek-r1-distill-qwen-32b", 128, 8),
        ("deepseek-r1-distill-llama-70b", 128, 8),
        ("llama-3.1-405b", 128, 8),
    ],
)
def test_parse_hf_config_gqa_heads(name, head_dim, kv_heads):
    arch = parse_named(name)

    assert arch.head_dim == head_dim
    assert arch.num_key_value_heads == kv_heads
    assert arch.mla is None
    assert arch.moe is None


def test_parse_hf_config_qwen2_has_qkv_bias():
    arch = parse_named("deepseek-r1-distill-qwen-14b")

    assert arch.attention_bias is True
    assert arch.qk_norm is False


def test_parse_hf_config_llama_has_no_bias():
    arch = parse_named("deepseek-r1-distill-llama-8b")

    assert arch.attention_bias is False


def test_parse_hf_config_deepseek_r1_mla():
    arch = parse_named("deepseek-r1")

    assert arch.mla is not None
    assert arch.mla.q_lora_rank == 1536
    assert arch.mla.kv_lora_rank == 512
    assert arch.mla.qk_nope_head_dim == 128
    assert arch.mla.qk_rope_head_dim == 64
    assert arch.mla.v_head_dim == 128
    assert arch.head_dim == 192


def test_parse_hf_config_deepseek_r1_moe():
    arch = parse_named("deepseek-r1")

    assert arch.moe is not None
    assert arch.moe.num_experts == 256
    assert arch.moe.num_experts_per_token == 8
    assert arch.moe.moe_intermediate_size == 2048
    assert arch.moe.num_shared_experts == 1
    assert arch.moe.shared_expert_intermediate_size == 2048
    assert arch.moe.dense_layer_indices == (0, 1, 2)
    assert arch.intermediate_size == 18432


def test_parse_hf_config_deepseek_r1_fp8_block():
    arch = parse_named("deepseek-r1")

    assert arch.fp8_weight_block_size == (128, 128)


def test_parse_hf_config_unquantized_has_no_block():
    arch = parse_named("llama-3.1-405b")

    assert arch.fp8_weight_block_size is None


def test_parse_hf_config_fp8_per_tensor():
    config = dict(QWEN3_CONFIG, quantization_config={"quant_method": "fp8"})

    arch = parse_hf_config(config, source="qwen3-fp8.json")

    assert arch.fp8_weight_block_size is None


def test_parse_hf_config_missing_head_dim_defaults():
    config = load_config("deepseek-r1-distill-llama-8b")
    del config["head_dim"]

    arch = parse_hf_config(config, source="llama.json")

    assert arch.head_dim == 4096 // 32


def test_parse_hf_config_missing_kv_heads_defaults():
    config = load_config("deepseek-r1-distill-llama-8b")
    del config["num_key_value_heads"]

    arch = parse_hf_config(config, source="llama.json")

    assert arch.num_key_value_heads == 32


def test_parse_hf_config_qwen3_explicit_head_dim():
    arch = parse_hf_config(QWEN3_CONFIG, source="qwen3.json")

    assert arch.head_dim == 96
    assert arch.hidden_size // arch.num_attention_heads == 64
    assert arch.qk_norm is True
    assert arch.attention_bias is False
    assert arch.moe is None


def test_parse_hf_config_qwen3_moe_dense_layers():
    arch = parse_hf_config(QWEN3_MOE_CONFIG, source="qwen3-moe.json")

    # Layers 0 and 2 fail (index + 1) % decoder_sparse_step == 0 and layer 3 is in
    # mlp_only_layers, so only layer 1 has experts.
    assert arch.moe is not None
    assert arch.moe.dense_layer_indices == (0, 2, 3)
    assert arch.moe.num_experts == 8
    assert arch.moe.num_experts_per_token == 2
    assert arch.moe.moe_intermediate_size == 64
    assert arch.moe.num_shared_experts == 0
    assert arch.qk_norm is True


def test_parse_hf_config_mixtral_expert_size():
    arch = parse_hf_config(MIXTRAL_CONFIG, source="mixtral.json")

    assert arch.moe is not None
    assert arch.moe.moe_intermediate_size == 224
    assert arch.moe.num_experts == 4
    assert arch.moe.dense_layer_indices == ()
    assert arch.head_dim == 16


def test_parse_hf_config_deepseek_v2_without_q_lora():
    arch = parse_hf_config(DEEPSEEK_V2_CONFIG, source="deepseek-v2.json")

    assert arch.mla is not None
    assert arch.mla.q_lora_rank is None
    assert arch.moe is not None
    assert arch.moe.dense_layer_indices == (0,)
    assert arch.moe.shared_expert_intermediate_size == 128


def test_parse_hf_config_moe_layer_freq():
    config = dict(DEEPSEEK_V2_CONFIG, num_hidden_layers=6, moe_layer_freq=2)

    arch = parse_hf_config(config, source="deepseek-v2.json")

    # Layer 0 is below first_k_dense_replace, and odd layers fail index % moe_layer_freq.
    assert arch.moe is not None
    assert arch.moe.dense_layer_indices == (0, 1, 3, 5)


def test_parse_hf_config_unsupported_architecture_named():
    config = dict(QWEN3_CONFIG, architectures=["GPT2LMHeadModel"])

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="gpt2.json")

    assert "GPT2LMHeadModel" in caught.value.message
    assert caught.value.field == "architectures"
    for supported in SUPPORTED_ARCHITECTURES:
        assert supported in caught.value.message


def test_parse_hf_config_missing_architectures():
    config = dict(QWEN3_CONFIG)
    del config["architectures"]

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="qwen3.json")

    assert caught.value.field == "architectures"


@pytest.mark.parametrize(
    "field", ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
)
def test_parse_hf_config_missing_field_named(field):
    config = dict(QWEN3_CONFIG)
    del config[field]

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="qwen3.json")

    assert caught.value.field == field
    assert field in caught.value.message
    assert "missing" in caught.value.message


def test_parse_hf_config_deepseek_missing_kv_lora_rank():
    config = load_config("deepseek-r1")
    del config["kv_lora_rank"]

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="deepseek-r1.json")

    assert caught.value.field == "kv_lora_rank"


def test_parse_hf_config_deepseek_without_experts_dense():
    config = load_config("deepseek-r1")
    del config["n_routed_experts"]

    arch = parse_hf_config(config, source="deepseek-r1.json")

    assert arch.moe is None


@pytest.mark.parametrize("value", [0, -4, 4096.0, "4096", True, None])
def test_parse_hf_config_rejects_bad_hidden_size(value):
    config = dict(QWEN3_CONFIG, hidden_size=value)

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="qwen3.json")

    assert caught.value.field == "hidden_size"


def test_parse_hf_config_rejects_zero_experts():
    config = dict(MIXTRAL_CONFIG, num_local_experts=0)

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="mixtral.json")

    assert caught.value.field == "num_local_experts"


def test_parse_hf_config_rejects_too_many_active_experts():
    config = dict(MIXTRAL_CONFIG, num_experts_per_tok=5)

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="mixtral.json")

    assert caught.value.field == "num_experts_per_tok"


def test_parse_hf_config_rejects_kv_heads_not_dividing():
    config = dict(QWEN3_CONFIG, num_key_value_heads=3)

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="qwen3.json")

    assert caught.value.field == "num_key_value_heads"


def test_parse_hf_config_rejects_indivisible_hidden():
    config = dict(MIXTRAL_CONFIG, hidden_size=100, num_attention_heads=8)

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="mixtral.json")

    assert caught.value.field == "head_dim"


def test_parse_hf_config_rejects_bad_mlp_only_layers():
    config = dict(QWEN3_MOE_CONFIG, mlp_only_layers=[4])

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="qwen3-moe.json")

    assert caught.value.field == "mlp_only_layers"


def test_parse_hf_config_rejects_other_quantization():
    config = dict(QWEN3_CONFIG, quantization_config={"quant_method": "awq", "bits": 4})

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="qwen3-awq.json")

    assert caught.value.field == "quantization_config.quant_method"
    assert "awq" in caught.value.message


def test_parse_hf_config_rejects_bad_block_size():
    config = dict(
        QWEN3_CONFIG, quantization_config={"quant_method": "fp8", "weight_block_size": [128]}
    )

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="qwen3-fp8.json")

    assert caught.value.field == "quantization_config.weight_block_size"


def test_parse_hf_config_rejects_llama_attention_bias():
    config = dict(load_config("deepseek-r1-distill-llama-8b"), attention_bias=True)

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="llama.json")

    assert caught.value.field == "attention_bias"


def test_parse_hf_config_rejects_non_object():
    with pytest.raises(ValueProblem) as caught:
        parse_hf_config([1, 2], source="list.json")  # type: ignore[arg-type]

    assert "list.json" in caught.value.message


def test_parse_hf_config_message_names_source():
    config = dict(QWEN3_CONFIG, vocab_size=-1)

    with pytest.raises(ValueProblem) as caught:
        parse_hf_config(config, source="models/qwen3.json")

    assert "models/qwen3.json" in caught.value.message
