"""The Jacobian calibration uses agrees with finite differences in every arrival mode."""

from __future__ import annotations

import numpy as np
import pytest

from kvplan.commands.bench_plan import BenchWorkload, bench_plan_variant
from kvplan.costmodel.calibration import CONSTANT_NAMES, Observation, _Predictor, initial_constants, predicted_metrics

from .conftest import deployment

# Relative step of the central differences, and the agreement required. float32 limits
# both: a smaller step loses digits, a larger one bends with the model's curvature.
STEP = 1e-2
RELATIVE_TOLERANCE = 0.05

WORKLOADS = {
    "batch": BenchWorkload(200, 1000, 0.5, 256, None, None),
    "rate": BenchWorkload(200, 1000, 0.5, 1000, 5.0, None),
    "concurrency": BenchWorkload(200, 1000, 0.5, 640, None, 64),
}


@pytest.mark.parametrize("mode", sorted(WORKLOADS))
def test_jacobian_matches_finite_differences(synthetic_plan, mode):
    variant = bench_plan_variant(synthetic_plan, WORKLOADS[mode])
    assert variant.workload.arrival_mode == mode
    chosen = deployment(2, 256)
    measured = {name: value for name, value in predicted_metrics(variant, chosen).items()
                if name in ("output_throughput", "mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms")}
    predictor = _Predictor(Observation(mode, variant, chosen, measured))
    values = np.array([initial_constants(synthetic_plan)[name] for name in CONSTANT_NAMES])

    _, jacobian = predictor(values)

    for column, name in enumerate(CONSTANT_NAMES):
        if name == "fp8_compute":
            continue
        delta = np.zeros_like(values)
        delta[column] = values[column] * STEP
        upper, _ = predictor(values + delta)
        lower, _ = predictor(values - delta)
        finite = (upper - lower) / (2 * delta[column])
        for row, metric in enumerate(predictor.names):
            scale = max(abs(finite[row]), abs(jacobian[row, column]))
            if scale * values[column] < 1e-4 * abs(predictor.measured[row]):
                continue  # the metric hardly depends on this constant
            assert jacobian[row, column] == pytest.approx(finite[row], rel=RELATIVE_TOLERANCE), (metric, name)
