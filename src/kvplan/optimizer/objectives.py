"""Metrics a multi-objective search can optimize: their names, directions and values.

Each metric is one number of an :class:`~kvplan.costmodel.evaluate.Evaluation`'s
``metrics``. Throughputs and rates are maximized; latencies, the makespan, the cost and
the GPU count are minimized. Latency metrics are named ``<latency>_<statistic>``, such
as ``ttft_p99``, and read ``metrics["ttft_s"]["p99"]``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable, Sequence

from kvplan.spec.errors import KvplanError
from kvplan.spec.types import Plan

# Fewest and most objectives of a multi-objective search. With more than three, fronts
# grow to most of the space and stop helping a choice.
MIN_OBJECTIVES = 2
MAX_OBJECTIVES = 3

LATENCIES = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E latency"}
STATISTICS = ("mean", "p50", "p90", "p99")


class UnknownObjectiveError(KvplanError):
    """An objective name that is not a metric of the cost model."""


@dataclasses.dataclass(frozen=True)
class ObjectiveMetric:
    """One optimized metric: canonical name, direction and how to read it from metrics."""

    name: str
    direction: str  # "minimize" or "maximize"
    title: str
    # "seconds", "tokens_per_s", "rate", "dollars" or "count": how tables format values.
    unit: str
    # Key in Evaluation.metrics, and the statistic inside it for latencies.
    key: str
    statistic: str | None = None

    def value(self, metrics: dict[str, Any]) -> float | None:
        """Return the metric's value, or None when the model left it undefined."""
        value = metrics.get(self.key)
        if self.statistic is not None:
            value = (value or {}).get(self.statistic)
        if value is None or isinstance(value, bool):
            return None
        return float(value)

    def to_dict(self) -> dict[str, str]:
        return {"metric": self.name, "direction": self.direction, "title": self.title}


def _catalogue() -> dict[str, ObjectiveMetric]:
    metrics = [
        ObjectiveMetric("output_tokens_per_s_per_gpu", "maximize", "output tokens/s per GPU", "tokens_per_s",
                        "output_tokens_per_s_per_gpu"),
        ObjectiveMetric("output_tokens_per_s", "maximize", "output tokens/s", "tokens_per_s",
                        "output_tokens_per_s"),
        ObjectiveMetric("max_arrival_rate_per_s", "maximize", "max requests/s", "rate", "max_arrival_rate_per_s"),
        ObjectiveMetric("makespan_s", "minimize", "makespan", "seconds", "makespan_s"),
        ObjectiveMetric("cost_per_million_tokens", "minimize", "$ per million output tokens", "dollars",
                        "cost_per_million_tokens"),
        ObjectiveMetric("gpus", "minimize", "GPUs", "count", "gpus"),
    ]
    for latency, title in LATENCIES.items():
        for statistic in STATISTICS:
            metrics.append(ObjectiveMetric(f"{latency}_{statistic}", "minimize", f"{title} {statistic}", "seconds",
                                           f"{latency}_s", statistic))
    return {metric.name: metric for metric in metrics}


METRICS: dict[str, ObjectiveMetric] = _catalogue()


def _aliases() -> dict[str, str]:
    """Map other accepted spellings to canonical names.

    The plan's objective names (``throughput``, ``makespan``, ...) are accepted, and a
    latency can also be written ``ttft_p99_s`` (the CSV column), ``ttft_s_p99`` or
    ``p99_ttft``.
    """
    aliases = {
        "throughput": "output_tokens_per_s",
        "throughput_per_gpu": "output_tokens_per_s_per_gpu",
        "makespan": "makespan_s",
        "cost": "cost_per_million_tokens",
        "max_arrival_rate": "max_arrival_rate_per_s",
    }
    for latency in LATENCIES:
        for statistic in STATISTICS:
            canonical = f"{latency}_{statistic}"
            for spelling in (f"{canonical}_s", f"{latency}_s_{statistic}", f"{statistic}_{latency}"):
                aliases[spelling] = canonical
    return aliases


ALIASES: dict[str, str] = _aliases()


def resolve_objective(name: str) -> ObjectiveMetric:
    """Return the metric called ``name`` (canonical or alias, any case).

    Raises UnknownObjectiveError with the closest names when there is none.
    """
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in METRICS:
        return METRICS[key]
    suggestions = difflib.get_close_matches(key, [*METRICS, *ALIASES], n=3, cutoff=0.6)
    known = ", ".join(METRICS)
    if suggestions:
        message = f"unknown objective {name!r}; did you mean {' or '.join(suggestions)}? Known metrics: {known}"
    else:
        message = f"unknown objective {name!r}; known metrics: {known}"
    raise UnknownObjectiveError(message)


def resolve_objectives(plan: Plan, names: Iterable[str | ObjectiveMetric]) -> tuple[ObjectiveMetric, ...]:
    """Resolve objective names for ``plan`` and check that the plan defines each metric.

    Raises UnknownObjectiveError for a name that is not a metric, and KvplanError for a
    metric repeated, a count outside 2 to 3, or a metric the plan leaves undefined.
    """
    objectives = tuple(name if isinstance(name, ObjectiveMetric) else resolve_objective(name) for name in names)
    if not MIN_OBJECTIVES <= len(objectives) <= MAX_OBJECTIVES:
        raise KvplanError(
            f"a multi-objective search takes {MIN_OBJECTIVES} or {MAX_OBJECTIVES} objectives, but got "
            f"{len(objectives)}; for one metric use the plan's objective"
        )
    names_seen = [objective.name for objective in objectives]
    repeated = sorted({name for name in names_seen if names_seen.count(name) > 1})
    if repeated:
        raise KvplanError(f"objective {', '.join(repeated)} is given more than once")
    for objective in objectives:
        _check_defined(plan, objective)
    return objectives


def _check_defined(plan: Plan, objective: ObjectiveMetric) -> None:
    if objective.name == "makespan_s" and plan.workload.arrival_mode != "batch":
        raise KvplanError(
            f"objective makespan_s needs an offline batch workload (requests: N), but the workload "
            f"'{plan.workload.name}' uses {plan.workload.arrival_mode}; choose another metric, such as "
            "output_tokens_per_s_per_gpu"
        )
    # With search.node, every deployment runs on one of those node types.
    unpriced = [node for node in plan.search.node or (plan.node,) if node.price_per_gpu_hour is None]
    if objective.name == "cost_per_million_tokens" and unpriced:
        raise KvplanError(
            f"objective cost_per_million_tokens needs a price, but node '{unpriced[0].name}' has no "
            "price_per_gpu_hour; set it in the node spec"
        )


def objective_values(objectives: Sequence[ObjectiveMetric], metrics: dict[str, Any]) -> tuple[float | None, ...]:
    return tuple(objective.value(metrics) for objective in objectives)
