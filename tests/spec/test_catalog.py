"""Tests of the built-in node catalog."""

from __future__ import annotations

import pytest

from kvplan.spec import builtin_nodes, load_node

MIB = 2**20


def test_builtin_nodes_names() -> None:
    assert sorted(builtin_nodes()) == ["h100-sxm-8", "h200-sxm-8"]


@pytest.mark.parametrize(
    ("name", "field", "expected"),
    [
        ("h200-sxm-8", "gpu_name", "NVIDIA H200 SXM"),
        ("h200-sxm-8", "gpus_per_node", 8),
        ("h200-sxm-8", "gpu_memory_bytes", 143771 * MIB),
        ("h200-sxm-8", "hbm_bandwidth_bytes_per_s", 4.8e12),
        ("h200-sxm-8", "nvlink_bandwidth_bytes_per_s", 450e9),
        ("h200-sxm-8", "nvlink_latency_s", 9e-6),
        ("h200-sxm-8", "internode_bandwidth_bytes_per_s", 50e9),
        ("h200-sxm-8", "internode_latency_s", 10e-6),
        ("h200-sxm-8", "hbm_bandwidth_efficiency", 0.85),
        ("h200-sxm-8", "compute_efficiency", 0.79),
        ("h200-sxm-8", "fp8_compute_efficiency", 0.67),
        ("h200-sxm-8", "allreduce_bandwidth_efficiency", 0.70),
        ("h200-sxm-8", "price_per_gpu_hour", None),
        ("h100-sxm-8", "gpu_name", "NVIDIA H100 SXM"),
        ("h100-sxm-8", "gpus_per_node", 8),
        ("h100-sxm-8", "gpu_memory_bytes", 81559 * MIB),
        ("h100-sxm-8", "hbm_bandwidth_bytes_per_s", 3.35e12),
        ("h100-sxm-8", "nvlink_bandwidth_bytes_per_s", 450e9),
        ("h100-sxm-8", "nvlink_latency_s", 9e-6),
        ("h100-sxm-8", "internode_bandwidth_bytes_per_s", 50e9),
        ("h100-sxm-8", "internode_latency_s", 10e-6),
        ("h100-sxm-8", "hbm_bandwidth_efficiency", 0.85),
        ("h100-sxm-8", "compute_efficiency", 0.79),
        ("h100-sxm-8", "fp8_compute_efficiency", 0.67),
        ("h100-sxm-8", "allreduce_bandwidth_efficiency", 0.70),
        ("h100-sxm-8", "price_per_gpu_hour", None),
    ],
)
def test_catalog_node_field(name: str, field: str, expected) -> None:
    value = getattr(builtin_nodes()[name], field)
    if isinstance(expected, float):
        assert value == pytest.approx(expected, rel=1e-12)
    else:
        assert value == expected


@pytest.mark.parametrize("name", ["h200-sxm-8", "h100-sxm-8"])
def test_catalog_dense_peaks(name: str) -> None:
    peaks = builtin_nodes()[name].peak_flops_per_s
    assert peaks == {
        "bfloat16": pytest.approx(989e12),
        "float16": pytest.approx(989e12),
        "fp8": pytest.approx(1979e12),
    }


def test_load_node_by_catalog_name() -> None:
    assert load_node("h200-sxm-8") == builtin_nodes()["h200-sxm-8"]


def test_builtin_nodes_are_independent_copies() -> None:
    first = builtin_nodes()["h200-sxm-8"]
    first.peak_flops_per_s["fp8"] = 0.0
    assert builtin_nodes()["h200-sxm-8"].peak_flops_per_s["fp8"] == pytest.approx(1979e12)
