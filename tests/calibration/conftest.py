"""Shared data of the calibration tests: plans, synthetic observations and result files.

Synthetic results come from the cost model itself, run with known constants that differ
from the built-in node's, so a fit that starts from the node's values has to move every
constant to recover them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import kvplan
from kvplan.commands.bench_plan import BenchWorkload, bench_plan_variant
from kvplan.costmodel.calibration import Observation, predicted_metrics
from kvplan.spec.types import Deployment, Plan

DATA_DIR = Path(__file__).with_name("data")
PLAN_DIR = DATA_DIR / "plans"
SYNTHETIC_PLAN = PLAN_DIR / "synthetic-8b.yaml"

# Constants the synthetic results are generated with. Each differs from the built-in
# H200 node's value (0.85, 0.79, 9 us, 0.5 ms) by 15 % or more.
TRUE_CONSTANTS = {
    "hbm_bandwidth": 0.72,
    "compute": 0.62,
    "fp8_compute": 0.67,
    "nvlink_latency": 14e-6,
    "cpu_overhead_per_step": 1.1e-3,
}

# (run id, tp, max_num_seqs, workload) of each synthetic benchmark, all in batch mode so
# that the model compiles once. TP 1 and TP 2 runs separate the all-reduce latency from
# the per-step host time; short decodes, long decodes and long prompts weigh the host
# time, the HBM bandwidth and the FLOP rate.
SYNTHETIC_RUNS = (
    ("short-tp1", 1, 256, BenchWorkload(32, 128, 0.0, 8, None, None)),
    ("short-tp2", 2, 256, BenchWorkload(32, 128, 0.0, 8, None, None)),
    ("prefill-tp1", 1, 256, BenchWorkload(3000, 16, 0.2, 64, None, None)),
    ("prefill-tp2", 2, 256, BenchWorkload(3000, 16, 0.2, 64, None, None)),
    ("decode-tp1", 1, 256, BenchWorkload(200, 1000, 0.5, 256, None, None)),
    ("decode-tp2", 2, 512, BenchWorkload(200, 1000, 0.5, 512, None, None)),
    ("mixed-tp1", 1, 128, BenchWorkload(1000, 300, 0.5, 300, None, None)),
)


@pytest.fixture(scope="session")
def synthetic_plan() -> Plan:
    return kvplan.load_plan(SYNTHETIC_PLAN)


def deployment(tp: int, max_num_seqs: int) -> Deployment:
    return Deployment(dp=1, tp=tp, pp=1, max_num_seqs=max_num_seqs, max_num_batched_tokens=8192,
                      gpu_memory_utilization=0.9)


@pytest.fixture(scope="session")
def synthetic_observations(synthetic_plan: Plan) -> list[Observation]:
    """One Observation per synthetic run, measured as the model predicts with TRUE_CONSTANTS."""
    observations = []
    for run_id, tp, max_num_seqs, bench in SYNTHETIC_RUNS:
        variant = bench_plan_variant(synthetic_plan, bench)
        chosen = deployment(tp, max_num_seqs)
        measured = predicted_metrics(variant, chosen, TRUE_CONSTANTS)
        observations.append(Observation(run_id, variant, chosen, measured))
    return observations


def vllm_result(observation: Observation, bench: BenchWorkload) -> dict[str, Any]:
    """Return a result document in the layout ``vllm bench serve --save-result`` writes."""
    config = observation.deployment
    document: dict[str, Any] = {
        "date": "20260101-000000",
        "backend": "vllm",
        "label": None,
        "model_id": "synthetic",
        "num_prompts": bench.num_prompts,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": None,
        "completed": bench.num_prompts,
        "failed": 0,
        "kvplan_run": observation.label,
        **{f"kvplan_{key}": str(value) for key, value in dataclasses.asdict(config).items()},
        "kvplan_input_len": str(bench.input_len),
        "kvplan_output_len": str(bench.output_len),
        "kvplan_range_ratio": str(bench.range_ratio),
    }
    document.update(observation.measured)
    return document


@pytest.fixture(scope="session")
def synthetic_result_files(synthetic_observations: list[Observation], tmp_path_factory) -> list[Path]:
    """The synthetic observations written as vLLM result files, one per run."""
    folder = tmp_path_factory.mktemp("synthetic-results")
    paths = []
    for observation, (_, _, _, bench) in zip(synthetic_observations, SYNTHETIC_RUNS):
        path = folder / f"{observation.label}.json"
        path.write_text(json.dumps(vllm_result(observation, bench)), encoding="utf-8")
        paths.append(path)
    return paths
