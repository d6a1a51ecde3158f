"""Pareto fronts of deployments, and the multi-objective search that finds them.

A deployment dominates another when it is at least as good in every objective and
better in one. The Pareto front of a search is the set of evaluated deployments that
are feasible, meet the SLA, have a value for every objective and are dominated by no
other such deployment. :func:`non_dominated` computes it exactly, with no tolerance.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterable, Sequence

import numpy as np
import optuna

from kvplan.costmodel.evaluate import CostModel, Deployment, Evaluation
from kvplan.optimizer.objectives import ObjectiveMetric, objective_values, resolve_objectives
from kvplan.optimizer.search import DEFAULT_TRIALS, SCHEMA_VERSION, _summaries, sla_violations
from kvplan.optimizer.space import MAX_EXHAUSTIVE_POINTS, SearchSpace, build_search_space
from kvplan.spec.errors import KvplanError
from kvplan.spec.types import Plan

logger = logging.getLogger("kvplan")

# Optuna samplers a multi-objective search can use. "tpe" (multi-objective TPE) is the
# default because it found the exhaustive front in fewer trials than NSGA-II on the
# example plans (bench/sampler.py, results in docs/benchmarks.md).
SAMPLERS = ("tpe", "nsga2", "random")
DEFAULT_SAMPLER = "tpe"
SAMPLER_TITLES = {"tpe": "Optuna TPE", "nsga2": "Optuna NSGA-II", "random": "random"}
# Trials per batched call of the cost model; bench/sampler.py measured the samplers with it.
TRIALS_PER_BATCH = 25

# The polish stops after this many evaluations per trial, so a front of hundreds of
# points in a large space cannot turn it into an exhaustive search.
POLISH_EVALUATIONS_PER_TRIAL = 20
# Feasible deployments whose neighbourhoods the polish explores while no deployment meets
# the SLA and the front is still empty.
POLISH_WIDTH = 3

# Metrics the ``points`` of a JSON document carry besides the objectives, for plots.
POINT_METRICS = ("output_tokens_per_s_per_gpu", "output_tokens_per_s", "ttft_s", "tpot_s", "gpus")


def non_dominated(vectors: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Return the indices of the rows of ``vectors`` that no other row dominates, in order.

    ``directions`` gives "minimize" or "maximize" for each column. Row a dominates row
    b when a is as good as b in every column and strictly better in one, so equal rows
    do not dominate each other and all of them stay. Values must be finite.
    """
    if len(vectors) == 0:
        return []
    values = np.asarray(vectors, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"vectors must have shape (n, {len(directions)}), but got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("vectors must be finite")
    unknown = set(directions) - {"minimize", "maximize"}
    if unknown:
        raise ValueError(f"directions must be 'minimize' or 'maximize', but got {sorted(unknown)}")
    signs = np.array([1.0 if direction == "minimize" else -1.0 for direction in directions])
    costs = values * signs

    # A dominating row comes strictly before the row it dominates in lexicographic order
    # of the costs. Scanning in that order, a row is dominated exactly when a row kept
    # before it dominates it: a dominated earlier row has a kept dominator, which then
    # dominates this row too.
    order = np.lexsort(costs.T[::-1])
    kept_costs = np.empty_like(costs)
    kept: list[int] = []
    for index in order:
        row = costs[index]
        front = kept_costs[: len(kept)]
        if len(kept) and np.any(np.all(front <= row, axis=1) & np.any(front < row, axis=1)):
            continue
        kept_costs[len(kept)] = row
        kept.append(int(index))
    return sorted(kept)


@dataclasses.dataclass(frozen=True)
class ParetoPoint:
    """One evaluated deployment of a multi-objective search, with its objective values."""

    rank: int
    evaluation: Evaluation
    sla_met: bool
    violations: tuple[str, ...]
    # One per objective, in the order of ``ParetoResult.objectives``; None where undefined.
    values: tuple[float | None, ...]
    on_front: bool

    def to_dict(self, objectives: Sequence[ObjectiveMetric]) -> dict[str, Any]:
        evaluation = self.evaluation
        return {
            "rank": self.rank,
            "config": evaluation.config.to_dict(),
            "feasible": evaluation.feasible,
            "infeasible_reason": evaluation.infeasible_reason,
            "sla_met": self.sla_met,
            "violations": list(self.violations),
            "on_front": self.on_front,
            "objective_values": {o.name: v for o, v in zip(objectives, self.values)},
            "metrics": evaluation.metrics,
        }

    def summary_dict(self, objectives: Sequence[ObjectiveMetric]) -> dict[str, Any]:
        """Return the fields of ``to_dict`` that plots need, with a few metrics."""
        metrics = self.evaluation.metrics
        return {
            "config": self.evaluation.config.to_dict(),
            "feasible": self.evaluation.feasible,
            "infeasible_reason": self.evaluation.infeasible_reason,
            "sla_met": self.sla_met,
            "violations": list(self.violations),
            "on_front": self.on_front,
            "objective_values": {o.name: v for o, v in zip(objectives, self.values)},
            "metrics": {key: metrics.get(key) for key in POINT_METRICS if key in metrics},
        }


@dataclasses.dataclass(frozen=True)
class ParetoResult:
    """Every deployment a multi-objective search evaluated, the Pareto front first."""

    plan: Plan
    objectives: tuple[ObjectiveMetric, ...]
    # Ranked: the front sorted by the first objective, then the other SLA-meeting
    # deployments, then those that miss the SLA, then infeasible ones.
    points: tuple[ParetoPoint, ...]
    method: str  # "exhaustive" or a name of SAMPLERS
    evaluated: int
    space_size: int
    infeasible_reasons: dict[str, int]
    sla_violations: dict[str, int]

    @property
    def front(self) -> tuple[ParetoPoint, ...]:
        return tuple(point for point in self.points if point.on_front)

    @property
    def best(self) -> ParetoPoint | None:
        """The front's best deployment by the first objective, or None when the front is empty."""
        front = self.front
        return front[0] if front else None

    @property
    def undefined_values(self) -> int:
        """Deployments that meet the SLA but lack the value of an objective."""
        return sum(1 for point in self.points if point.sla_met and None in point.values)

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        front = self.front if top is None else self.front[:top]
        return {
            "schema_version": SCHEMA_VERSION,
            "command": "optimize",
            "plan": {"name": self.plan.name, "source": self.plan.source},
            "objectives": [objective.to_dict() for objective in self.objectives],
            "search": {
                "method": self.method,
                "evaluated": self.evaluated,
                "space_size": self.space_size,
                "front_size": len(self.front),
                "infeasible": sum(self.infeasible_reasons.values()),
                "infeasible_reasons": self.infeasible_reasons,
                "sla_violations": self.sla_violations,
                "undefined_values": self.undefined_values,
            },
            "front": [point.to_dict(self.objectives) for point in front],
            "points": [point.summary_dict(self.objectives) for point in self.points],
        }


def _signed(objectives: Sequence[ObjectiveMetric], values: Sequence[float | None]) -> tuple[float, ...]:
    """Return the values as costs to minimize; an undefined value costs infinity."""
    costs = []
    for objective, value in zip(objectives, values):
        if value is None:
            costs.append(math.inf)
        elif objective.direction == "minimize":
            costs.append(value)
        else:
            costs.append(-value)
    return tuple(costs)


def rank_points(plan: Plan, objectives: Sequence[ObjectiveMetric],
                evaluations: Iterable[Evaluation]) -> list[ParetoPoint]:
    """Rank ``evaluations`` with the Pareto front of the SLA-meeting ones first."""
    points = []
    for evaluation in evaluations:
        violations = tuple(sla_violations(plan, evaluation)) if evaluation.feasible else ()
        sla_met = evaluation.feasible and not violations
        values = objective_values(objectives, evaluation.metrics) if evaluation.feasible else (None,) * len(objectives)
        points.append(ParetoPoint(0, evaluation, sla_met, violations, values, False))

    candidates = [i for i, point in enumerate(points) if point.sla_met and None not in point.values]
    directions = [objective.direction for objective in objectives]
    front = {candidates[i] for i in non_dominated([points[i].values for i in candidates], directions)}
    points = [dataclasses.replace(point, on_front=i in front) for i, point in enumerate(points)]

    def sort_key(point: ParetoPoint) -> tuple:
        evaluation = point.evaluation
        if not evaluation.feasible:
            return (4, 0, 0, (), evaluation.config.gpus, dataclasses.astuple(evaluation.config))
        signed = _signed(objectives, point.values)
        if point.on_front:
            group = 0
        elif point.sla_met:
            group = 1 if None not in point.values else 2
        else:
            group = 3
        falls_behind = evaluation.metrics.get("keeps_up") is False
        return (group, falls_behind, len(point.violations), signed, evaluation.config.gpus,
                dataclasses.astuple(evaluation.config))

    points.sort(key=sort_key)
    return [dataclasses.replace(point, rank=i + 1) for i, point in enumerate(points)]


def _result(plan, objectives, evaluations, method, space_size) -> ParetoResult:
    points = rank_points(plan, objectives, evaluations)
    infeasible, violated = _summaries(points)  # reads only .evaluation and .violations
    return ParetoResult(
        plan=plan,
        objectives=tuple(objectives),
        points=tuple(points),
        method=method,
        evaluated=len(points),
        space_size=space_size,
        infeasible_reasons=infeasible,
        sla_violations=violated,
    )


def optimize_pareto(
    plan: Plan,
    objectives: Sequence[str | ObjectiveMetric],
    *,
    trials: int | None = None,
    seed: int = 0,
    exhaustive: bool = False,
    sampler: str = DEFAULT_SAMPLER,
    batch_size: int = TRIALS_PER_BATCH,
    polish: bool = True,
) -> ParetoResult:
    """Search the plan's space for the Pareto front of ``objectives``.

    Optuna's multi-objective ``sampler`` proposes ``trials`` deployments in batches of
    ``batch_size``, each batch scored with one call of the cost model. The polish then
    evaluates the neighbours of every front deployment until the front stops changing.
    ``exhaustive`` evaluates every point of the space instead, which gives the exact
    front of the space.
    """
    objectives = resolve_objectives(plan, objectives)
    if sampler not in SAMPLERS:
        raise KvplanError(f"sampler must be one of {', '.join(SAMPLERS)}, but got {sampler!r}")
    if batch_size < 1:
        raise KvplanError(f"batch_size must be at least 1, but got {batch_size}")
    space = build_search_space(plan)
    model = CostModel(plan, tp_values={l.tp for l in space.layouts}, pp_values={l.pp for l in space.layouts})

    if exhaustive:
        if space.size > MAX_EXHAUSTIVE_POINTS:
            raise KvplanError(
                f"the search space has {space.size:,} points, more than --exhaustive enumerates "
                f"({MAX_EXHAUSTIVE_POINTS:,}); use lists or coarser ranges, or drop --exhaustive"
            )
        return _result(plan, objectives, model.evaluate(space.deployments()), "exhaustive", space.size)

    trials = DEFAULT_TRIALS if trials is None else trials
    if trials < 1:
        raise KvplanError(f"trials must be at least 1, but got {trials}")
    evaluated = sample_front(plan, model, space, objectives, trials=trials, seed=seed, sampler=sampler,
                             batch_size=batch_size)
    if polish:
        _polish_front(plan, model, space, objectives, evaluated, trials * POLISH_EVALUATIONS_PER_TRIAL)
    return _result(plan, objectives, evaluated.values(), sampler, space.size)


def _make_sampler(name: str, seed: int, trials: int, batch_size: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(batch_size, trials))
    if name == "nsga2":
        # One generation per batch, so each batch is bred from the last one's results.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(batch_size, 2))
    return optuna.samplers.RandomSampler(seed=seed)


def sample_front(plan: Plan, model: CostModel, space: SearchSpace, objectives: Sequence[ObjectiveMetric], *,
                 trials: int, seed: int, sampler: str, batch_size: int) -> dict[Deployment, Evaluation]:
    """Run ``trials`` trials of a multi-objective Optuna study; return every evaluation."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=[objective.direction for objective in objectives],
        sampler=_make_sampler(sampler, seed, trials, batch_size),
    )
    layouts_by_label = {layout.label: layout for layout in space.layouts}
    # Optuna needs finite values; a deployment without values gets these worst ones and
    # a violated constraint, so the samplers rank it behind every feasible one.
    worst = [1e30 if objective.direction == "minimize" else -1e30 for objective in objectives]
    evaluated: dict[Deployment, Evaluation] = {}

    remaining = trials
    # Once every point of the space has been evaluated, further trials could only repeat one.
    while remaining > 0 and len(evaluated) < space.size:
        size = min(batch_size, remaining)
        remaining -= size
        asked = []
        for _ in range(size):
            trial = study.ask()
            layout = layouts_by_label[trial.suggest_categorical("layout", list(layouts_by_label))]
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

        fresh = list({deployment for _, deployment in asked if deployment not in evaluated})
        for deployment, evaluation in zip(fresh, model.evaluate(fresh)):
            evaluated[deployment] = evaluation

        for trial, deployment in asked:
            evaluation = evaluated[deployment]
            values = objective_values(objectives, evaluation.metrics) if evaluation.feasible else None
            if values is None or None in values:
                trial.set_constraint("fits_and_meets_sla", 1.0)
                study.tell(trial, worst)
                continue
            trial.set_constraint("fits_and_meets_sla", float(len(sla_violations(plan, evaluation))))
            study.tell(trial, [value if math.isfinite(value) else bound for value, bound in zip(values, worst)])
    logger.debug("%s evaluated %d distinct deployments in %d trials", sampler, len(evaluated), trials)
    return evaluated


def _polish_front(plan: Plan, model: CostModel, space: SearchSpace, objectives: Sequence[ObjectiveMetric],
                  evaluated: dict[Deployment, Evaluation], max_evaluations: int) -> None:
    """Evaluate the neighbours of front deployments until the front stops changing.

    While the front is empty, the neighbours of the best-ranked feasible deployments are
    tried instead, as the single-objective polish does. Stops early after
    ``max_evaluations`` evaluations.
    """
    explored: set[Deployment] = set()
    spent = 0
    while spent < max_evaluations:
        ranked = rank_points(plan, objectives, evaluated.values())
        leaders = [point.evaluation.config for point in ranked if point.on_front]
        if not leaders:
            leaders = [point.evaluation.config for point in ranked if point.evaluation.feasible][:POLISH_WIDTH]
        frontier = [deployment for deployment in leaders if deployment not in explored]
        if not frontier:
            return
        explored.update(frontier)
        candidates = {n for deployment in frontier for n in space.neighbours(deployment)} - set(evaluated)
        candidates = sorted(candidates, key=dataclasses.astuple)[: max_evaluations - spent]
        spent += len(candidates)
        for deployment, evaluation in zip(candidates, model.evaluate(candidates)):
            evaluated[deployment] = evaluation
    logger.info("the polish stopped after %d evaluations; the front may be incomplete", spent)
