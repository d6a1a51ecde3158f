"""Engine constants of the cost model, each with its source.

Hardware numbers (peak rates, bandwidths, achieved fractions) live with the node
catalog in :mod:`kvplan.spec.catalog`; the values here describe vLLM itself. A plan can
override each of them under ``engine:`` (for example after calibrating on its own
cluster). Values marked "estimate" are not read from a measurement of vLLM; each says
what it rests on.
"""

from __future__ import annotations

GIB = 1024**3

# Host time the engine spends per scheduler step whatever the batch: scheduling entry,
# CUDA graph replay launch, sampler launch, output hand-off. Estimate: the vLLM nightly
# benchmark on H200 decodes 8 requests of Llama-3.1-8B at about 6.5 ms per token while
# the weight read takes 3.9 ms at 85 % of 4.8 TB/s; per-layer kernel time (below)
# explains most of the rest, and about 0.5 ms remains for the step itself.
CPU_OVERHEAD_PER_STEP_S = 0.5e-3

# Host time per running request per step (scheduling, input preparation, sampling,
# detokenization). A 2026 profile of vLLM 0.27 measured about 13 us per running request
# for the v1 scheduler alone (openfabric-systems/simllm PR 204); vLLM issue 6801 (2024,
# before v1) reported about 20 ms per step at 200 running requests, 100 us each. The
# v1 figure is used because the modelled engine is v1.
CPU_OVERHEAD_PER_REQUEST_S = 13e-6

# Fixed GPU time per decoder layer and step that does not shrink with the batch: about a
# dozen kernels per layer (norms, projections, rotary embedding, cache write, attention,
# activation, all-reduce) each take a few microseconds even on tiny inputs. Estimate:
# 12 kernels x 4 us, a typical minimum kernel duration on Hopper under CUDA graphs.
KERNEL_OVERHEAD_PER_LAYER_S = 48e-6

# Memory that PyTorch's allocator does not see (CUDA context, cuBLAS workspaces, NCCL
# and custom all-reduce buffers); vLLM subtracts it from the KV budget
# (vllm/v1/worker/gpu_worker.py, determine_available_memory). Estimate from vLLM's
# start-up logs, which report a few hundred MiB to about 1.5 GiB.
NON_TORCH_MEMORY_BYTES = 0.75 * GIB

# Memory kept by captured CUDA graphs, which vLLM estimates before sizing the KV cache
# since v0.21. Estimate: vLLM's start-up logs report 0.3 to 1.5 GiB for the default
# capture sizes.
CUDA_GRAPH_MEMORY_BYTES = 0.5 * GIB

# Live activation tensors at the peak of vLLM's profiling forward pass, in units of
# (tokens x hidden_size) and (tokens x per-rank MLP width). Estimate: the residual
# stream, normalized input, attention output and MLP output are about four hidden-sized
# tensors; the SwiGLU gate/up output (two widths) and the activated product (one width)
# are three MLP-sized tensors.
ACTIVATION_HIDDEN_TENSORS = 4
ACTIVATION_MLP_TENSORS = 3

# vLLM's profiling run also samples one token for min(max_num_seqs,
# max_num_batched_tokens) dummy requests: float32 logits over the whole vocabulary plus
# a float32 working copy for the probabilities, 8 bytes per vocabulary entry.
SAMPLER_BYTES_PER_VOCAB_ENTRY = 8

# Default KV block sizes in tokens: 16 for FlashAttention and FlashInfer, 64 for MLA on
# Hopper (FlashMLA's kernel requires it).
DEFAULT_BLOCK_SIZE = 16
DEFAULT_MLA_BLOCK_SIZE = 64
