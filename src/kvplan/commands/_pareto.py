"""``kvplan optimize --objective A --objective B``: the Pareto front as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Sequence

from kvplan.formatting import format_count, format_seconds

if TYPE_CHECKING:
    from kvplan.optimizer.objectives import ObjectiveMetric
    from kvplan.optimizer.pareto import ParetoPoint, ParetoResult
    from kvplan.spec.types import Plan

logger = logging.getLogger("kvplan")

# Table headers of metrics, by canonical objective name; latencies are added below.
SHORT_TITLES = {
    "output_tokens_per_s_per_gpu": "tok/s/GPU",
    "output_tokens_per_s": "tok/s",
    "max_arrival_rate_per_s": "max req/s",
    "makespan_s": "makespan",
    "cost_per_million_tokens": "$/M tok",
    "gpus": "GPUs",
}
for _latency, _title in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E")):
    for _statistic in ("mean", "p50", "p90", "p99"):
        SHORT_TITLES[f"{_latency}_{_statistic}"] = f"{_title} {_statistic}"

# Metrics every table shows after the objectives, unless one of them is an objective.
CONTEXT_METRICS = ("output_tokens_per_s_per_gpu", "ttft_p99", "tpot_p50")

CSV_METRICS = ("gpus", "makespan_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu",
               "max_arrival_rate_per_s", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p99",
               "cost_per_million_tokens")


def run_pareto_optimize(args: argparse.Namespace, write_output) -> int:
    """Run ``kvplan optimize`` with ``--objective`` options; return the exit code.

    ``write_output`` takes the rendered text and prints it or writes it to ``--output``.
    """
    from kvplan.cli import UsageError
    from kvplan.commands._progress import search_progress
    from kvplan.commands.study import report_interrupted, search_options
    from kvplan.optimizer.objectives import UnknownObjectiveError, resolve_objective
    from kvplan.optimizer.pareto import optimize_pareto
    from kvplan.optimizer.studies import SearchInterrupted
    from kvplan.spec import load_plan

    try:
        names = [resolve_objective(name) for name in args.objectives]
    except UnknownObjectiveError as error:
        raise UsageError(f"--objective: {error}") from None
    if len(names) not in (2, 3):
        raise UsageError(f"--objective takes two or three metrics, but got {len(names)}; without "
                         "--objective the plan's objective ranks the deployments")
    plan = load_plan(args.plan)
    logger.info("searching plan %s for the Pareto front of %s", plan.name, ", ".join(o.name for o in names))
    interrupted = None
    with search_progress(plan.objective, quiet=args.quiet, pareto=True) as progress:
        try:
            result = optimize_pareto(plan, names, trials=args.trials, seed=args.seed, exhaustive=args.exhaustive,
                                     progress=progress, **search_options(args))
        except SearchInterrupted as error:
            interrupted = error
            result = error.result
    write_output(render_pareto(result, args.format, top=args.top, all_points=args.all_deployments))
    if interrupted is not None:
        return report_interrupted("optimize", interrupted)
    return exit_code_of_front(result)


def exit_code_of_front(result: ParetoResult) -> int:
    """Return 0 when the front has a deployment; else print on stderr why it is empty and return 1."""
    from kvplan.cli import EXIT_FAILURE, EXIT_OK

    if result.best is not None:
        return EXIT_OK
    if not any(point.evaluation.feasible for point in result.points):
        print("kvplan: no feasible deployment, so the Pareto front is empty; see the reasons above",
              file=sys.stderr)
    else:
        print("kvplan: no deployment meets the SLA, so the Pareto front is empty; see the violations above",
              file=sys.stderr)
    return EXIT_FAILURE


def render_pareto(result: ParetoResult, output_format: str, *, top: int | None, all_points: bool) -> str:
    """Render the front (or every evaluated point with ``all_points``) in ``output_format``."""
    if output_format == "json":
        return json.dumps(result.to_dict(top=top), indent=2) + "\n"
    points = result.points if all_points else result.front
    if top is not None:
        points = points[:top]
    if output_format == "csv":
        return _render_csv(result, points)
    from kvplan.commands._tables import render_rows

    headers, rows = _table(result, points, all_points)
    body = render_rows(headers, rows, output_format) if rows else "(the Pareto front is empty)"
    lines = _describe(result)
    footer = _footer(result, shown=len(points), all_points=all_points)
    if output_format == "markdown":
        return "\n\n".join([*lines, body, *footer]) + "\n"
    return "\n".join([*lines, "", body, "", *footer]) + "\n"


def describe_objectives(objectives: Sequence[ObjectiveMetric]) -> str:
    return ", ".join(f"{objective.direction} {objective.title}" for objective in objectives)


def describe_method(result: ParetoResult) -> str:
    from kvplan.optimizer.pareto import SAMPLER_TITLES

    if result.method == "exhaustive":
        return "exhaustive search"
    return f"{SAMPLER_TITLES[result.method]} multi-objective search + local polish"


def _describe_plan(plan: Plan) -> list[str]:
    from kvplan.output import describe_plan

    return describe_plan(plan)


def _describe(result: ParetoResult) -> list[str]:
    return [
        *_describe_plan(result.plan),
        f"Objectives: {describe_objectives(result.objectives)}; {describe_method(result)}: "
        f"{result.evaluated} of {result.space_size} deployments evaluated, {len(result.front)} on the "
        "Pareto front",
    ]


def format_metric(name: str, value: float | None) -> str:
    from kvplan.optimizer.objectives import METRICS

    if value is None:
        return "-"
    unit = METRICS[name].unit
    if unit == "seconds":
        return format_seconds(value)
    if unit == "tokens_per_s":
        return format_count(value)
    if unit == "rate":
        return f"{value:.3g}"
    if unit == "dollars":
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def _context_metrics(result: ParetoResult) -> list[ObjectiveMetric]:
    from kvplan.optimizer.objectives import METRICS

    chosen = {objective.name for objective in result.objectives}
    return [METRICS[name] for name in CONTEXT_METRICS if name not in chosen]


def _table(result: ParetoResult, points: Sequence[ParetoPoint], all_points: bool) -> tuple[list[str], list[list[str]]]:
    from kvplan.output import OPTIONAL_CONFIG_COLUMNS, format_setting, optional_settings_in

    show_utilization = len({p.evaluation.config.gpu_memory_utilization for p in result.points}) > 1
    optional = optional_settings_in([p.evaluation.config for p in points])
    context = _context_metrics(result)
    headers = ["#", "dp", "tp", "pp", "seqs", "batch"]
    if show_utilization:
        headers.append("mem")
    headers += [OPTIONAL_CONFIG_COLUMNS[key] for key in optional]
    headers += [SHORT_TITLES[objective.name] for objective in result.objectives]
    headers += [SHORT_TITLES[metric.name] for metric in context]
    headers.append("bottleneck")
    if all_points:
        headers.append("front")
    headers.append("SLA")

    rows = []
    for point in points:
        evaluation = point.evaluation
        config = evaluation.config
        row = [str(point.rank), str(config.dp), str(config.tp), str(config.pp), str(config.max_num_seqs),
               str(config.max_num_batched_tokens)]
        if show_utilization:
            row.append(f"{config.gpu_memory_utilization:g}")
        row += ["-" if getattr(config, key) is None else format_setting(getattr(config, key)) for key in optional]
        if not evaluation.feasible:
            filler = len(headers) - len(row) - 1
            rows.append(row + ["-"] * filler + [f"infeasible: {_shorten(evaluation.infeasible_reason or '')}"])
            continue
        row += [format_metric(o.name, v) for o, v in zip(result.objectives, point.values)]
        row += [format_metric(metric.name, metric.value(evaluation.metrics)) for metric in context]
        row.append(_bottleneck(result.plan, evaluation))
        if all_points:
            row.append("yes" if point.on_front else "-")
        row.append("met" if point.sla_met else "; ".join(point.violations))
        rows.append(row)
    return headers, rows


def _bottleneck(plan, evaluation) -> str:
    from kvplan.costmodel.attribution import bottleneck_label

    return bottleneck_label(plan, evaluation) or str(evaluation.metrics.get("bottleneck", "-"))


# Longest infeasibility reason shown in a table cell; JSON and CSV carry the whole text.
MAX_REASON_CHARACTERS = 70


def _shorten(text: str) -> str:
    if len(text) <= MAX_REASON_CHARACTERS:
        return text
    return text[: MAX_REASON_CHARACTERS - 3].rstrip() + "..."


def _footer(result: ParetoResult, *, shown: int, all_points: bool) -> list[str]:
    first = result.objectives[0]
    lines = [
        "Columns: seqs = max_num_seqs, batch = max_num_batched_tokens, bottleneck = what binds the "
        "deployment (kvplan explain shows why).",
        f"Pareto front: the deployments that meet the SLA and that no other evaluated deployment meeting "
        f"the SLA beats in every objective, sorted by {first.title}.",
    ]
    if all_points:
        lines.append(f"All {result.evaluated} evaluated deployments are listed; front = on the Pareto front.")
    elif shown < len(result.front):
        lines.append(f"{shown} of the {len(result.front)} front deployments are shown; --top sets how many.")
    if result.infeasible_reasons:
        parts = ", ".join(f"{count} x {reason}" for reason, count in result.infeasible_reasons.items())
        lines.append(f"Infeasible among the {result.evaluated} evaluated: {parts}")
    if result.sla_violations:
        parts = ", ".join(f"{count} x {what}" for what, count in result.sla_violations.items())
        lines.append(f"SLA misses among the {result.evaluated} evaluated: {parts}")
    if result.undefined_values:
        lines.append(f"{result.undefined_values} deployment(s) meeting the SLA lack the value of an objective "
                     "and are left off the front.")
    return lines


def _render_csv(result: ParetoResult, points: Sequence[ParetoPoint]) -> str:
    from kvplan.commands._tables import render_csv
    from kvplan.optimizer.objectives import METRICS

    from kvplan.output import optional_settings_in

    config_keys = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
                   *optional_settings_in([point.evaluation.config for point in points]))
    objective_columns = [f"objective.{objective.name}" for objective in result.objectives]
    fieldnames = ["rank", "on_front", *config_keys, *objective_columns, "feasible", "infeasible_reason",
                  "sla_met", "violations", *CSV_METRICS, "bottleneck"]
    rows = []
    for point in points:
        evaluation = point.evaluation
        row: dict[str, Any] = {"rank": point.rank, "on_front": point.on_front}
        row.update({key: getattr(evaluation.config, key) for key in config_keys})
        row.update(dict(zip(objective_columns, point.values)))
        row.update({
            "feasible": evaluation.feasible,
            "infeasible_reason": evaluation.infeasible_reason or "",
            "sla_met": point.sla_met,
            "violations": "; ".join(point.violations),
            "bottleneck": evaluation.metrics.get("bottleneck"),
        })
        row.update({name: METRICS[name].value(evaluation.metrics) for name in CSV_METRICS})
        rows.append({key: ("" if value is None else value) for key, value in row.items()})
    return render_csv(fieldnames, rows)
