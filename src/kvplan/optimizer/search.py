"""Search over deployments: Optuna's TPE sampler, a local polish, or full enumeration."""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import optuna

from kvplan.costmodel.attribution import bottleneck_label
from kvplan.costmodel.evaluate import Deployment, Evaluation
from kvplan.formatting import format_seconds
from kvplan.optimizer.space import MAX_EXHAUSTIVE_POINTS, OPTIONAL_AXES, Layout, SearchSpace, build_search_space
from kvplan.optimizer.variants import VariantCostModel, check_deployment_settings
from kvplan.spec.errors import KvplanError
from kvplan.spec.types import Plan

if TYPE_CHECKING:
    from kvplan.optimizer.pareto import ParetoResult

logger = logging.getLogger("kvplan")

# JSON documents written by kvplan carry this version; it changes when a field's
# meaning changes or a field is removed.
SCHEMA_VERSION = 1

DEFAULT_TRIALS = 200
# Trials asked from Optuna before one batched call of the cost model. At 200 trials,
# batches of 50 found the same optimum as batches of 10 and 25 on every example plan, in
# a median 21 % less time than batches of 25 (bench/sampler.py, docs/benchmarks.md).
TRIALS_PER_BATCH = 50
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
    # Short label of what binds the deployment ("KV capacity", "SLA: ttft_p99"; see
    # kvplan.costmodel.attribution.bottleneck); None when infeasible.
    bottleneck: str | None = None

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
            "bottleneck": self.bottleneck,
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
        """Keep the best deployment of each (dp, tp, pp), node type and expert parallelism, re-ranked.

        The ranking then answers which parallel layout to run and how far each other
        layout falls short, instead of listing engine-setting variants of one layout.
        """
        seen = set()
        kept = []
        for result in self.results:
            config = result.evaluation.config
            layout = (config.node, config.dp, config.tp, config.pp, config.enable_expert_parallel)
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
    if metric == "cost_per_million_tokens":
        # With search.node, every deployment runs on one of those node types.
        for node in plan.search.node or (plan.node,):
            if node.price_per_gpu_hour is None:
                raise KvplanError(
                    f"objective 'cost' needs a price, but node '{node.name}' has no price_per_gpu_hour; "
                    "set it in the node spec"
                )
    return direction, metric


def config_order(config: Deployment) -> tuple:
    """Return a key that orders deployments by their settings, field by field.

    Rankings end with this key. Deployments whose predictions tie exactly then come out
    in the same order on every run, for example when a setting changes nothing or a cost
    depends only on GPUs and price. An unset setting (the plan's own) sorts first.
    """
    key = []
    for value in dataclasses.astuple(config):
        if value is None:
            key.append((0, 0))
        elif isinstance(value, str):
            key.append((2, value))
        else:
            key.append((1, float(value)))
    return tuple(key)


def _sort_key(direction: str, ranked: RankedDeployment, first_on_ties: Evaluation | None = None) -> tuple:
    """Order: SLA met, then SLA missed (keeping up before not, fewer misses first), then
    infeasible; within a group by objective, then by fewer GPUs, then ``first_on_ties``,
    then by the settings."""
    evaluation = ranked.evaluation
    order = (evaluation is not first_on_ties, config_order(evaluation.config))
    if not evaluation.feasible:
        return (2, False, 0, 0.0, evaluation.config.gpus, order)
    value = ranked.objective_value
    if value is None:
        value = math.inf
    signed = value if direction == "minimize" else -value
    falls_behind = evaluation.metrics.get("keeps_up") is False
    return (0 if ranked.sla_met else 1, falls_behind, len(ranked.violations), signed, evaluation.config.gpus,
            order)


def _rank(plan: Plan, evaluations: Iterable[Evaluation], first_on_ties: Evaluation | None = None,
          ) -> list[RankedDeployment]:
    direction, metric = _objective_direction(plan)
    unranked = []
    for evaluation in evaluations:
        violations = tuple(sla_violations(plan, evaluation)) if evaluation.feasible else ()
        value = evaluation.metrics.get(metric) if evaluation.feasible else None
        sla_met = evaluation.feasible and not violations
        unranked.append(RankedDeployment(0, evaluation, sla_met, violations, value,
                                         bottleneck_label(plan, evaluation)))
    unranked.sort(key=lambda ranked: _sort_key(direction, ranked, first_on_ties))
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
    model = VariantCostModel(plan)
    ranked = _rank(plan, model.evaluate(deployments))
    return _result(plan, ranked, "evaluate", len(deployments), len(deployments))


# Keys of a configuration: the searched settings, then the optional ones, which keep
# the plan's own setting when left out (see Deployment).
CONFIG_KEYS = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "node",
               "kv_cache_dtype", "watermark", "require_full_prompt_admission", "enable_expert_parallel")


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
    if isinstance(values.get("watermark"), int) and not isinstance(values["watermark"], bool):
        values["watermark"] = float(values["watermark"])
    deployment = Deployment(**values)
    check_deployment_settings(plan, deployment)
    return deployment


def optimize(
    plan: Plan,
    *,
    trials: int | None = None,
    seed: int = 0,
    exhaustive: bool = False,
    objectives: Sequence[str] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    n_jobs: int = 1,
    progress: Callable[[int, int, float | None], None] | None = None,
) -> SearchResult | ParetoResult:
    """Search the plan's space and rank every deployment evaluated.

    The default search asks Optuna's TPE sampler for trials in batches, scores each
    batch with one call of the cost model, then polishes the best deployments by trying
    their neighbours in every setting until none improves. ``exhaustive`` evaluates
    every point instead.

    With two or three ``objectives`` (metric names such as ``"ttft_p99"``), the plan's
    objective is ignored and the search returns the Pareto front as a ``ParetoResult``
    (see :func:`kvplan.optimizer.pareto.optimize_pareto`). ``progress`` then gets the
    size of the front so far in place of the best value.

    ``storage`` is a URL such as ``sqlite:///study.db`` (see
    :func:`kvplan.optimizer.studies.parse_storage_url`). The trials then go to the study
    ``study_name`` (default: the plan's name) in it, and a later search of the same plan
    and study resumes it. ``n_jobs`` runs the sampler in that many local processes that
    share the study. ``progress(done, total, best)`` is called after each batch of
    trials with the trials done by this call and the best SLA-meeting objective value
    so far. Ctrl-C raises :class:`kvplan.optimizer.studies.SearchInterrupted`, whose
    ``result`` ranks the completed trials.
    """
    if objectives is not None:
        from kvplan.optimizer.pareto import optimize_pareto

        return optimize_pareto(plan, objectives, trials=trials, seed=seed, exhaustive=exhaustive, storage=storage,
                               study_name=study_name, n_jobs=n_jobs, progress=progress)
    direction, metric = _objective_direction(plan)
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
        evaluations = model.evaluate(space.deployments())
        ranked = _rank(plan, evaluations)
        return _result(plan, ranked, "exhaustive", len(evaluations), space.size)

    trials = DEFAULT_TRIALS if trials is None else trials
    if trials < 1:
        raise KvplanError(f"trials must be at least 1, but got {trials}")
    if n_jobs < 1:
        raise KvplanError(f"n_jobs must be at least 1, but got {n_jobs}")
    evaluated = _study_search(plan, model, space, direction, metric, trials, seed,
                              storage=storage, study_name=study_name, n_jobs=n_jobs, progress=progress)
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


def _sampler(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    # Random trials before TPE models the results; a resumed study with that many
    # completed trials goes straight to TPE.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(TRIALS_PER_BATCH, trials))


def _distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    """Return the Optuna distribution of each searched setting, in the order trials sample them."""
    categorical = optuna.distributions.CategoricalDistribution
    distributions = {
        "layout": categorical([layout.label for layout in space.layouts]),
        "max_num_seqs": categorical(list(space.max_num_seqs)),
        "max_num_batched_tokens": categorical(list(space.max_num_batched_tokens)),
        "gpu_memory_utilization": categorical(list(space.gpu_memory_utilization)),
    }
    for name, candidates in space.optional_axes().items():
        distributions[name] = categorical(list(candidates))
    return distributions


def _trial_params(deployment: Deployment) -> dict[str, Any]:
    """Return the trial parameters that :func:`_deployment_of` turns back into ``deployment``."""
    params = {
        "layout": Layout(deployment.dp, deployment.tp, deployment.pp).label,
        "max_num_seqs": deployment.max_num_seqs,
        "max_num_batched_tokens": deployment.max_num_batched_tokens,
        "gpu_memory_utilization": deployment.gpu_memory_utilization,
    }
    for name in OPTIONAL_AXES:
        value = getattr(deployment, name)
        if value is not None:
            params[name] = value
    return params


def _deployment_of(layouts_by_label: dict[str, Layout], params: dict[str, Any]) -> Deployment:
    layout = layouts_by_label[params["layout"]]
    return Deployment(
        dp=layout.dp,
        tp=layout.tp,
        pp=layout.pp,
        max_num_seqs=params["max_num_seqs"],
        max_num_batched_tokens=params["max_num_batched_tokens"],
        gpu_memory_utilization=params["gpu_memory_utilization"],
        **{name: params[name] for name in OPTIONAL_AXES if name in params},
    )


def _optuna_value(value: float, direction: str) -> float:
    """Return the objective value reported to Optuna: a large finite stand-in for an infinite one."""
    if math.isfinite(value):
        return value
    return 1e30 if direction == "minimize" else -1e30


def _best_value(plan: Plan, evaluations: Iterable[Evaluation], direction: str, metric: str) -> float | None:
    """Return the best objective value among evaluations that fit and meet the SLA, or None."""
    values = []
    for evaluation in evaluations:
        value, violation = _score(plan, evaluation, direction, metric)
        if violation == 0 and math.isfinite(value):
            values.append(value)
    if not values:
        return None
    return min(values) if direction == "minimize" else max(values)


def _best_value_of(best: float | None, value: float, direction: str) -> float:
    if best is None:
        return value
    return min(best, value) if direction == "minimize" else max(best, value)


def _study_search(plan, model, space: SearchSpace, direction, metric, trials, seed, *, storage, study_name,
                  n_jobs, progress) -> dict[Deployment, Evaluation]:
    """Run the TPE search and the polish in a study: in memory, or resumed from ``storage``."""
    from kvplan.optimizer import studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = _sampler(seed, trials)
    with (studies.opened_study(plan, storage, study_name, n_jobs, [direction], sampler) as (study, url),
          studies.graceful_stop(announce=True)):
        display = url.display if url is not None else "memory"
        evaluated = studies.evaluations_in_study(study)
        trials_before = len(study.trials)
        initial_best = _best_value(plan, evaluated.values(), direction, metric)
        if progress is not None:
            progress(0, trials, initial_best)
        try:
            if n_jobs > 1:
                studies.run_workers(plan, url, study.study_name, trials, seed, n_jobs, direction,
                                    progress=progress, initial_best=initial_best)
                evaluated.update(studies.evaluations_in_study(study))
            else:
                def report(done: int, best: float | None) -> None:
                    if progress is not None:
                        progress(done, trials, best)

                _tpe_search(plan, model, space, direction, metric, trials, study, evaluated, on_batch=report,
                            best=initial_best)
            _polish(plan, model, space, direction, evaluated, study=study, metric=metric)
        except KeyboardInterrupt:
            # Rank what the study holds: the trials completed before Ctrl-C.
            evaluated = studies.evaluations_in_study(study)
            ranked = _rank(plan, evaluated.values())
            result = _result(plan, ranked, "tpe", len(evaluated), space.size)
            raise studies.SearchInterrupted(result, study.study_name if storage else None,
                                            display if storage else None) from None
        if storage is not None:
            logger.info("study %s in %s: %d trials, %d added by this search", study.study_name, display,
                        len(study.trials), len(study.trials) - trials_before)
    return evaluated


def search_in_study(plan: Plan, storage, study_name: str, trials: int, seed: int, *,
                    on_batch: Callable[[int, float | None], None] | None = None) -> None:
    """Run ``trials`` TPE trials in an existing study; the body of a worker process."""
    from kvplan.optimizer import studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction, metric = _objective_direction(plan)
    space = build_search_space(plan)
    model = VariantCostModel(plan, tp_values={l.tp for l in space.layouts}, pp_values={l.pp for l in space.layouts})
    with studies.opened_storage(storage) as opened:
        study = studies.create_or_load_study(plan, opened, study_name, [direction], _sampler(seed, trials),
                                             storage_display=storage.display)
        evaluated = studies.evaluations_in_study(study)
        _tpe_search(plan, model, space, direction, metric, trials, study, evaluated, on_batch=on_batch,
                    best=_best_value(plan, evaluated.values(), direction, metric))


def ask_batch(study: optuna.Study, distributions, layouts_by_label: dict[str, Layout], size: int,
              untold: list[optuna.Trial]) -> list[tuple[optuna.Trial, Deployment]]:
    """Ask ``study`` for ``size`` trials and return each with its deployment.

    Each trial is also appended to ``untold``, so that a caller interrupted before it
    reports their values can mark them failed.
    """
    asked = []
    for _ in range(size):
        trial = study.ask(distributions)
        untold.append(trial)
        asked.append((trial, _deployment_of(layouts_by_label, trial.params)))
    return asked


def _tpe_search(plan, model, space: SearchSpace, direction, metric, trials, study: optuna.Study,
                evaluated: dict[Deployment, Evaluation], *,
                on_batch: Callable[[int, float | None], None] | None = None, best: float | None = None) -> None:
    """Ask ``study`` for ``trials`` trials in batches, evaluate each batch at once and tell the results.

    ``evaluated`` caches evaluations across batches and gains every new one. Each told
    trial stores its deployment and prediction (see :mod:`kvplan.optimizer.studies`).
    A stop requested with Ctrl-C ends the search between batches. A KeyboardInterrupt
    inside a batch (a second Ctrl-C) marks the batch's untold trials failed and propagates.
    """
    from kvplan.optimizer import studies

    distributions = _distributions(space)
    layouts_by_label = {layout.label: layout for layout in space.layouts}
    done = 0
    # Once every point of the space has been evaluated, further trials could only repeat one.
    while done < trials and len(evaluated) < space.size:
        # Ctrl-C stops the search here, between batches, where no trial is left untold.
        studies.raise_if_stop_requested()
        batch_size = min(TRIALS_PER_BATCH, trials - done)
        untold: list[optuna.Trial] = []
        try:
            asked = ask_batch(study, distributions, layouts_by_label, batch_size, untold)

            fresh = list({d for _, d in asked if d not in evaluated})
            for deployment, evaluation in zip(fresh, model.evaluate(fresh)):
                evaluated[deployment] = evaluation

            for trial, deployment in asked:
                evaluation = evaluated[deployment]
                value, violation = _score(plan, evaluation, direction, metric)
                studies.record_evaluation(trial, evaluation, violation, studies.SOURCE_TPE)
                study.tell(trial, _optuna_value(value, direction))
                untold.remove(trial)
                if violation == 0 and math.isfinite(value):
                    best = _best_value_of(best, value, direction)
        except KeyboardInterrupt:
            studies.fail_trials(study, untold)
            raise
        done += batch_size
        if on_batch is not None:
            on_batch(done, best)
    logger.debug("TPE evaluated %d distinct deployments in %d trials", len(evaluated), trials)


# Deployments whose neighbourhoods the polish explores in each round.
POLISH_WIDTH = 3


def _polish(plan, model, space: SearchSpace, direction, evaluated: dict[Deployment, Evaluation], *,
            study: optuna.Study | None = None, metric: str | None = None) -> None:
    """Try the neighbours of the best deployments until no neighbour improves on them.

    With a ``study``, each evaluated neighbour is added to it as a completed trial, so a
    stored study keeps the polish's finds and its sampler learns from them.
    """
    from kvplan.optimizer import studies

    explored: set[Deployment] = set()
    while True:
        studies.raise_if_stop_requested()
        leaders = [r.evaluation.config for r in _rank(plan, evaluated.values())[:POLISH_WIDTH]
                   if r.evaluation.feasible]
        frontier = [d for d in leaders if d not in explored]
        if not frontier:
            return
        explored.update(frontier)
        candidates = {n for d in frontier for n in space.neighbours(d)} - set(evaluated)
        candidates = sorted(candidates, key=config_order)
        evaluations = model.evaluate(candidates)
        for deployment, evaluation in zip(candidates, evaluations):
            evaluated[deployment] = evaluation
        if study is not None:
            _record_polish(plan, space, direction, metric, study, evaluations)


def _record_polish(plan, space: SearchSpace, direction, metric, study: optuna.Study,
                   evaluations: list[Evaluation]) -> None:
    from kvplan.optimizer import studies

    distributions = _distributions(space)
    trials = []
    for evaluation in evaluations:
        value, violation = _score(plan, evaluation, direction, metric)
        trials.append(studies.completed_trial(_trial_params(evaluation.config), distributions,
                                              _optuna_value(value, direction), evaluation, violation,
                                              studies.SOURCE_POLISH))
    study.add_trials(trials)
