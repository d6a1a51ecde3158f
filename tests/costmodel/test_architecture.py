"""Tests of the exact architecture arithmetic and of the vLLM-style parallel layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kvplan.costmodel.architecture import (
    active_parameter_count,
    kv_bytes_per_token,
    kv_cache_elements_per_token_per_layer,
    parallel_layout,
    parallel_tables,
    parameter_count,
    shard_shape,
    split_layers,
    tensor_bytes,
    total_weight_bytes,
    weight_inventory,
)
from kvplan.spec.hf_config import parse_hf_config
from kvplan.spec.types import Architecture, ModelSpec

CONFIG_DIR = Path(__file__).resolve().parents[2] / "examples" / "models" / "hf-configs"

# H200 memory as nvidia-smi reports it: 143771 MiB.
H200_MEMORY_BYTES = 143771 * 2**20

# Exact counts: total parameters, active parameters per token and bf16 KV bytes per token.
EXPECTED = {
    "deepseek-r1-distill-llama-8b": (8_030_261_248, 8_030_261_248, 131_072),
    "deepseek-r1-distill-qwen-14b": (14_770_033_664, 14_770_033_664, 196_608),
    "deepseek-r1-distill-qwen-32b": (32_763_876_352, 32_763_876_352, 262_144),
    "deepseek-r1-distill-llama-70b": (70_553_706_496, 70_553_706_496, 327_680),
    "llama-3.1-405b": (405_853_388_800, 405_853_388_800, 516_096),
    "deepseek-r1": (671_026_404_352, 37_552_282_624, 70_272),
}


def load_arch(name: str) -> Architecture:
    config = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return parse_hf_config(config, source=f"{name}.json")


def make_model(arch: Architecture, weight_dtype="bfloat16", kv_cache_dtype="auto") -> ModelSpec:
    return ModelSpec(
        name=arch.model_type,
        config_path="<test>",
        architecture=arch,
        weight_dtype=weight_dtype,
        kv_cache_dtype=kv_cache_dtype,
    )


def load_model(name: str, weight_dtype="bfloat16", kv_cache_dtype="auto") -> ModelSpec:
    return make_model(load_arch(name), weight_dtype, kv_cache_dtype)


def tensor_named(arch: Architecture, name: str):
    matches = [tensor for tensor in weight_inventory(arch) if tensor.name == name]
    assert len(matches) == 1, name
    return matches[0]


def replicated_bytes_per_gpu(model: ModelSpec, tp: int) -> int:
    return sum(
        tensor_bytes(tensor, model.architecture, model.weight_dtype, tp)
        for tensor in weight_inventory(model.architecture)
        if not tensor.is_tp_sharded
    )


# ---------------------------------------------------------------------------------------
# Synthetic configs, counted by hand below
# ---------------------------------------------------------------------------------------

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
    "n_routed_experts": 8,
    "n_shared_experts": 2,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "q_lora_rank": None,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "vocab_size": 1000,
}


def qwen3_hand_count(tied: bool) -> int:
    hidden, vocab, layers, heads, kv_heads, head_dim, inter = 256, 1000, 3, 4, 2, 96, 512
    attention = (
        hidden * heads * head_dim  # q_proj
        + 2 * hidden * kv_heads * head_dim  # k_proj, v_proj
        + heads * head_dim * hidden  # o_proj
        + 2 * head_dim  # q_norm, k_norm
    )
    mlp = 3 * hidden * inter
    norms = 2 * hidden
    heads_and_embedding = vocab * hidden * (1 if tied else 2)
    return heads_and_embedding + hidden + layers * (attention + mlp + norms)


def qwen3_moe_hand_count(active: bool) -> int:
    hidden, vocab, heads, kv_heads, head_dim = 128, 512, 4, 2, 64
    dense_inter, expert_inter, experts, top_k = 384, 64, 8, 2
    attention = (
        hidden * heads * head_dim
        + 2 * hidden * kv_heads * head_dim
        + heads * head_dim * hidden
        + 2 * head_dim
    )
    norms = 2 * hidden
    dense_mlp = 3 * hidden * dense_inter
    used_experts = top_k if active else experts
    moe_mlp = used_experts * 3 * hidden * expert_inter + experts * hidden  # experts + router
    # Layers 0, 2 and 3 are dense, layer 1 is MoE.
    layers = 4 * (attention + norms) + 3 * dense_mlp + moe_mlp
    return 2 * vocab * hidden + hidden + layers


def mixtral_hand_count(active: bool) -> int:
    hidden, vocab, layers, heads, kv_heads = 128, 320, 2, 8, 2
    head_dim = hidden // heads
    expert_inter, experts, top_k = 224, 4, 2
    attention = hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim
    used_experts = top_k if active else experts
    moe_mlp = used_experts * 3 * hidden * expert_inter + experts * hidden
    return 2 * vocab * hidden + hidden + layers * (attention + 2 * hidden + moe_mlp)


def deepseek_v2_hand_count(active: bool) -> int:
    hidden, vocab, layers, heads = 256, 1000, 3, 4
    kv_lora, rope, nope, v_dim = 64, 16, 32, 32
    dense_inter, expert_inter, experts, top_k, shared = 512, 64, 8, 2, 2
    attention = (
        hidden * heads * (nope + rope)  # q_proj
        + hidden * (kv_lora + rope)  # kv_a_proj_with_mqa
        + kv_lora  # kv_a_layernorm
        + kv_lora * heads * (nope + v_dim)  # kv_b_proj
        + heads * v_dim * hidden  # o_proj
    )
    used_experts = top_k if active else experts
    moe_mlp = (
        used_experts * 3 * hidden * expert_inter
        + 3 * hidden * shared * expert_inter
        + experts * hidden
    )
    dense_mlp = 3 * hidden * dense_inter
    return 2 * vocab * hidden + hidden + layers * (attention + 2 * hidden) + dense_mlp + (
        2 * moe_mlp
    )


# ---------------------------------------------------------------------------------------
# Whole-model counts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_parameter_count_real_configs(name):
    assert parameter_count(load_arch(name)) == EXPECTED[name][0]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_active_parameter_count_real_configs(name):
    assert active_parameter_count(load_arch(name)) == EXPECTED[name][1]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_kv_bytes_per_token_real_configs(name):
    assert kv_bytes_per_token(load_arch(name)) == EXPECTED[name][2]


def test_kv_bytes_per_token_fp8_halves():
    arch = load_arch("deepseek-r1-distill-llama-8b")

    assert kv_bytes_per_token(arch, kv_dtype_bytes=1) == 65_536


def test_kv_cache_elements_mla_latent():
    arch = load_arch("deepseek-r1")

    assert kv_cache_elements_per_token_per_layer(arch) == 512 + 64


def test_kv_cache_elements_gqa():
    arch = load_arch("llama-3.1-405b")

    assert kv_cache_elements_per_token_per_layer(arch) == 2 * 8 * 128


def test_parameter_count_qwen3_synthetic():
    arch = parse_hf_config(QWEN3_CONFIG, source="qwen3.json")

    assert parameter_count(arch) == qwen3_hand_count(tied=False)
    assert active_parameter_count(arch) == qwen3_hand_count(tied=False)


def test_parameter_count_qwen3_tied():
    arch = parse_hf_config(dict(QWEN3_CONFIG, tie_word_embeddings=True), source="qwen3.json")

    assert parameter_count(arch) == qwen3_hand_count(tied=True)


def test_parameter_count_qwen3_moe_synthetic():
    arch = parse_hf_config(QWEN3_MOE_CONFIG, source="qwen3-moe.json")

    assert parameter_count(arch) == qwen3_moe_hand_count(active=False)


def test_active_parameter_count_qwen3_moe_synthetic():
    arch = parse_hf_config(QWEN3_MOE_CONFIG, source="qwen3-moe.json")

    assert active_parameter_count(arch) == qwen3_moe_hand_count(active=True)


def test_parameter_count_mixtral_synthetic():
    arch = parse_hf_config(MIXTRAL_CONFIG, source="mixtral.json")

    assert parameter_count(arch) == mixtral_hand_count(active=False)


def test_active_parameter_count_mixtral_synthetic():
    arch = parse_hf_config(MIXTRAL_CONFIG, source="mixtral.json")

    assert active_parameter_count(arch) == mixtral_hand_count(active=True)


def test_parameter_count_deepseek_v2_synthetic():
    arch = parse_hf_config(DEEPSEEK_V2_CONFIG, source="deepseek-v2.json")

    assert parameter_count(arch) == deepseek_v2_hand_count(active=False)


def test_active_parameter_count_deepseek_v2_synthetic():
    arch = parse_hf_config(DEEPSEEK_V2_CONFIG, source="deepseek-v2.json")

    assert active_parameter_count(arch) == deepseek_v2_hand_count(active=True)


def test_kv_bytes_per_token_qwen3_head_dim():
    arch = parse_hf_config(QWEN3_CONFIG, source="qwen3.json")

    # The explicit head_dim of 96 sets the KV size, not hidden_size / heads = 64.
    assert kv_bytes_per_token(arch) == 2 * 2 * 96 * 3 * 2


# ---------------------------------------------------------------------------------------
# Weight inventory and bytes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_weight_inventory_sums_to_parameters(name):
    arch = load_arch(name)

    assert sum(tensor.numel for tensor in weight_inventory(arch)) == EXPECTED[name][0]


@pytest.mark.parametrize(
    ("suffix", "sharding"),
    [
        ("self_attn.q_a_proj.weight", "replicated"),
        ("self_attn.q_a_layernorm.weight", "replicated"),
        ("self_attn.kv_a_proj_with_mqa.weight", "replicated"),
        ("self_attn.kv_a_layernorm.weight", "replicated"),
        ("self_attn.q_b_proj.weight", "column"),
        ("self_attn.kv_b_proj.weight", "column"),
        ("self_attn.o_proj.weight", "row"),
        ("input_layernorm.weight", "replicated"),
        ("mlp.gate.weight", "replicated"),
        ("mlp.experts.gate_proj.weight", "column"),
        ("mlp.experts.down_proj.weight", "row"),
        ("mlp.shared_experts.up_proj.weight", "column"),
        ("mlp.shared_experts.down_proj.weight", "row"),
    ],
)
def test_weight_inventory_deepseek_sharding(suffix, sharding):
    arch = load_arch("deepseek-r1")

    assert tensor_named(arch, f"model.layers.3.{suffix}").sharding == sharding


def test_weight_inventory_embedding_placement():
    arch = load_arch("deepseek-r1")
    embedding = tensor_named(arch, "model.embed_tokens.weight")
    lm_head = tensor_named(arch, "lm_head.weight")
    final_norm = tensor_named(arch, "model.norm.weight")

    assert embedding.placement == "first_stage"
    assert embedding.sharding == "vocab"
    assert lm_head.placement == "last_stage"
    assert lm_head.sharding == "vocab"
    assert final_norm.placement == "last_stage"
    assert final_norm.sharding == "replicated"


def test_weight_inventory_flags_routed_experts():
    arch = load_arch("deepseek-r1")
    routed = [tensor for tensor in weight_inventory(arch) if tensor.is_routed_expert]

    assert len(routed) == 58 * 3
    assert all(tensor.shape[0] == 256 for tensor in routed)
    shared = tensor_named(arch, "model.layers.3.mlp.shared_experts.gate_proj.weight")
    assert not shared.is_routed_expert


def test_weight_inventory_quantizable_flags():
    arch = load_arch("deepseek-r1")

    assert tensor_named(arch, "model.layers.0.self_attn.q_a_proj.weight").is_quantizable
    assert tensor_named(arch, "model.layers.0.mlp.gate_proj.weight").is_quantizable
    assert not tensor_named(arch, "model.layers.3.mlp.gate.weight").is_quantizable
    assert not tensor_named(arch, "model.embed_tokens.weight").is_quantizable
    assert not tensor_named(arch, "lm_head.weight").is_quantizable
    assert not tensor_named(arch, "model.layers.0.input_layernorm.weight").is_quantizable


def test_weight_inventory_dense_layers_of_r1():
    arch = load_arch("deepseek-r1")

    assert tensor_named(arch, "model.layers.2.mlp.down_proj.weight").shape == (7168, 18432)
    assert tensor_named(arch, "model.layers.60.mlp.gate.weight").shape == (256, 7168)


def test_weight_inventory_qwen2_biases():
    arch = load_arch("deepseek-r1-distill-qwen-14b")

    assert tensor_named(arch, "model.layers.0.self_attn.q_proj.bias").shape == (5120,)
    assert tensor_named(arch, "model.layers.0.self_attn.k_proj.bias").shape == (1024,)
    assert tensor_named(arch, "model.layers.0.self_attn.v_proj.bias").shape == (1024,)


def test_weight_inventory_tied_has_no_lm_head():
    arch = parse_hf_config(dict(QWEN3_CONFIG, tie_word_embeddings=True), source="qwen3.json")
    names = [tensor.name for tensor in weight_inventory(arch)]

    assert "lm_head.weight" not in names


def test_total_weight_bytes_r1_fp8():
    arch = load_arch("deepseek-r1")
    size = total_weight_bytes(arch, "fp8")

    assert size > 0.67e12
    assert size < 0.72e12


def test_total_weight_bytes_r1_bf16():
    arch = load_arch("deepseek-r1")

    assert total_weight_bytes(arch, "bfloat16") == 2 * 671_026_404_352


def test_total_weight_bytes_float16_matches_bf16():
    arch = load_arch("deepseek-r1-distill-llama-8b")

    assert total_weight_bytes(arch, "float16") == total_weight_bytes(arch, "bfloat16")


def test_tensor_bytes_fp8_block_scales():
    arch = load_arch("deepseek-r1")
    q_b_proj = tensor_named(arch, "model.layers.0.self_attn.q_b_proj.weight")

    rows, columns = 128 * 192, 1536
    expected = rows * columns + math.ceil(rows / 128) * math.ceil(columns / 128) * 4
    assert tensor_bytes(q_b_proj, arch, "fp8") == expected


def test_tensor_bytes_fp8_partial_block():
    arch = load_arch("deepseek-r1")
    kv_a_proj = tensor_named(arch, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight")

    # 576 rows need ceil(576 / 128) = 5 scale rows.
    assert tensor_bytes(kv_a_proj, arch, "fp8") == 576 * 7168 + 5 * 56 * 4


def test_tensor_bytes_fp8_experts_per_matrix():
    arch = load_arch("deepseek-r1")
    experts = tensor_named(arch, "model.layers.3.mlp.experts.down_proj.weight")

    per_expert = 7168 * 2048 + (7168 // 128) * (2048 // 128) * 4
    assert tensor_bytes(experts, arch, "fp8") == 256 * per_expert


def test_tensor_bytes_fp8_sharded_scales():
    arch = load_arch("deepseek-r1")
    experts = tensor_named(arch, "model.layers.3.mlp.experts.gate_proj.weight")

    per_expert = 256 * 7168 + (256 // 128) * (7168 // 128) * 4
    assert tensor_bytes(experts, arch, "fp8", tp=8) == 256 * per_expert


def test_tensor_bytes_fp8_per_tensor_scale():
    arch = load_arch("deepseek-r1-distill-llama-8b")
    q_proj = tensor_named(arch, "model.layers.0.self_attn.q_proj.weight")

    assert tensor_bytes(q_proj, arch, "fp8") == 4096 * 4096 + 4


def test_tensor_bytes_fp8_scale_on_every_rank():
    arch = load_arch("deepseek-r1-distill-llama-8b")
    q_proj = tensor_named(arch, "model.layers.0.self_attn.q_proj.weight")

    # Each TP rank keeps the per-tensor scale of its slice.
    assert tensor_bytes(q_proj, arch, "fp8", tp=2) == 4096 * 4096 // 2 + 4


@pytest.mark.parametrize(
    "name", ["model.embed_tokens.weight", "lm_head.weight", "model.layers.3.mlp.gate.weight"]
)
def test_tensor_bytes_fp8_keeps_two_bytes(name):
    arch = load_arch("deepseek-r1")
    tensor = tensor_named(arch, name)

    assert tensor_bytes(tensor, arch, "fp8") == 2 * tensor.numel


# ---------------------------------------------------------------------------------------
# Layer split across pipeline stages
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_layers", "pp", "counts"),
    [
        (32, 1, [32]),
        (20, 4, [5, 5, 5, 5]),
        (61, 2, [31, 30]),
        (61, 4, [15, 15, 16, 15]),
        (7, 4, [2, 2, 2, 1]),
        (126, 8, [15, 16, 16, 16, 16, 16, 16, 15]),
        (5, 5, [1, 1, 1, 1, 1]),
    ],
)
def test_split_layers_matches_vllm(num_layers, pp, counts):
    ranges = split_layers(num_layers, pp)

    assert [end - start for start, end in ranges] == counts
    assert ranges[0][0] == 0
    assert ranges[-1][1] == num_layers
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(pp - 1))


# ---------------------------------------------------------------------------------------
# Parallel layouts
# ---------------------------------------------------------------------------------------


def test_parallel_layout_405b_tp8_weights():
    layout = parallel_layout(load_model("llama-3.1-405b"), tp=8, pp=1)

    assert layout.valid
    assert layout.stages[0].weight_bytes > 101.4e9
    assert layout.stages[0].weight_bytes < 101.6e9


def test_parallel_layout_405b_tp4_exceeds_h200():
    layout = parallel_layout(load_model("llama-3.1-405b"), tp=4, pp=1)

    assert layout.stages[0].weight_bytes > 202.8e9
    assert layout.stages[0].weight_bytes < 203.1e9
    assert layout.stages[0].weight_bytes > H200_MEMORY_BYTES


@pytest.mark.parametrize(
    ("name", "weight_dtype", "tp", "pp"),
    [
        ("llama-3.1-405b", "bfloat16", 8, 1),
        ("llama-3.1-405b", "bfloat16", 4, 4),
        ("deepseek-r1-distill-qwen-14b", "bfloat16", 8, 2),
        ("deepseek-r1-distill-llama-8b", "float16", 2, 3),
        ("deepseek-r1", "bfloat16", 8, 2),
        ("deepseek-r1", "fp8", 16, 4),
    ],
)
def test_parallel_layout_ranks_sum_to_total(name, weight_dtype, tp, pp):
    model = load_model(name, weight_dtype)
    layout = parallel_layout(model, tp=tp, pp=pp)
    total = total_weight_bytes(model.architecture, weight_dtype)
    replicated = replicated_bytes_per_gpu(model, tp)

    summed = sum(stage.weight_bytes * tp for stage in layout.stages)
    # Sharded bytes add up to the total, and replicated bytes appear once per TP rank.
    assert summed == total + (tp - 1) * replicated


def test_parallel_layout_tp1_pp1_is_total():
    model = load_model("deepseek-r1-distill-qwen-32b")
    layout = parallel_layout(model, tp=1, pp=1)

    assert layout.stages[0].weight_bytes == 2 * 32_763_876_352


def test_parallel_layout_embedding_on_first_stage():
    model = load_model("deepseek-r1-distill-llama-8b")
    layout = parallel_layout(model, tp=2, pp=2)
    hidden, vocab, inter, kv_size = 4096, 128256, 14336, 1024
    layer = (2 * hidden * hidden + 2 * hidden * kv_size + 3 * hidden * inter) // 2 + 2 * hidden

    first, last = layout.stages
    assert first.weight_bytes == 2 * (16 * layer + vocab * hidden // 2)
    assert last.weight_bytes == 2 * (16 * layer + vocab * hidden // 2 + hidden)


def test_parallel_layout_tied_embedding_pp():
    # A vocabulary that needs no padding keeps the per-GPU sum equal to the total.
    config = dict(QWEN3_CONFIG, tie_word_embeddings=True, vocab_size=1024)
    arch = parse_hf_config(config, source="qwen3.json")
    model = make_model(arch)
    embedding = tensor_named(arch, "model.embed_tokens.weight")
    embedding_bytes = tensor_bytes(embedding, arch, "bfloat16")

    single = parallel_layout(model, tp=1, pp=1).stages[0]
    split = parallel_layout(model, tp=1, pp=3).stages

    # pp=1 stores the embedding once. With pp > 1 the last stage stores its own copy.
    assert single.weight_bytes == total_weight_bytes(arch, "bfloat16")
    assert sum(stage.weight_bytes for stage in split) == single.weight_bytes + embedding_bytes


def test_parallel_layout_mla_kv_whole_per_rank():
    model = load_model("deepseek-r1")

    for tp in (1, 8, 16):
        layout = parallel_layout(model, tp=tp, pp=1)
        assert layout.stages[0].kv_bytes_per_token == 70_272


def test_parallel_layout_kv_fp8_cache():
    model = load_model("deepseek-r1", "fp8", kv_cache_dtype="fp8")
    layout = parallel_layout(model, tp=8, pp=1)

    assert layout.stages[0].kv_bytes_per_token == 70_272 // 2


def test_parallel_layout_kv_auto_with_fp8_weights():
    model = load_model("deepseek-r1", "fp8", kv_cache_dtype="auto")
    layout = parallel_layout(model, tp=8, pp=1)

    assert layout.stages[0].kv_bytes_per_token == 70_272


def test_parallel_layout_gqa_kv_split_by_tp():
    model = load_model("deepseek-r1-distill-qwen-32b")
    layout = parallel_layout(model, tp=4, pp=1)

    assert layout.stages[0].kv_bytes_per_token == 2 * 2 * 128 * 64 * 2


def test_parallel_layout_kv_heads_replicated():
    # 8 KV heads at tp=16: every rank keeps one whole head, as at tp=8.
    model = load_model("deepseek-r1-distill-llama-70b")
    layout_16 = parallel_layout(model, tp=16, pp=1)
    layout_8 = parallel_layout(model, tp=8, pp=1)

    assert layout_16.valid
    assert layout_16.stages[0].kv_bytes_per_token == 2 * 1 * 128 * 80 * 2
    assert layout_16.stages[0].kv_bytes_per_token == layout_8.stages[0].kv_bytes_per_token


def test_shard_shape_kv_heads_replicated():
    arch = load_arch("deepseek-r1-distill-llama-70b")
    k_proj = tensor_named(arch, "model.layers.0.self_attn.k_proj.weight")
    q_proj = tensor_named(arch, "model.layers.0.self_attn.q_proj.weight")

    assert shard_shape(k_proj, 16) == (128, 8192)
    assert shard_shape(k_proj, 4) == (256, 8192)
    assert shard_shape(q_proj, 16) == (512, 8192)


def test_shard_shape_vocab_padding():
    arch = parse_hf_config(QWEN3_CONFIG, source="qwen3.json")
    embedding = tensor_named(arch, "model.embed_tokens.weight")

    # 1000 pads to 1024 rows, split over 4 ranks.
    assert shard_shape(embedding, 1) == (1024, 256)
    assert shard_shape(embedding, 4) == (256, 256)


def test_parallel_layout_routed_expert_bytes():
    model = load_model("deepseek-r1")
    stages = parallel_layout(model, tp=8, pp=4).stages
    per_layer = 256 * 3 * 7168 * 2048 * 2 // 8

    assert [stage.num_moe_layers for stage in stages] == [12, 15, 16, 15]
    assert [stage.routed_expert_weight_bytes for stage in stages] == [
        count * per_layer for count in (12, 15, 16, 15)
    ]


def test_parallel_layout_dense_has_no_expert_bytes():
    stage = parallel_layout(load_model("llama-3.1-405b"), tp=8, pp=1).stages[0]

    assert stage.num_moe_layers == 0
    assert stage.routed_expert_weight_bytes == 0


def test_parallel_layout_linear_flops_dense():
    arch = load_arch("deepseek-r1-distill-llama-8b")
    embedding = 128256 * 4096
    norms = (2 * 32 + 1) * 4096
    linear = 8_030_261_248 - embedding - norms

    for tp in (1, 2, 8):
        stage = parallel_layout(make_model(arch), tp=tp, pp=1).stages[0]
        assert stage.linear_flops_per_token == 2 * linear // tp


def test_parallel_layout_linear_flops_r1():
    model = load_model("deepseek-r1", "fp8")
    embedding = 129280 * 7168
    norms = (2 * 7168 + 1536 + 512) * 61 + 7168
    active_linear = 37_552_282_624 - embedding - norms

    stage = parallel_layout(model, tp=1, pp=1).stages[0]

    assert stage.linear_flops_per_token == 2 * active_linear


def test_parallel_layout_linear_flops_lm_head_last():
    model = load_model("deepseek-r1-distill-llama-8b")
    first, last = parallel_layout(model, tp=1, pp=2).stages

    assert last.linear_flops_per_token - first.linear_flops_per_token == 2 * 128256 * 4096


def test_parallel_layout_attention_flops_gqa():
    model = load_model("deepseek-r1-distill-llama-8b")

    stage_1 = parallel_layout(model, tp=1, pp=1).stages[0]
    stage_8 = parallel_layout(model, tp=8, pp=1).stages[0]

    assert stage_1.attention_flops_per_token_per_context_token == 4 * 32 * 128 * 32
    assert stage_8.attention_flops_per_token_per_context_token == 4 * 4 * 128 * 32


def test_parallel_layout_attention_flops_mla():
    model = load_model("deepseek-r1", "fp8")
    stage = parallel_layout(model, tp=8, pp=1).stages[0]
    heads = 128 // 8

    expected = (2 * heads * (512 + 64) + 2 * heads * 512) * 61
    assert stage.attention_flops_per_token_per_context_token == expected


def test_parallel_layout_allreduce_bytes():
    model = load_model("deepseek-r1-distill-llama-70b")

    assert parallel_layout(model, tp=1, pp=1).stages[0].allreduce_bytes_per_token == 0
    stages = parallel_layout(model, tp=8, pp=2).stages
    assert [stage.allreduce_bytes_per_token for stage in stages] == [2 * 8192 * 2 * 40] * 2


def test_parallel_layout_pp_send_bytes():
    model = load_model("deepseek-r1-distill-llama-70b")
    stages = parallel_layout(model, tp=8, pp=4).stages

    # Each stage but the last sends the bf16 hidden states and residual to the next.
    assert [stage.pp_send_bytes_per_token for stage in stages] == [2 * 8192 * 2] * 3 + [0]


def test_parallel_layout_stage_layers():
    stages = parallel_layout(load_model("deepseek-r1", "fp8"), tp=8, pp=4).stages

    assert [stage.num_layers for stage in stages] == [15, 15, 16, 15]
    assert [stage.start_layer for stage in stages] == [0, 15, 30, 46]
    assert [stage.end_layer for stage in stages] == [15, 30, 46, 61]


# ---------------------------------------------------------------------------------------
# Invalid layouts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "weight_dtype", "tp", "pp", "reason"),
    [
        ("deepseek-r1-distill-qwen-14b", "bfloat16", 3, 1,
         "tp=3 does not divide num_attention_heads=40"),
        ("deepseek-r1-distill-qwen-32b", "bfloat16", 16, 1,
         "tp=16 does not divide num_attention_heads=40"),
        ("deepseek-r1-distill-llama-8b", "bfloat16", 1, 33,
         "pp=33 exceeds num_hidden_layers=32"),
        ("deepseek-r1-distill-llama-8b", "bfloat16", 0, 1,
         "tp must be a positive integer, got 0"),
        ("deepseek-r1-distill-llama-8b", "bfloat16", 1, -2,
         "pp must be a positive integer, got -2"),
        ("deepseek-r1", "fp8", 32, 1,
         "with fp8 block quantization, moe_intermediate_size / tp = 2048 / 32 = 64 is not a "
         "multiple of the block size 128"),
    ],
)
def test_parallel_layout_invalid_reason(name, weight_dtype, tp, pp, reason):
    layout = parallel_layout(load_model(name, weight_dtype), tp=tp, pp=pp)

    assert layout.valid is False
    assert layout.reason == reason
    assert layout.stages == ()


def test_parallel_layout_r1_bf16_tp32_valid():
    # The block-size rule applies only to fp8 weights.
    layout = parallel_layout(load_model("deepseek-r1", "bfloat16"), tp=32, pp=1)

    assert layout.valid
    assert layout.reason is None


def test_parallel_layout_kv_heads_indivisible():
    config = dict(QWEN3_CONFIG, num_attention_heads=24, num_key_value_heads=8, head_dim=32)
    model = make_model(parse_hf_config(config, source="qwen3.json"))

    layout = parallel_layout(model, tp=12, pp=1)

    assert layout.reason == (
        "tp=12 does not divide num_key_value_heads=8, and num_key_value_heads=8 does not "
        "divide tp=12"
    )


def test_parallel_layout_intermediate_indivisible():
    config = dict(QWEN3_CONFIG, intermediate_size=1001)
    model = make_model(parse_hf_config(config, source="qwen3.json"))

    layout = parallel_layout(model, tp=2, pp=1)

    assert layout.reason == "tp=2 does not divide intermediate_size=1001"


def test_parallel_layout_moe_intermediate_indivisible():
    config = dict(QWEN3_MOE_CONFIG, moe_intermediate_size=99)
    model = make_model(parse_hf_config(config, source="qwen3-moe.json"))

    layout = parallel_layout(model, tp=2, pp=1)

    assert layout.reason == "tp=2 does not divide moe_intermediate_size=99"


def test_parallel_layout_fp8_block_attention_reason():
    # head_dim 96 leaves 2 * 96 = 192 q_proj rows per rank at tp=2.
    config = dict(
        QWEN3_CONFIG,
        intermediate_size=1536,
        quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]},
    )
    model = make_model(parse_hf_config(config, source="qwen3-fp8.json"), "fp8")

    layout = parallel_layout(model, tp=2, pp=1)

    assert layout.reason == (
        "with fp8 block quantization, model.layers.0.self_attn.q_proj.weight has 192 "
        "output rows per rank at tp=2, which is not a multiple of the block size 128"
    )


def test_parallel_layout_fp8_block_dense_reason():
    config = dict(
        QWEN3_CONFIG,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=1536,
        quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]},
    )
    model = make_model(parse_hf_config(config, source="qwen3-fp8.json"), "fp8")

    assert parallel_layout(model, tp=4, pp=1).valid
    layout = parallel_layout(model, tp=8, pp=1)
    assert layout.reason == (
        "with fp8 block quantization, intermediate_size / tp = 1536 / 8 = 192 is not a "
        "multiple of the block size 128"
    )


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------


def test_parallel_tables_shapes():
    tables = parallel_tables(load_model("deepseek-r1", "fp8"), [1, 2, 4, 8, 32], [1, 2, 4])

    assert tables.valid.shape == (5, 3)
    assert tables.weight_bytes.shape == (5, 3, 4)
    assert tables.num_layers.shape == (5, 3, 4)
    assert tables.tp_values.tolist() == [1, 2, 4, 8, 32]
    assert tables.pp_values.tolist() == [1, 2, 4]


def test_parallel_tables_match_layouts():
    model = load_model("deepseek-r1", "fp8")
    tables = parallel_tables(model, [1, 8], [1, 2, 4])
    layout = parallel_layout(model, tp=8, pp=4)

    for stage_index, stage in enumerate(layout.stages):
        assert tables.weight_bytes[1, 2, stage_index] == stage.weight_bytes
        assert tables.kv_bytes_per_token[1, 2, stage_index] == stage.kv_bytes_per_token
        assert tables.linear_flops_per_token[1, 2, stage_index] == stage.linear_flops_per_token
        assert tables.num_moe_layers[1, 2, stage_index] == stage.num_moe_layers


def test_parallel_tables_padding_stages():
    tables = parallel_tables(load_model("llama-3.1-405b"), [8], [1, 4])

    assert tables.num_layers[0, 0].tolist() == [126, 0, 0, 0]
    assert tables.weight_bytes[0, 0, 1] == 0
    assert tables.num_layers[0, 1].tolist() == [31, 32, 32, 31]


def test_parallel_tables_invalid_entries():
    tables = parallel_tables(load_model("deepseek-r1", "fp8"), [8, 32], [1])

    assert tables.valid.tolist() == [[True], [False]]
    assert tables.reasons[0][0] is None
    assert "moe_intermediate_size" in tables.reasons[1][0]
    assert np.all(tables.weight_bytes[1, 0] == 0)


def test_parallel_tables_dtypes():
    tables = parallel_tables(load_model("deepseek-r1-distill-llama-8b"), [1], [1])

    assert tables.valid.dtype == np.bool_
    assert tables.num_layers.dtype == np.int64
    assert tables.weight_bytes.dtype == np.float64


def test_parallel_tables_read_only():
    tables = parallel_tables(load_model("deepseek-r1-distill-llama-8b"), [1], [1])

    with pytest.raises(ValueError):
        tables.weight_bytes[0, 0, 0] = 1.0
