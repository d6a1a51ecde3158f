"""Pareto fronts of deployments, and the multi-objective search that finds them.

A deployment dominates another when it is at least as good in every objective and
better in one. The Pareto front of a search is the set of evaluated deployments that
are feasible, meet the SLA, have a value for every objective and are dominated by no
other such deployment. :func:`non_dominated` computes it exactly, with no tolerance.

The search keeps its trials in an Optuna study with one direction per objective, in
memory or in a storage, like the single-objective search (see
:mod:`kvplan.optimizer.studies`), so it can be resumed and shared by worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import optuna

from kvplan.costmodel.evaluate import CostModel, Deployment, Evaluation
from kvplan.optimizer.objectives import METRICS, ObjectiveMetric, objective_values, resolve_objectives
from kvplan.optimizer.search import (DEFAULT_TRIALS, SCHEMA_VERSION, _distributions, _summaries, _trial_params,
                                     ask_batch, config_order, sla_violations)
from kvplan.optimizer.space import MAX_EXHAUSTIVE_POINTS, SearchSpace, build_search_space
from kvplan.optimizer.variants import VariantCostModel
from kvplan.spec.errors import KvplanError
from kvplan.spec.types import Plan

if TYPE_CHECKING:
    from kvplan.optimizer.studies import StorageURL

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
            return (4, 0, 0, (), evaluation.config.gpus, config_order(evaluation.config))
        signed = _signed(objectives, point.values)
        if point.on_front:
            group = 0
        elif point.sla_met:
            group = 1 if None not in point.values else 2
        else:
            group = 3
        falls_behind = evaluation.metrics.get("keeps_up") is False
        return (group, falls_behind, len(point.violations), signed, evaluation.config.gpus,
                config_order(evaluation.config))

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
    storage: str | None = None,
    study_name: str | None = None,
    n_jobs: int = 1,
    progress: Callable[[int, int, int], None] | None = None,
) -> ParetoResult:
    """Search the plan's space for the Pareto front of ``objectives``.

    Optuna's multi-objective ``sampler`` proposes ``trials`` deployments in batches of
    ``batch_size``, each batch scored with one call of the cost model. The polish then
    evaluates the neighbours of every front deployment until the front stops changing.
    ``exhaustive`` evaluates every point of the space instead, which gives the exact
    front of the space.

    ``storage``, ``study_name`` and ``n_jobs`` keep the trials in a stored study, resume
    it and share it between worker processes as in :func:`kvplan.optimizer.search.optimize`.
    The study records the objectives, and a search with other objectives is rejected.
    ``progress(done, total, front_size)`` is called after each batch of trials with the
    trials done by this call and the size of the front so far, stored trials included.
    Ctrl-C raises :class:`kvplan.optimizer.studies.SearchInterrupted`, whose ``result``
    is the ParetoResult of the completed trials.
    """
    objectives = resolve_objectives(plan, objectives)
    if sampler not in SAMPLERS:
        raise KvplanError(f"sampler must be one of {', '.join(SAMPLERS)}, but got {sampler!r}")
    if batch_size < 1:
        raise KvplanError(f"batch_size must be at least 1, but got {batch_size}")
    space = build_search_space(plan)
    model = VariantCostModel(plan, tp_values={l.tp for l in space.layouts}, pp_values={l.pp for l in space.layouts})

    if exhaustive:
        if storage is not None or n_jobs != 1:
            raise KvplanError("--exhaustive evaluates every deployment in one process without Optuna, so it "
                              "keeps no study; drop --storage and --n-jobs, or drop --exhaustive")
        if space.size > MAX_EXHAUSTIVE_POINTS:
            raise KvplanError(
                f"the search space has {space.size:,} points, more than --exhaustive enumerates "
                f"({MAX_EXHAUSTIVE_POINTS:,}); use lists or coarser ranges, or drop --exhaustive"
            )
        return _result(plan, objectives, model.evaluate(space.deployments()), "exhaustive", space.size)

    trials = DEFAULT_TRIALS if trials is None else trials
    if trials < 1:
        raise KvplanError(f"trials must be at least 1, but got {trials}")
    if n_jobs < 1:
        raise KvplanError(f"n_jobs must be at least 1, but got {n_jobs}")
    settings = FrontSearch(tuple(objective.name for objective in objectives), sampler, batch_size)
    evaluated = _front_study_search(plan, model, space, settings, trials, seed, polish=polish, storage=storage,
                                    study_name=study_name, n_jobs=n_jobs, progress=progress)
    return _result(plan, objectives, evaluated.values(), sampler, space.size)


# A deployment on a front and its objective values, as worker processes report it.
FrontEntry = tuple[Deployment, tuple[float, ...]]


@dataclasses.dataclass(frozen=True)
class FrontSearch:
    """The settings of a multi-objective search that its worker processes share."""

    # Canonical metric names, in the order of the study's directions.
    objectives: tuple[str, ...]
    sampler: str
    batch_size: int

    def metrics(self) -> tuple[ObjectiveMetric, ...]:
        return tuple(METRICS[name] for name in self.objectives)

    def merged_size(self, fronts: Sequence[Sequence[FrontEntry] | None]) -> int:
        """Return the size of the front of the deployments on any of ``fronts``.

        Every deployment on the front of all the workers' evaluations is on the front
        of its own worker's, so the merged fronts give the study's front.
        """
        candidates: dict[Deployment, tuple[float, ...]] = {}
        for front in fronts:
            candidates.update(front or ())
        directions = [objective.direction for objective in self.metrics()]
        return len(non_dominated(list(candidates.values()), directions))


class _FrontTracker:
    """The Pareto front of the evaluations seen so far, updated as batches arrive."""

    def __init__(self, plan: Plan, objectives: Sequence[ObjectiveMetric], evaluations: Iterable[Evaluation]) -> None:
        self._plan = plan
        self._objectives = tuple(objectives)
        self._front: dict[Deployment, tuple[float, ...]] = {}
        self.add(evaluations)

    def add(self, evaluations: Iterable[Evaluation]) -> None:
        candidates = dict(self._front)
        for evaluation in evaluations:
            values = self._front_values(evaluation)
            if values is not None:
                candidates[evaluation.config] = values
        deployments = list(candidates)
        directions = [objective.direction for objective in self._objectives]
        kept = non_dominated([candidates[deployment] for deployment in deployments], directions)
        self._front = {deployments[index]: candidates[deployments[index]] for index in kept}

    def _front_values(self, evaluation: Evaluation) -> tuple[float, ...] | None:
        """Return the objective values of a deployment that may be on the front, else None."""
        if not evaluation.feasible or sla_violations(self._plan, evaluation):
            return None
        values = objective_values(self._objectives, evaluation.metrics)
        if any(value is None or not math.isfinite(value) for value in values):
            return None
        return values

    @property
    def size(self) -> int:
        return len(self._front)

    def entries(self) -> list[FrontEntry]:
        return list(self._front.items())


def _make_sampler(name: str, seed: int, trials: int, batch_size: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # A resumed study with ``batch_size`` completed trials goes straight to TPE.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(batch_size, trials))
    if name == "nsga2":
        # One generation per batch, so each batch is bred from the last one's results.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(batch_size, 2))
    return optuna.samplers.RandomSampler(seed=seed)


def _optuna_values(plan: Plan, objectives: Sequence[ObjectiveMetric],
                   evaluation: Evaluation) -> tuple[list[float], float]:
    """Return (values for Optuna, constraint violation); violation > 0 is infeasible.

    Optuna needs finite values, so a deployment without values gets the worst value of
    every objective and a violated constraint, and the samplers rank it behind every
    feasible one.
    """
    worst = [1e30 if objective.direction == "minimize" else -1e30 for objective in objectives]
    values = objective_values(objectives, evaluation.metrics) if evaluation.feasible else None
    if values is None or None in values:
        return worst, 1.0
    violation = float(len(sla_violations(plan, evaluation)))
    return [value if math.isfinite(value) else bound for value, bound in zip(values, worst)], violation


def _front_study_search(plan: Plan, model: CostModel, space: SearchSpace, settings: FrontSearch, trials: int,
                        seed: int, *, polish: bool, storage: str | None, study_name: str | None, n_jobs: int,
                        progress: Callable[[int, int, int], None] | None) -> dict[Deployment, Evaluation]:
    """Run the sampler and the polish in a study: in memory, or resumed from ``storage``.

    Returns every evaluation the study holds, those of earlier runs included.
    """
    from kvplan.optimizer import studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objectives = settings.metrics()
    directions = [objective.direction for objective in objectives]
    sampler = _make_sampler(settings.sampler, seed, trials, settings.batch_size)
    with (studies.opened_study(plan, storage, study_name, n_jobs, directions, sampler,
                               objectives=settings.objectives) as (study, url),
          studies.graceful_stop(announce=True)):
        display = url.display if url is not None else "memory"
        evaluated = studies.evaluations_in_study(study)
        trials_before = len(study.trials)
        front = _FrontTracker(plan, objectives, evaluated.values())
        if progress is not None:
            progress(0, trials, front.size)
        try:
            if n_jobs > 1:
                studies.run_workers(plan, url, study.study_name, trials, seed, n_jobs, directions[0],
                                    progress=progress, initial_best=front.entries(), front_search=settings)
                evaluated.update(studies.evaluations_in_study(study))
            else:
                def report(done: int) -> None:
                    if progress is not None:
                        progress(done, trials, front.size)

                _sample_front(plan, model, space, objectives, study, trials, settings.batch_size, evaluated, front,
                              on_batch=report)
            logger.debug("%s evaluated %d distinct deployments in %d trials", settings.sampler, len(evaluated),
                         trials)
            if polish:
                _polish_front(plan, model, space, objectives, evaluated, trials * POLISH_EVALUATIONS_PER_TRIAL,
                              study=study)
        except KeyboardInterrupt:
            # Rank what the study holds: the trials completed before Ctrl-C.
            evaluated = studies.evaluations_in_study(study)
            result = _result(plan, objectives, evaluated.values(), settings.sampler, space.size)
            raise studies.SearchInterrupted(result, study.study_name if storage else None,
                                            display if storage else None) from None
        if storage is not None:
            logger.info("study %s in %s: %d trials, %d added by this search", study.study_name, display,
                        len(study.trials), len(study.trials) - trials_before)
    return evaluated


def search_front_in_study(plan: Plan, storage: StorageURL, study_name: str, settings: FrontSearch, trials: int,
                          seed: int, *, on_batch: Callable[[int, list[FrontEntry]], None] | None = None) -> None:
    """Run ``trials`` trials of the multi-objective study ``study_name``; the body of a worker process.

    ``on_batch(done, front)`` gets the trials done and the front of the deployments this
    worker has read or evaluated: the study's when it started, and its own since.
    """
    from kvplan.optimizer import studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objectives = resolve_objectives(plan, settings.objectives)
    directions = [objective.direction for objective in objectives]
    space = build_search_space(plan)
    model = VariantCostModel(plan, tp_values={l.tp for l in space.layouts}, pp_values={l.pp for l in space.layouts})
    with studies.opened_storage(storage) as opened:
        sampler = _make_sampler(settings.sampler, seed, trials, settings.batch_size)
        study = studies.create_or_load_study(plan, opened, study_name, directions, sampler,
                                             storage_display=storage.display, objectives=settings.objectives)
        evaluated = studies.evaluations_in_study(study)
        front = _FrontTracker(plan, objectives, evaluated.values())

        def report(done: int) -> None:
            if on_batch is not None:
                on_batch(done, front.entries())

        _sample_front(plan, model, space, objectives, study, trials, settings.batch_size, evaluated, front,
                      on_batch=report)


def _sample_front(plan: Plan, model: CostModel, space: SearchSpace, objectives: Sequence[ObjectiveMetric],
                  study: optuna.Study, trials: int, batch_size: int, evaluated: dict[Deployment, Evaluation],
                  front: _FrontTracker, *, on_batch: Callable[[int], None] | None = None) -> None:
    """Ask ``study`` for ``trials`` trials in batches, evaluate each batch at once and report the values.

    ``evaluated`` and ``front`` gain every new evaluation. Each completed trial stores its
    deployment and prediction (see :mod:`kvplan.optimizer.studies`). A stop requested
    with Ctrl-C ends the search between batches. A KeyboardInterrupt inside a batch (a
    second Ctrl-C) marks the batch's untold trials failed and propagates.
    """
    from kvplan.optimizer import studies

    distributions = _distributions(space)
    layouts_by_label = {layout.label: layout for layout in space.layouts}
    done = 0
    # Once every point of the space has been evaluated, further trials could only repeat one.
    while done < trials and len(evaluated) < space.size:
        # Ctrl-C stops the search here, between batches, where no trial is left untold.
        studies.raise_if_stop_requested()
        size = min(batch_size, trials - done)
        untold: list[optuna.Trial] = []
        try:
            asked = ask_batch(study, distributions, layouts_by_label, size, untold)

            fresh = list({deployment for _, deployment in asked if deployment not in evaluated})
            fresh_evaluations = model.evaluate(fresh)
            for deployment, evaluation in zip(fresh, fresh_evaluations):
                evaluated[deployment] = evaluation
            front.add(fresh_evaluations)

            for trial, deployment in asked:
                evaluation = evaluated[deployment]
                values, violation = _optuna_values(plan, objectives, evaluation)
                studies.record_evaluation(trial, evaluation, violation, studies.SOURCE_TPE)
                study.tell(trial, values)
                untold.remove(trial)
        except KeyboardInterrupt:
            studies.fail_trials(study, untold)
            raise
        done += size
        if on_batch is not None:
            on_batch(done)


def _polish_front(plan: Plan, model: CostModel, space: SearchSpace, objectives: Sequence[ObjectiveMetric],
                  evaluated: dict[Deployment, Evaluation], max_evaluations: int, *,
                  study: optuna.Study | None = None) -> None:
    """Evaluate the neighbours of front deployments until the front stops changing.

    While the front is empty, the neighbours of the best-ranked feasible deployments are
    tried instead, as the single-objective polish does. Stops early after
    ``max_evaluations`` evaluations. With a ``study``, each evaluated neighbour is added
    to it as a completed trial, so a stored study keeps the polish's finds.
    """
    from kvplan.optimizer import studies

    explored: set[Deployment] = set()
    spent = 0
    while spent < max_evaluations:
        studies.raise_if_stop_requested()
        ranked = rank_points(plan, objectives, evaluated.values())
        leaders = [point.evaluation.config for point in ranked if point.on_front]
        if not leaders:
            leaders = [point.evaluation.config for point in ranked if point.evaluation.feasible][:POLISH_WIDTH]
        frontier = [deployment for deployment in leaders if deployment not in explored]
        if not frontier:
            return
        explored.update(frontier)
        candidates = {n for deployment in frontier for n in space.neighbours(deployment)} - set(evaluated)
        candidates = sorted(candidates, key=config_order)[: max_evaluations - spent]
        spent += len(candidates)
        evaluations = model.evaluate(candidates)
        for deployment, evaluation in zip(candidates, evaluations):
            evaluated[deployment] = evaluation
        if study is not None:
            _record_polish(plan, space, objectives, study, evaluations)
    logger.info("the polish stopped after %d evaluations; the front may be incomplete", spent)


def _record_polish(plan: Plan, space: SearchSpace, objectives: Sequence[ObjectiveMetric], study: optuna.Study,
                   evaluations: Sequence[Evaluation]) -> None:
    from kvplan.optimizer import studies

    distributions = _distributions(space)
    trials = []
    for evaluation in evaluations:
        values, violation = _optuna_values(plan, objectives, evaluation)
        trials.append(studies.completed_trial(_trial_params(evaluation.config), distributions, values, evaluation,
                                              violation, studies.SOURCE_POLISH))
    study.add_trials(trials)
