"""Least-squares fit of the node's and engine's efficiency constants to measurements.

The cost model's efficiency constants (achieved HBM bandwidth and FLOP/s fractions, the
all-reduce latency, the engine's per-step host time) enter :class:`ModelInputs` as
array leaves, so the jitted model is a differentiable function of them. A fit replaces
those leaves with a vector of parameters, takes the Jacobian of the predicted metrics
with ``jax.jacfwd`` and runs a projected Levenberg-Marquardt (damped Gauss-Newton)
iteration on the log-ratios ``log(predicted / measured)``, with each constant kept
inside physical bounds.

Two kinds of measurement are fitted:

* :class:`Observation`: one benchmark run of a deployment under a workload, with
  summary metrics named as ``vllm bench serve`` names them (``mean_ttft_ms``, ...).
* :class:`StepObservation`: the wall time of one scheduler step with a given decode
  batch, context and prefill chunk, as a profiler or a hand-written timing loop reports.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kvplan.costmodel import constants
from kvplan.costmodel.evaluate import (
    EXPERT_PARALLEL_WITHOUT_EXPERTS,
    INVALID_LAYOUT,
    KV_TOO_SMALL,
    OVER_GPU_BUDGET,
    TP_ACROSS_NODES,
    WEIGHTS_DO_NOT_FIT,
    CostModel,
    evaluate_arrays,
)
from kvplan.costmodel.hardware import round_time, select_layout
from kvplan.costmodel.inputs import ModelInputs
from kvplan.spec.errors import KvplanError
from kvplan.spec.types import Deployment, Plan


@dataclasses.dataclass(frozen=True)
class Constant:
    """One fitted constant: where it lives in the specs, its unit and its bounds."""

    name: str
    # "node" (a Node spec key) or "engine" (a Plan's engine key).
    section: str
    description: str
    unit: str  # "fraction" or "s"
    lower: float
    upper: float
    # Typical magnitude. The fit works in units of it, so every parameter is of order 1.
    scale: float


# The fitted constants, in the order of the parameter vector. Fractions stay in
# [0.01, 1]: a measured rate above the datasheet peak means the peak or the model is
# wrong, not that the fraction exceeds 1. Times stay non-negative.
CONSTANTS: tuple[Constant, ...] = (
    Constant("hbm_bandwidth", "node", "achieved fraction of the peak HBM bandwidth", "fraction", 0.01, 1.0, 0.85),
    Constant("compute", "node", "achieved fraction of the bf16/fp16 tensor-core peak", "fraction", 0.01, 1.0, 0.79),
    Constant("fp8_compute", "node", "achieved fraction of the fp8 tensor-core peak", "fraction", 0.01, 1.0, 0.67),
    Constant("nvlink_latency", "node", "fixed latency of one all-reduce or stage send inside a node", "s",
             0.0, 1e-2, 9e-6),
    Constant("cpu_overhead_per_step", "engine", "engine host time per scheduler step", "s", 0.0, 1.0,
             constants.CPU_OVERHEAD_PER_STEP_S),
)
CONSTANT_NAMES = tuple(constant.name for constant in CONSTANTS)
_INDEX = {name: index for index, name in enumerate(CONSTANT_NAMES)}

# Metrics of a ``vllm bench serve --save-result`` file that the model predicts, with the
# model output, statistic and factor from the model's SI units to the file's units.
# vllm/benchmarks/serve.py (vllm-project/vllm, commit def9ce85ba10) writes the
# ``mean_``, ``median_`` and ``p<N>_`` keys of each metric named in
# --percentile-metrics, ``output_throughput`` in tokens/s and ``duration`` in seconds.
# ITL is left out because the model has no inter-token gaps apart from TPOT.
_LATENCY_OUTPUTS = {"ttft": "ttft", "tpot": "tpot", "e2el": "e2e"}
_STATISTICS = {"mean": "mean", "median": "p50", "p90": "p90", "p99": "p99"}
METRICS: tuple[str, ...] = ("output_throughput", "duration") + tuple(
    f"{statistic}_{metric}_ms" for metric in _LATENCY_OUTPUTS for statistic in _STATISTICS
)
_METRIC_INDEX = {name: index for index, name in enumerate(METRICS)}


@dataclasses.dataclass(frozen=True)
class Observation:
    """One benchmark run: the deployment, the plan with the run's workload, and its metrics."""

    label: str
    plan: Plan
    deployment: Deployment
    # Metric name (one of ``METRICS``) to measured value, in the result file's units.
    measured: Mapping[str, float]
    # File the measurement came from, for error messages, or empty when there is none.
    source: str = ""


@dataclasses.dataclass(frozen=True)
class StepObservation:
    """One measured scheduler step of a replica.

    ``decode_requests`` requests decode one token each and read ``context_tokens`` KV
    tokens on average; ``prefill_tokens`` prompt tokens of one request are computed in
    the same step.
    """

    label: str
    plan: Plan
    tp: int
    pp: int
    decode_requests: float
    context_tokens: float
    prefill_tokens: float
    step_time_ms: float


def initial_constants(plan: Plan) -> dict[str, float]:
    """Return the plan's current value of each constant in ``CONSTANTS``."""
    node = plan.node
    step = plan.engine.cpu_overhead_per_step_s
    return {
        "hbm_bandwidth": node.hbm_bandwidth_efficiency,
        "compute": node.compute_efficiency,
        "fp8_compute": node.fp8_compute_efficiency,
        "nvlink_latency": node.nvlink_latency_s,
        "cpu_overhead_per_step": constants.CPU_OVERHEAD_PER_STEP_S if step is None else step,
    }


# ---------------------------------------------------------------------------------------
# Differentiable predictions
# ---------------------------------------------------------------------------------------


def _peaks(plan: Plan) -> np.ndarray:
    """Return [peak HBM bytes/s, peak FLOP/s of the weight dtype, 1.0 if fp8 else 0.0]."""
    dtype = plan.model.weight_dtype
    return np.array([plan.node.hbm_bandwidth_bytes_per_s, plan.node.peak_flops_per_s[dtype],
                     1.0 if dtype == "fp8" else 0.0], dtype=np.float32)


def _with_constants(inputs: ModelInputs, values, peaks) -> ModelInputs:
    """Return ``inputs`` with the constants' leaves computed from ``values``.

    ``values`` contains the constants in SI units, ordered as ``CONSTANTS``. The all-reduce
    bandwidth fraction is not fitted, so the NVLink bandwidth leaf stays as built.
    """
    compute = jnp.where(peaks[2] > 0, values[_INDEX["fp8_compute"]], values[_INDEX["compute"]])
    return inputs._replace(
        hbm_bytes_per_s=peaks[0] * values[_INDEX["hbm_bandwidth"]],
        flops_per_s=peaks[1] * compute,
        nvlink_latency_s=values[_INDEX["nvlink_latency"]],
        cpu_overhead_per_step_s=values[_INDEX["cpu_overhead_per_step"]],
    )


def _metric_vector(raw: dict[str, Any]) -> jnp.ndarray:
    """Stack the model outputs of row 0 in the order and units of ``METRICS``."""
    values = [raw["output_tokens_per_s"][0], raw["makespan_s"][0]]
    for output in _LATENCY_OUTPUTS.values():
        latency = raw[output]
        for statistic in _STATISTICS.values():
            values.append(getattr(latency, statistic)[0] * 1000.0)
    return jnp.stack(values)


@functools.partial(jax.jit, static_argnames=("mode",))
def _run_metrics(values, inputs, configs, peaks, mode):
    def metrics(values):
        raw = evaluate_arrays(_with_constants(inputs, values, peaks), configs, mode)
        return _metric_vector(raw), raw["reason"][0]

    (predicted, reason), jacobian = metrics(values), jax.jacfwd(lambda v: metrics(v)[0])(values)
    return predicted, jacobian, reason


# Infeasibility codes of ``evaluate_arrays`` in words.
_INFEASIBLE = {
    INVALID_LAYOUT: "its tp and pp do not divide the model",
    OVER_GPU_BUDGET: "it needs more GPUs than the plan's gpu_budget",
    TP_ACROSS_NODES: "its tp exceeds the GPUs of one node",
    WEIGHTS_DO_NOT_FIT: "its weights do not fit in GPU memory",
    KV_TOO_SMALL: "its KV cache holds less than one longest request",
    EXPERT_PARALLEL_WITHOUT_EXPERTS: "it enables expert parallelism for a dense model",
}


@jax.jit
def _step_time(values, inputs, peaks, i_tp, i_pp, tp, pp, decodes, context, prefill):
    def step_ms(values):
        with_values = _with_constants(inputs, values, peaks)
        layout = select_layout(with_values, i_tp, i_pp)
        prefill_requests = jnp.where(prefill > 0, 1.0, 0.0)
        step = round_time(with_values, layout, tp, pp, decodes, prefill, prefill_requests,
                          decodes * context, 0.5 * prefill)
        return step.total * 1000.0

    return step_ms(values), jax.grad(step_ms)(values)


class _Predictor:
    """Predictions and their Jacobian for one observation, with its inputs built once."""

    def __init__(self, observation: Observation | StepObservation):
        self.observation = observation
        plan = observation.plan
        self.peaks = jnp.asarray(_peaks(plan))
        if isinstance(observation, StepObservation):
            model = CostModel(plan, tp_values=(observation.tp,), pp_values=(observation.pp,))
            self.inputs = model.inputs
            self.i_tp = model._tp_values.index(observation.tp)
            self.i_pp = model._pp_values.index(observation.pp)
            self.names = ("step_time_ms",)
            self.measured = np.array([observation.step_time_ms], dtype=np.float64)
        else:
            model = CostModel(plan)
            self.configs = model.config_batch([observation.deployment])
            self.inputs = model.inputs
            self.mode = plan.workload.arrival_mode
            self.names = tuple(name for name in METRICS if name in observation.measured)
            self.measured = np.array([observation.measured[name] for name in self.names], dtype=np.float64)
            self._check_feasible(observation)

    def _check_feasible(self, observation: Observation) -> None:
        values = jnp.asarray([initial_constants(observation.plan)[name] for name in CONSTANT_NAMES],
                             dtype=jnp.float32)
        _, _, reason = _run_metrics(values, self.inputs, self.configs, self.peaks, self.mode)
        if int(reason) != 0:
            deployment = observation.deployment
            why = _INFEASIBLE.get(int(reason), f"infeasibility code {int(reason)}")
            where = f"{observation.source}: result {observation.label}" if observation.source else observation.label
            raise KvplanError(
                f"{where}: the cost model cannot evaluate deployment dp={deployment.dp} "
                f"tp={deployment.tp} pp={deployment.pp} of plan {observation.plan.name} because {why}; "
                "check that the result belongs to this plan's model and node"
            )

    def __call__(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the predicted metrics in ``self.names`` and d(metric)/d(constant)."""
        values = jnp.asarray(values, dtype=jnp.float32)
        observation = self.observation
        if isinstance(observation, StepObservation):
            predicted, gradient = _step_time(
                values, self.inputs, self.peaks, self.i_tp, self.i_pp, float(observation.tp),
                float(observation.pp), float(observation.decode_requests), float(observation.context_tokens),
                float(observation.prefill_tokens))
            return np.array([float(predicted)]), np.asarray(gradient, dtype=np.float64)[None, :]
        predicted, jacobian, _ = _run_metrics(values, self.inputs, self.configs, self.peaks, self.mode)
        rows = [_METRIC_INDEX[name] for name in self.names]
        return np.asarray(predicted, dtype=np.float64)[rows], np.asarray(jacobian, dtype=np.float64)[rows]


# ---------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetricError:
    """Error of the model on one metric over a set of observations."""

    metric: str
    count: int
    # Mean of |predicted / measured - 1| and the mean signed log-ratio, over the observations.
    mean_abs_relative_error: float
    mean_log_ratio: float


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted and measured value of one metric of one observation."""

    label: str
    metric: str
    measured: float
    predicted: float


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    initial: dict[str, float]
    fitted: dict[str, float]
    # Constants the fit changed. The others kept their initial values.
    fitted_names: tuple[str, ...]
    # Constants held because the observations do not depend on them, with the reason.
    undetermined: dict[str, str]
    # Constants that ended on a bound.
    at_bound: dict[str, str]
    # Pairs of fitted constants whose estimates are correlated beyond
    # ``CORRELATION_THRESHOLD``, with the correlation: the results fix only a
    # combination of the two, so each value alone is not reliable.
    confounded: tuple[tuple[str, str, float], ...]
    # Independent combinations of the fitted constants that the observations determine
    # (the numerical rank of their Jacobian). Below len(fitted_names), some constants
    # stayed near their starting values for want of data.
    determined_directions: int
    iterations: int
    converged: bool
    train_labels: tuple[str, ...]
    holdout_labels: tuple[str, ...]
    train_before: tuple[MetricError, ...]
    train_after: tuple[MetricError, ...]
    holdout_before: tuple[MetricError, ...]
    holdout_after: tuple[MetricError, ...]
    predictions_after: tuple[Prediction, ...]


# Levenberg-Marquardt settings: starting damping, its factors on a rejected and an
# accepted step, and the stopping tests on the relative cost decrease and step size.
INITIAL_DAMPING = 1e-3
DAMPING_INCREASE = 10.0
DAMPING_DECREASE = 0.3
MAX_ITERATIONS = 100
COST_TOLERANCE = 1e-10
STEP_TOLERANCE = 1e-8
# A constant whose column of the scaled Jacobian has a norm below this fraction of the
# largest column's norm is reported as undetermined by the observations and held.
SENSITIVITY_THRESHOLD = 1e-4
# Correlation of two fitted constants, from the Gauss-Newton covariance (J'J)^-1, above
# which the pair is reported as confounded.
CORRELATION_THRESHOLD = 0.98
# Weight of the pull toward the starting values, per constant in units of its scale. A
# constant the data determine moves by a fraction of order PRIOR_WEIGHT^2 / (data
# curvature) less than without it, far below 1 %. One they do not determine stays put.
PRIOR_WEIGHT = 0.01
# Singular values of the observations' Jacobian below this fraction of the largest
# count as directions the observations do not determine.
RANK_TOLERANCE = 1e-3


class _Problem:
    """Residuals log(predicted / measured) of a set of observations, in scaled parameters.

    With ``prior_weight`` > 0, one residual per free constant, prior_weight x (x - x0)
    in units of the constant's scale, keeps directions that the observations do not
    determine at their starting values (Tikhonov regularization).
    """

    def __init__(self, predictors: Sequence[_Predictor], fixed: np.ndarray, free: Sequence[int],
                 prior_weight: float = 0.0):
        self.predictors = predictors
        self.fixed = fixed
        self.free = list(free)
        self.scales = np.array([CONSTANTS[i].scale for i in self.free])
        self.prior_weight = prior_weight
        self.start = fixed[self.free] / self.scales

    def values(self, x: np.ndarray) -> np.ndarray:
        values = self.fixed.copy()
        values[self.free] = x * self.scales
        return values

    def residuals(self, x: np.ndarray, with_jacobian: bool = True):
        values = self.values(x)
        residuals = []
        jacobians = []
        for predictor in self.predictors:
            predicted, jacobian = predictor(values)
            if not np.all(np.isfinite(predicted)) or np.any(predicted <= 0):
                return None, None
            residuals.append(np.log(predicted / predictor.measured))
            # d log(p) / d x = (dp / d value) * scale / p
            jacobians.append(jacobian[:, self.free] * self.scales[None, :] / predicted[:, None])
        if self.prior_weight > 0:
            residuals.append(self.prior_weight * (x - self.start))
            jacobians.append(self.prior_weight * np.eye(len(self.free)))
        residual = np.concatenate(residuals)
        jacobian = np.concatenate(jacobians) if with_jacobian else None
        return residual, jacobian


def _errors(predictors: Sequence[_Predictor], values: np.ndarray) -> tuple[tuple[MetricError, ...], list[Prediction]]:
    by_metric: dict[str, list[tuple[float, float]]] = {}
    predictions = []
    for predictor in predictors:
        predicted, _ = predictor(values)
        for name, value, measured in zip(predictor.names, predicted, predictor.measured):
            by_metric.setdefault(name, []).append((float(value), float(measured)))
            predictions.append(Prediction(predictor.observation.label, name, float(measured), float(value)))
    errors = []
    for name, pairs in by_metric.items():
        finite = [(p, m) for p, m in pairs if math.isfinite(p) and p > 0]
        relative = [abs(p / m - 1.0) for p, m in finite]
        logs = [math.log(p / m) for p, m in finite]
        errors.append(MetricError(
            name, len(pairs),
            float(np.mean(relative)) if relative and len(finite) == len(pairs) else math.inf,
            float(np.mean(logs)) if logs and len(finite) == len(pairs) else math.nan,
        ))
    return tuple(errors), predictions


def split_holdout(labels: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split observation indices into a training and a held-out set, reproducibly.

    The held-out set gets round(fraction x count) observations, at least one and at
    most count - 1, so both sets are non-empty. Raises KvplanError for fewer than two.
    """
    count = len(labels)
    if fraction <= 0:
        return list(range(count)), []
    if count < 2:
        raise KvplanError(f"--holdout needs at least 2 results, but got {count}; add results or drop --holdout")
    held = min(max(round(fraction * count), 1), count - 1)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return sorted(order[held:]), sorted(order[:held])


def fit_constants(
    observations: Sequence[Observation | StepObservation],
    initial: Mapping[str, float],
    *,
    fit: Sequence[str] = CONSTANT_NAMES,
    holdout: float = 0.0,
    seed: int = 0,
) -> CalibrationResult:
    """Fit the constants named in ``fit`` to ``observations`` by bounded least squares.

    Minimizes the sum over every measured metric of log(predicted / measured)^2, so each
    metric counts by its relative error whatever its unit. ``holdout`` keeps that
    fraction of the observations out of the fit and reports the error on them.
    """
    unknown = [name for name in fit if name not in _INDEX]
    if unknown:
        raise KvplanError(f"unknown constant(s) {', '.join(unknown)}; choose from {', '.join(CONSTANT_NAMES)}")
    if not observations:
        raise KvplanError("no observations to fit")
    predictors = [_Predictor(observation) for observation in observations]
    train, held = split_holdout([o.label for o in observations], holdout, seed)
    train_predictors = [predictors[i] for i in train]
    held_predictors = [predictors[i] for i in held]

    start = np.array([float(initial[name]) for name in CONSTANT_NAMES])
    for index, constant in enumerate(CONSTANTS):
        start[index] = min(max(start[index], constant.lower), constant.upper)

    free, undetermined = _determined(train_predictors, start, [_INDEX[name] for name in fit])
    fitted = start.copy()
    iterations = 0
    converged = True
    at_bound: dict[str, str] = {}
    confounded: list[tuple[str, str, float]] = []
    determined_directions = 0
    if free:
        problem = _Problem(train_predictors, start, free, PRIOR_WEIGHT)
        x, iterations, converged = _levenberg_marquardt(problem, start[free] / problem.scales)
        fitted = problem.values(x)
        unregularized = _Problem(train_predictors, start, free)
        confounded = _confounded_pairs(unregularized, x)
        determined_directions = _rank(unregularized, x)
        for index in free:
            constant = CONSTANTS[index]
            if fitted[index] <= constant.lower * (1 + 1e-6) + 1e-15:
                at_bound[constant.name] = f"at its lower bound {constant.lower:g}"
            elif fitted[index] >= constant.upper * (1 - 1e-6):
                at_bound[constant.name] = f"at its upper bound {constant.upper:g}"

    train_before, _ = _errors(train_predictors, start)
    train_after, predictions = _errors(train_predictors, fitted)
    holdout_before, _ = _errors(held_predictors, start) if held_predictors else ((), [])
    holdout_after, held_predictions = _errors(held_predictors, fitted) if held_predictors else ((), [])
    return CalibrationResult(
        initial={name: float(start[i]) for i, name in enumerate(CONSTANT_NAMES)},
        fitted={name: float(fitted[i]) for i, name in enumerate(CONSTANT_NAMES)},
        fitted_names=tuple(CONSTANT_NAMES[i] for i in free),
        undetermined=undetermined,
        at_bound=at_bound,
        confounded=tuple(confounded),
        determined_directions=determined_directions,
        iterations=iterations,
        converged=converged,
        train_labels=tuple(observations[i].label for i in train),
        holdout_labels=tuple(observations[i].label for i in held),
        train_before=train_before,
        train_after=train_after,
        holdout_before=holdout_before,
        holdout_after=holdout_after,
        predictions_after=tuple(predictions + held_predictions),
    )


def _determined(predictors: Sequence[_Predictor], start: np.ndarray, requested: list[int]) -> tuple[list[int], dict[str, str]]:
    """Split the requested constants into those the observations depend on and the rest."""
    undetermined: dict[str, str] = {}
    if not requested:
        return [], undetermined
    problem = _Problem(predictors, start, requested)
    residual, jacobian = problem.residuals(start[requested] / problem.scales)
    if residual is None:
        raise KvplanError(
            "the cost model predicts a non-finite or non-positive value for a measured metric with the "
            "plan's constants; check that each result's deployment is feasible with `kvplan evaluate`"
        )
    norms = np.linalg.norm(jacobian, axis=0)
    largest = float(np.max(norms)) if norms.size else 0.0
    free = []
    for index, norm in zip(requested, norms):
        if largest > 0 and norm > SENSITIVITY_THRESHOLD * largest:
            free.append(index)
        else:
            undetermined[CONSTANT_NAMES[index]] = "no fitted metric depends on it"
    return free, undetermined


def _rank(problem: _Problem, x: np.ndarray) -> int:
    _, jacobian = problem.residuals(x)
    if jacobian is None or jacobian.size == 0:
        return 0
    singular = np.linalg.svd(jacobian, compute_uv=False)
    return int(np.sum(singular > RANK_TOLERANCE * singular[0])) if singular[0] > 0 else 0


def _confounded_pairs(problem: _Problem, x: np.ndarray) -> list[tuple[str, str, float]]:
    """Return the pairs of fitted constants whose Gauss-Newton correlation exceeds the threshold."""
    _, jacobian = problem.residuals(x)
    if jacobian is None or len(problem.free) < 2:
        return []
    covariance = np.linalg.pinv(jacobian.T @ jacobian)
    deviation = np.sqrt(np.maximum(np.diag(covariance), 1e-300))
    correlation = covariance / np.outer(deviation, deviation)
    pairs = []
    for a in range(len(problem.free)):
        for b in range(a + 1, len(problem.free)):
            if abs(correlation[a, b]) > CORRELATION_THRESHOLD:
                pairs.append((CONSTANT_NAMES[problem.free[a]], CONSTANT_NAMES[problem.free[b]],
                              float(correlation[a, b])))
    return pairs


def _levenberg_marquardt(problem: _Problem, x: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Minimize 0.5 |r(x)|^2 within the constants' bounds and return x, iterations, converged.

    Each step solves (J'J + damping diag(J'J)) dx = -J'r for the parameters that are not
    held on a bound by the gradient, and projects the result onto the bounds. A step is
    kept only when it lowers the cost.
    """
    lower = np.array([CONSTANTS[i].lower for i in problem.free]) / problem.scales
    upper = np.array([CONSTANTS[i].upper for i in problem.free]) / problem.scales
    x = np.clip(x, lower, upper)
    residual, jacobian = problem.residuals(x)
    cost = 0.5 * float(residual @ residual)
    damping = INITIAL_DAMPING
    for iteration in range(1, MAX_ITERATIONS + 1):
        gradient = jacobian.T @ residual
        # A parameter on a bound whose gradient points outwards stays there this step.
        active = ~(((x <= lower) & (gradient > 0)) | ((x >= upper) & (gradient < 0)))
        if not np.any(active) or np.max(np.abs(gradient[active])) < 1e-14:
            return x, iteration, True
        normal = jacobian[:, active].T @ jacobian[:, active]
        improved = False
        while damping < 1e12:
            system = normal + damping * np.diag(np.diag(normal) + 1e-12)
            step = np.zeros_like(x)
            step[active] = np.linalg.solve(system, -gradient[active])
            candidate = np.clip(x + step, lower, upper)
            new_residual, new_jacobian = problem.residuals(candidate)
            if new_residual is not None:
                new_cost = 0.5 * float(new_residual @ new_residual)
                if new_cost < cost:
                    improved = True
                    break
            damping *= DAMPING_INCREASE
        if not improved:
            return x, iteration, True
        moved = float(np.max(np.abs(candidate - x)))
        decrease = cost - new_cost
        x, residual, jacobian, cost = candidate, new_residual, new_jacobian, new_cost
        damping = max(damping * DAMPING_DECREASE, 1e-12)
        if decrease <= COST_TOLERANCE * max(cost, 1e-30) or moved < STEP_TOLERANCE:
            return x, iteration, True
    return x, MAX_ITERATIONS, False


def predicted_metrics(plan: Plan, deployment: Deployment, values: Mapping[str, float] | None = None) -> dict[str, float]:
    """Return the model's value of each metric in ``METRICS`` that is finite, in the result file's units."""
    observation = Observation("prediction", plan, deployment, {name: 1.0 for name in METRICS})
    predictor = _Predictor(observation)
    vector = np.array([float((values or initial_constants(plan))[name]) for name in CONSTANT_NAMES])
    predicted, _ = predictor(vector)
    return {name: float(value) for name, value in zip(predictor.names, predicted) if math.isfinite(value)}
