"""Search over deployments: Optuna's TPE sampler, a local polish, or full enumeration."""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from typing import Any, Iterable

import optuna

from kvplan.costmodel.evaluate import CostModel, Deployment, Evaluation
from kvplan.formatting import format_seconds
from kvplan.optimizer.space import MAX_EXHAUSTIVE_POINTS, Layout, SearchSpace, build_search_space
from kvplan.spec.errors import KvplanError
from kvplan.spec.types import Plan

logger = logging.getLogger("kvplan")

# JSON documents written by kvplan carry this version; it changes when a field's
# meaning changes or a field is removed.
SCHEMA_VERSION = 1

DEFAULT_TRIALS = 200
# Trials asked from Optuna before one batched call of the cost model.
TRIALS_PER_BATCH = 25
DEFAULT_TOP = 10

# Direction of each objective and the metric it reads.
OBJECTIVES = {
    "makespan_s": ("minimize", "makespan_s"),
    "output_tokens_per_s": ("maximize", "output_tokens_per_s"),
    "output_tokens_per_s_per_gpu": ("maximize", "output_tokens_per_s_per_gpu"),
    "cost_per_million_tokens": ("minimize", "cost_per_million_tokens"),
}


@dataclasses.dataclass(frozen=True)
class RankedDeployment:
    """One evaluated deployment with its SLA verdict and place in the ranking."""

    rank: int
    evaluation: Evaluation
    sla_met: bool
    violations: tuple[str, ...]
    objective_value: float | None

    def to_dict(self) -> dict[str, Any]:
        evaluation = self.evaluation
        return {
            "rank": self.rank,
            "config": evaluation.config.to_dict(),
            "feasible": evaluation.feasible,
            "infeasible_reason": evaluation.infeasible_reason,
            "sla_met": self.sla_met,
            "violations": list(self.violations),
            "objective_value": self.objective_value,
            "metrics": evaluation.metrics,
        }


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Ranked deployments of one plan, from ``optimize`` or ``evaluate``."""

    plan: Plan
    objective: str
    results: tuple[RankedDeployment, ...]
    method: str  # "tpe", "exhaustive" or "evaluate"
    evaluated: int
    space_size: int
    infeasible_reasons: dict[str, int]
    sla_violations: dict[str, int]

    @property
    def best(self) -> RankedDeployment | None:
        for result in self.results:
            if result.evaluation.feasible and result.sla_met:
                return result
        return None

    def best_per_layout(self) -> "SearchResult":
        """Keep the best deployment of each (dp, tp, pp), re-ranked.

        The ranking then answers which parallel layout to run and how far each other
        layout falls short, instead of listing engine-setting variants of one layout.
        """
        seen = set()
        kept = []
        for result in self.results:
            config = result.evaluation.config
            layout = (config.dp, config.tp, config.pp)
            if layout in seen:
                continue
            seen.add(layout)
            kept.append(dataclasses.replace(result, rank=len(kept) + 1))
        return dataclasses.replace(self, results=tuple(kept))

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        results = self.results if top is None else self.results[:top]
        return {
            "schema_version": SCHEMA_VERSION,
            "plan": {"name": self.plan.name, "source": self.plan.source},
            "objective": self.objective,
            "search": {
                "method": self.method,
                "evaluated": self.evaluated,
                "space_size": self.space_size,
                "infeasible": sum(self.infeasible_reasons.values()),
                "infeasible_reasons": self.infeasible_reasons,
                "sla_violations": self.sla_violations,
            },
            "results": [result.to_dict() for result in results],
        }


def sla_violations(plan: Plan, evaluation: Evaluation) -> list[str]:
    """Describe each SLA bound the evaluation misses, in plain words."""
    violations = []
    metrics = evaluation.metrics
    if metrics.get("keeps_up") is False:
        rate = plan.workload.arrival_rate_per_s or 0.0
        limit = metrics.get("max_arrival_rate_per_s") or 0.0
        violations.append(f"cannot keep up with {rate:g} requests/s (at most {limit:.3g}/s)")
    for bound in plan.sla:
        latency = metrics.get(f"{bound.metric}_s") or {}
        value = latency.get(bound.statistic)
        if value is None:
            if metrics.get("keeps_up") is not False:
                violations.append(f"{bound.metric} {bound.statistic} is undefined")
            continue
        if value > bound.max_s:
            violations.append(
                f"{bound.metric} {bound.statistic} {format_seconds(value)} > {format_seconds(bound.max_s)}"
            )
    return violations


def _objective_direction(plan: Plan) -> tuple[str, str]:
    direction, metric = OBJECTIVES[plan.objective]
    if metric == "makespan_s" and plan.workload.arrival_mode != "batch":
        raise KvplanError(
            "objective 'makespan' needs an offline batch workload (requests: N), but the workload "
            f"'{plan.workload.name}' uses {plan.workload.arrival_mode}; choose objective "
            "'throughput_per_gpu' or 'throughput'"
        )
    if metric == "cost_per_million_tokens" and plan.node.price_per_gpu_hour is None:
        raise KvplanError(
            f"objective 'cost' needs a price, but node '{plan.node.name}' has no price_per_gpu_hour; "
            "set it in the node spec"
        )
    return direction, metric


def _sort_key(direction: str, ranked: RankedDeployment) -> tuple:
    """Order: SLA met, then SLA missed (keeping up before not, fewer misses first), then
    infeasible; within a group by objective, then by fewer GPUs."""
    evaluation = ranked.evaluation
    if not evaluation.feasible:
        return (2, False, 0, 0.0, evaluation.config.gpus)
    value = ranked.objective_value
    if value is None:
        value = math.inf
    signed = value if direction == "minimize" else -value
    falls_behind = evaluation.metrics.get("keeps_up") is False
    return (0 if ranked.sla_met else 1, falls_behind, len(ranked.violations), signed, evaluation.config.gpus)


def _rank(plan: Plan, evaluations: Iterable[Evaluation]) -> list[RankedDeployment]:
    direction, metric = _objective_direction(plan)
    unranked = []
    for evaluation in evaluations:
        violations = tuple(sla_violations(plan, evaluation)) if evaluation.feasible else ()
        value = evaluation.metrics.get(metric) if evaluation.feasible else None
        sla_met = evaluation.feasible and not violations
        unranked.append(RankedDeployment(0, evaluation, sla_met, violations, value))
    unranked.sort(key=lambda ranked: _sort_key(direction, ranked))
    return [dataclasses.replace(ranked, rank=i + 1) for i, ranked in enumerate(unranked)]


def _reason_category(reason: str) -> str:
    """Group infeasibility reasons that differ only in numbers."""
    for prefix in ("weights do not fit", "KV cache holds", "needs ", "tp=", "tp ", "pp="):
        if reason.startswith(prefix):
            if prefix == "weights do not fit":
                return "weights do not fit in GPU memory"
            if prefix == "KV cache holds":
                return "KV cache smaller than one longest request"
            if prefix == "needs ":
                return "more GPUs than the budget"
    return reason


def _violation_category(violation: str) -> str:
    """Group SLA violations by what they miss: "ttft p99", "cannot keep up", ..."""
    if violation.startswith("cannot keep up"):
        return "cannot keep up"
    return " ".join(violation.split(" ")[:2])


def _summaries(ranked: list[RankedDeployment]) -> tuple[dict[str, int], dict[str, int]]:
    infeasible = collections.Counter()
    violated = collections.Counter()
    for result in ranked:
        if not result.evaluation.feasible:
            infeasible[_reason_category(result.evaluation.infeasible_reason or "")] += 1
        for violation in result.violations:
            violated[_violation_category(violation)] += 1
    return dict(infeasible.most_common()), dict(violated.most_common())


def _result(plan, ranked, method, evaluated, space_size) -> SearchResult:
    infeasible, violated = _summaries(ranked)
    return SearchResult(
        plan=plan,
        objective=plan.objective,
        results=tuple(ranked),
        method=method,
        evaluated=evaluated,
        space_size=space_size,
        infeasible_reasons=infeasible,
        sla_violations=violated,
    )


def evaluate(plan: Plan, configs: Iterable[Deployment | dict[str, Any]]) -> SearchResult:
    """Evaluate the given deployments of ``plan`` and rank them.

    A config given as a dict may leave out settings; the plan's engine settings fill
    them (vLLM's defaults unless the plan overrides them).
    """
    deployments = [_as_deployment(plan, config) for config in configs]
    if not deployments:
        raise KvplanError("no configuration to evaluate; pass at least one, for example dp=1,tp=8")
    model = CostModel(plan)
    ranked = _rank(plan, model.evaluate(deployments))
    return _result(plan, ranked, "evaluate", len(deployments), len(deployments))


CONFIG_KEYS = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization")


def _as_deployment(plan: Plan, config: Deployment | dict[str, Any]) -> Deployment:
    if isinstance(config, Deployment):
        return config
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise KvplanError(
            f"unknown configuration key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(CONFIG_KEYS)}"
        )
    engine = plan.engine
    values = {
        "dp": 1,
        "tp": 1,
        "pp": 1,
        "max_num_seqs": engine.max_num_seqs,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
    }
    values.update(config)
    for key in ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens"):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KvplanError(f"{key} must be a positive integer, but got {value!r}")
    utilization = values["gpu_memory_utilization"]
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
        raise KvplanError(f"gpu_memory_utilization must be in (0, 1], but got {utilization!r}")
    values["gpu_memory_utilization"] = float(utilization)
    return Deployment(**values)


def optimize(
    plan: Plan,
    *,
    trials: int | None = None,
    seed: int = 0,
    exhaustive: bool = False,
) -> SearchResult:
    """Search the plan's space and rank every deployment evaluated.

    The default search asks Optuna's TPE sampler for trials in batches, scores each
    batch with one call of the cost model, then polishes the best deployments by trying
    their neighbours in every setting until none improves. ``exhaustive`` evaluates
    every point instead.
    """
    direction, metric = _objective_direction(plan)
    space = build_search_space(plan)
    model = CostModel(plan, tp_values={l.tp for l in space.layouts}, pp_values={l.pp for l in space.layouts})

    if exhaustive:
        if space.size > MAX_EXHAUSTIVE_POINTS:
            raise KvplanError(
                f"the search space has {space.size:,} points, more than --exhaustive enumerates "
                f"({MAX_EXHAUSTIVE_POINTS:,}); use lists or coarser ranges, or drop --exhaustive"
            )
        evaluations = model.evaluate(space.deployments())
        ranked = _rank(plan, evaluations)
        return _result(plan, ranked, "exhaustive", len(evaluations), space.size)

    trials = DEFAULT_TRIALS if trials is None else trials
    if trials < 1:
        raise KvplanError(f"trials must be at least 1, but got {trials}")
    evaluated = _tpe_search(plan, model, space, direction, metric, trials, seed)
    _polish(plan, model, space, direction, evaluated)
    ranked = _rank(plan, evaluated.values())
    return _result(plan, ranked, "tpe", len(evaluated), space.size)


def _score(plan: Plan, evaluation: Evaluation, direction: str, metric: str) -> tuple[float, float]:
    """Return (objective for Optuna, constraint violation); violation > 0 is infeasible."""
    if not evaluation.feasible:
        return (math.inf if direction == "minimize" else -math.inf), 1.0
    value = evaluation.metrics.get(metric)
    if value is None:
        value = math.inf if direction == "minimize" else -math.inf
    violations = len(sla_violations(plan, evaluation))
    return value, float(violations)


def _tpe_search(plan, model, space: SearchSpace, direction, metric, trials, seed) -> dict[Deployment, Evaluation]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                         n_startup_trials=min(TRIALS_PER_BATCH, trials))
    study = optuna.create_study(direction=direction, sampler=sampler)
    layouts_by_label = {layout.label: layout for layout in space.layouts}
    evaluated: dict[Deployment, Evaluation] = {}

    remaining = trials
    while remaining > 0:
        batch_size = min(TRIALS_PER_BATCH, remaining)
        remaining -= batch_size
        asked = []
        for _ in range(batch_size):
            trial = study.ask()
            layout: Layout = layouts_by_label[trial.suggest_categorical("layout", list(layouts_by_label))]
            deployment = Deployment(
                dp=layout.dp,
                tp=layout.tp,
                pp=layout.pp,
                max_num_seqs=trial.suggest_categorical("max_num_seqs", list(space.max_num_seqs)),
                max_num_batched_tokens=trial.suggest_categorical(
                    "max_num_batched_tokens", list(space.max_num_batched_tokens)
                ),
                gpu_memory_utilization=trial.suggest_categorical(
                    "gpu_memory_utilization", list(space.gpu_memory_utilization)
                ),
            )
            asked.append((trial, deployment))

        fresh = list({d for _, d in asked if d not in evaluated})
        for deployment, evaluation in zip(fresh, model.evaluate(fresh)):
            evaluated[deployment] = evaluation

        for trial, deployment in asked:
            value, violation = _score(plan, evaluated[deployment], direction, metric)
            trial.set_constraint("fits_and_meets_sla", violation)
            finite = value if math.isfinite(value) else (1e30 if direction == "minimize" else -1e30)
            study.tell(trial, finite)
    logger.debug("TPE evaluated %d distinct deployments in %d trials", len(evaluated), trials)
    return evaluated


# Deployments whose neighbourhoods the polish explores in each round.
POLISH_WIDTH = 3


def _polish(plan, model, space: SearchSpace, direction, evaluated: dict[Deployment, Evaluation]) -> None:
    """Try the neighbours of the best deployments until no neighbour improves on them."""
    explored: set[Deployment] = set()
    while True:
        leaders = [r.evaluation.config for r in _rank(plan, evaluated.values())[:POLISH_WIDTH]
                   if r.evaluation.feasible]
        frontier = [d for d in leaders if d not in explored]
        if not frontier:
            return
        explored.update(frontier)
        candidates = {n for d in frontier for n in space.neighbours(d)} - set(evaluated)
        candidates = sorted(candidates, key=lambda d: dataclasses.astuple(d))
        for deployment, evaluation in zip(candidates, model.evaluate(candidates)):
            evaluated[deployment] = evaluation
