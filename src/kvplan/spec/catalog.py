"""Built-in GPU node types that a Node spec can name as its ``base``.

Each entry is written in the Node spec format, so it goes through the same schema and
unit parsing as a user's node file, and a user's node can override any of its keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Measured fractions of the H200 SXM peaks; the H100 SXM entry reuses them.
_HOPPER_EFFICIENCY: Mapping[str, float] = {
    # STREAM-style copy reaches 4.01 TB/s and triad 4.15 TB/s of the 4.8 TB/s peak on
    # Azure ND H200 v5 (github.com/Azure/AI-benchmarking-guide, Azure_Results/ND_H200_v5_results.md).
    "hbm_bandwidth": 0.85,
    # A bf16 GEMM of 8192 x 8192 x 8192 runs at 769-798 TFLOP/s on an H200 SXM, 0.78-0.81 of 989.
    # NOTE: the source of this bf16 measurement is not recorded; re-measure with cuBLAS if it matters.
    "compute": 0.79,
    # cuBLASLt FP8 GEMM reaches 1300.6 TFLOP/s at 8192^3 and 1366.3 TFLOP/s at 16384^3 on
    # Azure ND H200 v5 (same results file), 0.66-0.69 of 1979.
    "fp8_compute": 0.67,
    # The H100 TP 4 table of vllm-project/vllm pull request 24532 times bf16 all-reduces
    # of 0.5, 1, 2 and 4 MiB at 10, 14, 21 and 28 us with the fastest backend per size
    # (custom all-reduce up to 1 MiB, NCCL symmetric memory above). Pull request 24111
    # shows close numbers. A linear fit has an intercept of about 9 us and a slope of
    # 5.0 us/MiB, which is 209 GB/s of algorithm bandwidth. A ring all-reduce moves
    # 2(n-1)/n = 1.5 times the tensor per GPU at n = 4, so the bus bandwidth is 313 GB/s,
    # 0.70 of the 450 GB/s NVLink bandwidth per direction.
    "allreduce_bandwidth": 0.70,
}

_HOPPER_PEAK_FLOPS: Mapping[str, str] = {
    # Dense tensor-core peaks of H100 SXM and H200 SXM from the NVIDIA datasheets. The
    # datasheets' 1979 TFLOP/s bf16 figure is the 2:4-sparsity rate and is not used.
    "bfloat16": "989TFLOP/s",
    "float16": "989TFLOP/s",
    "fp8": "1979TFLOP/s",
}

_HOPPER_INTERCONNECT: Mapping[str, str] = {
    # NVLink 4 through NVSwitch: 900 GB/s per GPU for both directions together.
    "nvlink_bandwidth": "450GB/s",
    # Intercept of the all-reduce fit described at allreduce_bandwidth above.
    "nvlink_latency": "9us",
    # A typical HGX build has eight 400 Gb/s InfiniBand adapters per node, one per GPU.
    "internode_bandwidth": "50GB/s",
    # NOTE: an estimate of one InfiniBand hop plus NCCL overhead, not a measurement.
    "internode_latency": "10us",
}

H200_SXM_8: Mapping[str, Any] = {
    "name": "h200-sxm-8",
    "gpu": "NVIDIA H200 SXM",
    "gpus_per_node": 8,
    # nvidia-smi reports 143771MiB of memory on an H200 (marketed as 141 GB).
    "gpu_memory": "143771MiB",
    # HBM3e peak from the NVIDIA H200 datasheet.
    "hbm_bandwidth": "4.8TB/s",
    "peak_flops": dict(_HOPPER_PEAK_FLOPS),
    **_HOPPER_INTERCONNECT,
    "efficiency": dict(_HOPPER_EFFICIENCY),
}

H100_SXM_8: Mapping[str, Any] = {
    "name": "h100-sxm-8",
    "gpu": "NVIDIA H100 SXM",
    "gpus_per_node": 8,
    # nvidia-smi reports 81559MiB of memory on an 80 GB H100 SXM.
    "gpu_memory": "81559MiB",
    # HBM3 peak from the NVIDIA H100 datasheet.
    "hbm_bandwidth": "3.35TB/s",
    "peak_flops": dict(_HOPPER_PEAK_FLOPS),
    **_HOPPER_INTERCONNECT,
    # NOTE: assumed equal to the H200 SXM fractions because the compute units and NVLink
    # are the same. Azure's ND H100 v5 results (same repository) measure copy 2.90 and
    # triad 2.97 TB/s, 0.87-0.89 of the peak, so the HBM fraction may be slightly low.
    "efficiency": dict(_HOPPER_EFFICIENCY),
}

# Node specs by catalog name, without apiVersion and kind.
CATALOG: Mapping[str, Mapping[str, Any]] = {
    "h200-sxm-8": H200_SXM_8,
    "h100-sxm-8": H100_SXM_8,
}
