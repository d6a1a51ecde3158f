"""Batched evaluation of candidate deployments: the cost model's public entry point."""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from kvplan.costmodel.attribution import share_metrics, time_components
from kvplan.costmodel.hardware import apply_expert_parallel, kv_memory, select_layout
from kvplan.costmodel.inputs import ConfigBatch, ModelInputs, build_model_inputs
from kvplan.costmodel.scheduling import batch_replica, concurrency_replica, rate_replica
from kvplan.spec.limits import MAX_COUNT, MAX_GPUS
from kvplan.spec.types import Deployment, Plan

# Reason codes returned by the traced model; the Python side turns them into sentences.
FEASIBLE = 0
INVALID_LAYOUT = 1
OVER_GPU_BUDGET = 2
TP_ACROSS_NODES = 3
WEIGHTS_DO_NOT_FIT = 4
KV_TOO_SMALL = 5
EXPERT_PARALLEL_WITHOUT_EXPERTS = 6

# Largest rounding error accepted in a reported TPOT, relative to its value; beyond it the
# TPOT statistics are reported as undefined (see ``CostModel._tpot_resolved``).
TPOT_RELATIVE_TOLERANCE = 0.01

# Rows of every call of ``evaluate_arrays`` from ``CostModel``: deployments are evaluated
# in chunks of this many rows, the last one padded, so one plan compiles the model once.
BATCH_ROWS = 64
# Older name of ``BATCH_ROWS``.
MIN_BATCH_ROWS = BATCH_ROWS

_REPLICA_MODELS = {
    "batch": batch_replica,
    "rate": rate_replica,
    "concurrency": concurrency_replica,
}


def _evaluate_one(inputs: ModelInputs, mode: str, config: ConfigBatch) -> dict[str, Any]:
    dp = config.dp.astype(jnp.float32)
    tp = config.tp.astype(jnp.float32)
    pp = config.pp.astype(jnp.float32)
    max_num_seqs = config.max_num_seqs.astype(jnp.float32)
    max_num_batched_tokens = config.max_num_batched_tokens.astype(jnp.float32)

    layout = apply_expert_parallel(inputs, select_layout(inputs, config.i_tp, config.i_pp), dp, tp, pp,
                                   config.enable_expert_parallel)
    memory = kv_memory(inputs, layout, tp, max_num_seqs, max_num_batched_tokens,
                       config.gpu_memory_utilization)
    replica = _REPLICA_MODELS[mode](inputs, layout, memory, dp, tp, pp, max_num_seqs,
                                    max_num_batched_tokens)

    gpus = dp * tp * pp
    reason = jnp.select(
        [
            ~inputs.layout_valid[config.i_tp, config.i_pp],
            (config.enable_expert_parallel > 0) & (inputs.num_experts == 0),
            gpus > inputs.gpu_budget,
            tp > inputs.gpus_per_node,
            ~memory.weights_fit,
            memory.kv_capacity_tokens < inputs.max_request_tokens,
        ],
        [INVALID_LAYOUT, EXPERT_PARALLEL_WITHOUT_EXPERTS, OVER_GPU_BUDGET, TP_ACROSS_NODES,
         WEIGHTS_DO_NOT_FIT, KV_TOO_SMALL],
        default=FEASIBLE,
    )
    step = replica.step
    return {
        "reason": reason,
        "gpus": gpus,
        "makespan_s": replica.makespan_s,
        "output_tokens_per_s": replica.output_tokens_per_s,
        "ttft": replica.ttft,
        "tpot": replica.tpot,
        "e2e": replica.e2e,
        "kv_capacity_tokens": memory.kv_capacity_tokens,
        "kv_memory_bytes_per_gpu": memory.kv_memory_bytes_per_gpu,
        "weight_bytes_per_gpu": memory.weight_bytes_per_gpu,
        "peak_kv_usage": replica.peak_kv_usage,
        "preemptions": replica.preemptions,
        "preemptions_per_request": replica.preemptions_per_request,
        "running_requests": replica.running_requests,
        "step_time_s": step.total,
        "step_parts": jnp.stack([step.compute, step.weight_read, step.kv_read, step.communication,
                                 step.fixed_gpu + step.cpu]),
        "kv_bound": replica.kv_bound,
        "budget_bound": replica.budget_bound,
        "seqs_bound": (max_num_seqs < replica.running_requests * 1.0001) & ~replica.kv_bound,
        "keeps_up": replica.keeps_up,
        "max_arrival_rate_per_s": replica.max_arrival_rate_per_s,
        "attribution": time_components(inputs, layout, tp, pp, dp, max_num_batched_tokens, replica),
    }


# Traces of ``evaluate_arrays`` in this process, by arrival mode. Each trace is followed
# by an XLA compilation unless JAX's persistent compilation cache holds the result.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


@functools.partial(jax.jit, static_argnames=("mode",))
def evaluate_arrays(inputs: ModelInputs, configs: ConfigBatch, mode: str) -> dict[str, Any]:
    """Evaluate every row of ``configs``; each output leaf has a leading axis of rows."""
    TRACE_COUNTS[mode] += 1  # runs only while JAX traces, not on cached calls
    return jax.vmap(_evaluate_one, in_axes=(None, None, 0))(inputs, mode, configs)


BOTTLENECK_PARTS = ("compute", "weight_bandwidth", "kv_bandwidth", "communication", "engine_overhead")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Predicted behaviour of one deployment; ``metrics`` values are finite or None."""

    config: Deployment
    feasible: bool
    infeasible_reason: str | None
    metrics: dict[str, Any]


def _range_problem(deployment: Deployment) -> str | None:
    """Return why a deployment's settings lie outside what the model evaluates, or None."""
    for name, limit in (("dp", MAX_GPUS), ("tp", MAX_GPUS), ("pp", MAX_GPUS),
                        ("max_num_seqs", MAX_COUNT), ("max_num_batched_tokens", MAX_COUNT)):
        value = getattr(deployment, name)
        if value > limit:
            return f"{name} {value:,} is above the limit of {limit:,}"
    return None


def _overflow_reason(metric: str) -> str:
    return (f"the cost model's {metric} is not a finite float32 number for this deployment; check the"
            " plan for rates, sizes or counts far outside real hardware and workloads")


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _latency_dict(latency, row: int) -> dict[str, float | None]:
    return {
        "mean": _finite_or_none(latency.mean[row]),
        "p50": _finite_or_none(latency.p50[row]),
        "p90": _finite_or_none(latency.p90[row]),
        "p99": _finite_or_none(latency.p99[row]),
    }


def _power_of_two_values(limit: int) -> list[int]:
    values = []
    value = 1
    while value <= limit:
        values.append(value)
        value *= 2
    return values


class CostModel:
    """The cost model bound to one plan.

    Builds the plan's array inputs once per set of TP and PP degrees and evaluates
    deployments in batches through one jitted, vmapped function.
    """

    def __init__(self, plan: Plan, tp_values: Iterable[int] = (), pp_values: Iterable[int] = ()):
        self.plan = plan
        budget = plan.search.gpu_budget
        self._tp_values = tuple(sorted(set(_power_of_two_values(budget)) | set(plan.search.tp or ())
                                       | set(tp_values)))
        self._pp_values = tuple(sorted(set(_power_of_two_values(budget)) | set(plan.search.pp or ())
                                       | set(pp_values)))
        self._build()

    def _build(self) -> None:
        self.inputs, self._layout_reasons = build_model_inputs(self.plan, self._tp_values, self._pp_values)
        self.inputs = jax.tree_util.tree_map(jnp.asarray, self.inputs)

    def _ensure_degrees(self, deployments: list[Deployment]) -> None:
        missing_tp = {d.tp for d in deployments} - set(self._tp_values)
        missing_pp = {d.pp for d in deployments} - set(self._pp_values)
        if missing_tp or missing_pp:
            self._tp_values = tuple(sorted(set(self._tp_values) | missing_tp))
            self._pp_values = tuple(sorted(set(self._pp_values) | missing_pp))
            self._build()

    def config_batch(self, deployments: list[Deployment]) -> ConfigBatch:
        self._ensure_degrees(deployments)
        tp_index = {value: i for i, value in enumerate(self._tp_values)}
        pp_index = {value: i for i, value in enumerate(self._pp_values)}
        return ConfigBatch(
            dp=np.array([d.dp for d in deployments], dtype=np.int32),
            tp=np.array([d.tp for d in deployments], dtype=np.int32),
            pp=np.array([d.pp for d in deployments], dtype=np.int32),
            i_tp=np.array([tp_index[d.tp] for d in deployments], dtype=np.int32),
            i_pp=np.array([pp_index[d.pp] for d in deployments], dtype=np.int32),
            max_num_seqs=np.array([d.max_num_seqs for d in deployments], dtype=np.int32),
            max_num_batched_tokens=np.array([d.max_num_batched_tokens for d in deployments], dtype=np.int32),
            gpu_memory_utilization=np.array([d.gpu_memory_utilization for d in deployments],
                                            dtype=np.float32),
            # None (the plan's setting, expert parallelism off) counts as off.
            enable_expert_parallel=np.array([1.0 if d.enable_expert_parallel else 0.0 for d in deployments],
                                            dtype=np.float32),
        )

    def evaluate_raw(self, deployments: list[Deployment]) -> dict[str, Any]:
        """Evaluate ``deployments`` and return the model's arrays (one row each).

        The model runs on chunks of ``BATCH_ROWS`` rows, the last chunk padded with
        copies of the first deployment, so every call has the same shape and a search
        compiles the model once per plan whatever its batch sizes.
        """
        rows = len(deployments)
        padded_rows = -(-rows // BATCH_ROWS) * BATCH_ROWS
        padded = list(deployments) + [deployments[0]] * (padded_rows - rows)
        batch = self.config_batch(padded)
        mode = self.plan.workload.arrival_mode
        chunks = []
        for start in range(0, padded_rows, BATCH_ROWS):
            chunk = jax.tree_util.tree_map(lambda column: column[start:start + BATCH_ROWS], batch)
            chunks.append(evaluate_arrays(self.inputs, chunk, mode))
        return jax.tree_util.tree_map(
            lambda *leaves: np.concatenate([np.asarray(leaf) for leaf in leaves])[:rows], *chunks
        )

    def evaluate(self, deployments: list[Deployment]) -> list[Evaluation]:
        if not deployments:
            return []
        # Settings beyond the spec limits (from kvplan evaluate --config, say) would
        # overflow the model's int32 arrays, so they are reported instead of evaluated.
        problems = [_range_problem(deployment) for deployment in deployments]
        in_range = [deployment for deployment, problem in zip(deployments, problems) if problem is None]
        evaluated = iter([])
        if in_range:
            raw = self.evaluate_raw(in_range)
            evaluated = iter([self._evaluation(raw, row, deployment) for row, deployment in enumerate(in_range)])
        model_kv_bytes = float(self.inputs.model_kv_bytes_per_token)
        return [
            next(evaluated) if problem is None else Evaluation(deployment, False, problem, {
                "gpus": deployment.gpus,
                "kv_capacity_tokens": None,
                "kv_bytes_per_token": model_kv_bytes,
                "weight_bytes_per_gpu": None,
            })
            for deployment, problem in zip(deployments, problems)
        ]

    def _reason_text(self, code: int, row: int, raw: dict[str, Any], deployment: Deployment) -> str | None:
        plan = self.plan
        if code == FEASIBLE:
            return None
        if code == INVALID_LAYOUT:
            i_tp = self._tp_values.index(deployment.tp)
            i_pp = self._pp_values.index(deployment.pp)
            return self._layout_reasons[i_tp][i_pp] or "invalid parallel layout"
        if code == EXPERT_PARALLEL_WITHOUT_EXPERTS:
            return (f"enable_expert_parallel needs a mixture-of-experts model, but model "
                    f"{plan.model.name!r} is dense; set enable_expert_parallel to false")
        if code == OVER_GPU_BUDGET:
            return (f"needs {deployment.gpus} GPUs (dp x tp x pp), more than the budget of "
                    f"{plan.search.gpu_budget}")
        if code == TP_ACROSS_NODES:
            return (f"tp={deployment.tp} exceeds the {plan.node.gpus_per_node} GPUs of one node; "
                    "tensor parallelism across nodes is not modelled")
        memory_gb = plan.node.gpu_memory_bytes * deployment.gpu_memory_utilization / 1e9
        weights_gb = float(raw["weight_bytes_per_gpu"][row]) / 1e9
        if code == WEIGHTS_DO_NOT_FIT:
            return (f"weights do not fit: {weights_gb:.1f} GB per GPU plus activation and runtime "
                    f"reserves exceed {memory_gb:.1f} GB "
                    f"(gpu_memory_utilization {deployment.gpu_memory_utilization:g})")
        if code == KV_TOO_SMALL:
            capacity = float(raw["kv_capacity_tokens"][row])
            longest = plan.workload.prompt_tokens.max_tokens + plan.workload.output_tokens.max_tokens
            return (f"KV cache holds {capacity:,.0f} tokens per replica, fewer than one longest "
                    f"request ({longest:,} tokens)")
        return f"infeasible (code {code})"

    def _bottleneck(self, raw: dict[str, Any], row: int) -> str:
        if bool(raw["kv_bound"][row]):
            return "kv_capacity"
        if bool(raw["seqs_bound"][row]) and self.plan.workload.arrival_mode != "rate":
            return "max_num_seqs"
        if bool(raw["budget_bound"][row]):
            return "token_budget"
        parts = raw["step_parts"][row]
        return BOTTLENECK_PARTS[int(np.argmax(parts))]

    def _evaluation(self, raw: dict[str, Any], row: int, deployment: Deployment) -> Evaluation:
        code = int(raw["reason"][row])
        reason = self._reason_text(code, row, raw, deployment)
        feasible = code == FEASIBLE
        model_kv_bytes = float(self.inputs.model_kv_bytes_per_token)
        metrics: dict[str, Any] = {
            "gpus": deployment.gpus,
            "kv_capacity_tokens": _finite_or_none(raw["kv_capacity_tokens"][row]),
            "kv_bytes_per_token": model_kv_bytes,
            "weight_bytes_per_gpu": _finite_or_none(raw["weight_bytes_per_gpu"][row]),
        }
        if not feasible:
            return Evaluation(deployment, False, reason, metrics)
        overflowed = self._overflowed_metric(raw, row)
        if overflowed is not None:
            return Evaluation(deployment, False, _overflow_reason(overflowed), metrics)

        throughput = _finite_or_none(raw["output_tokens_per_s"][row])
        price = self.plan.node.price_per_gpu_hour
        cost = None
        if price is not None and throughput:
            cost = deployment.gpus * price / 3600.0 / throughput * 1e6
        step_parts = raw["step_parts"][row]
        step_total = float(np.sum(step_parts)) or 1.0
        metrics.update(
            {
                "makespan_s": _finite_or_none(raw["makespan_s"][row]),
                "output_tokens_per_s": throughput,
                "output_tokens_per_s_per_gpu": (throughput / deployment.gpus) if throughput else None,
                "ttft_s": _latency_dict(raw["ttft"], row),
                "tpot_s": _latency_dict(raw["tpot"], row),
                "e2e_s": _latency_dict(raw["e2e"], row),
                "peak_kv_usage": _finite_or_none(raw["peak_kv_usage"][row]),
                "preemptions": _finite_or_none(raw["preemptions"][row]),
                "preemptions_per_request": _finite_or_none(raw["preemptions_per_request"][row]),
                "running_requests_per_replica": _finite_or_none(raw["running_requests"][row]),
                "step_time_s": _finite_or_none(raw["step_time_s"][row]),
                "step_time_shares": {
                    name: float(part) / step_total for name, part in zip(BOTTLENECK_PARTS, step_parts)
                },
                "keeps_up": bool(raw["keeps_up"][row]),
                "max_arrival_rate_per_s": _finite_or_none(raw["max_arrival_rate_per_s"][row]),
                "cost_per_million_tokens": cost,
                "bottleneck": self._bottleneck(raw, row),
            }
        )
        metrics.update(share_metrics(raw, row, metrics, self.plan.workload.arrival_mode))
        if not self._tpot_resolved(metrics):
            metrics["tpot_s"] = {statistic: None for statistic in metrics["tpot_s"]}
        return Evaluation(deployment, True, None, metrics)

    def _overflowed_metric(self, raw: dict[str, Any], row: int) -> str | None:
        """Return the first metric every feasible deployment has that came out NaN or infinite, or None."""
        names = ["output_tokens_per_s", "step_time_s", "running_requests"]
        if self.plan.workload.arrival_mode == "batch":
            names.insert(0, "makespan_s")
        for name in names:
            if not math.isfinite(float(raw[name][row])):
                return name
        return None

    def _tpot_resolved(self, metrics: dict[str, Any]) -> bool:
        """Return whether float32 resolves the batch-mode TPOT to ``TPOT_RELATIVE_TOLERANCE``.

        The batch model computes a request's TPOT as (end-to-end latency - TTFT) divided
        by its output tokens after the first. Both latencies are rounded to float32, whose
        spacing near a 10^7 s makespan is 1 s, so with many requests per running slot the
        difference loses the decode time of a short output.
        """
        if self.plan.workload.arrival_mode != "batch":
            return True
        latest = max(value for value in (metrics["makespan_s"], metrics["e2e_s"]["p99"]) if value is not None)
        outputs = self.plan.workload.output_tokens.values
        decode_tokens = min((value - 1.0 for value in outputs if value >= 2.0), default=1.0)
        error = 2.0 * float(np.spacing(np.float32(latest))) / decode_tokens
        positive = [value for value in metrics["tpot_s"].values() if value]
        return not positive or error <= TPOT_RELATIVE_TOLERANCE * min(positive)
