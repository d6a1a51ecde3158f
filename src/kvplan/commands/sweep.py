"""``kvplan sweep``: the best deployment at every point of a grid of plan variants.

Each ``--set PATH=V1,V2,...`` lists values for one dotted path of the plan, and several
``--set`` options make the grid of every combination. Each point is loaded with
:func:`kvplan.spec.load_plan_with_overrides` and searched like ``kvplan optimize``. JAX
compiles the cost model once per array shape and arrival mode, so points that change
only values (an arrival rate, a latency bound, a price) reuse the first point's
compilation, while a new model or node count compiles again.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

from kvplan.cli import EXIT_FAILURE, EXIT_OK, FORMATS, UsageError

if TYPE_CHECKING:
    from kvplan.optimizer.search import SearchResult
    from kvplan.optimizer.studies import SearchInterrupted
    from kvplan.spec.errors import SpecIssue
    from kvplan.spec.types import Plan

logger = logging.getLogger("kvplan")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One ``--set`` option: a dotted plan path and its values, as typed and as parsed YAML."""

    path: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]


@dataclasses.dataclass
class SweepPoint:
    """One combination of ``--set`` values, the plan variant it makes and its search result."""

    texts: dict[str, str]
    values: dict[str, Any]
    plan: Plan | None = None
    result: SearchResult | None = None
    # Problems that make the variant invalid, or the error its search raised.
    issues: list[SpecIssue] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return ", ".join(f"{path}={text}" for path, text in self.texts.items())

    @property
    def status(self) -> str:
        """Return ``met``, ``sla_missed``, ``infeasible`` or ``invalid``."""
        if self.result is None:
            return "invalid"
        if self.result.best is not None:
            return "met"
        if any(ranked.evaluation.feasible for ranked in self.result.results):
            return "sla_missed"
        return "infeasible"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="find the best deployment at each point of a grid of plan changes",
        description="Set values in the plan with --set PATH=V1,V2,...; several --set options make a "
                    "grid of every combination. Each point is searched like kvplan optimize, and one "
                    "row per point shows its best deployment or why none works. Exit code 0 when "
                    "every point is valid and at least one has a deployment that meets the SLA, 1 "
                    "otherwise.",
    )
    parser.add_argument("plan", metavar="PLAN", help="path of a Plan spec")
    parser.add_argument("--set", action="append", required=True, dest="settings", metavar="PATH=V1,V2,...",
                        help="a dotted path into the plan and comma-separated YAML values, for example "
                             "workload.arrival_rate=1/s,2/s,4/s or hardware.node=h100-sxm-8,h200-sxm-8; "
                             "null removes the key; repeat for a grid of every combination")
    parser.add_argument("--trials", type=int, default=None,
                        help="Optuna trials per point before the local polish (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="evaluate every point of each variant's search space instead of sampling")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    from kvplan.commands.study import add_search_arguments

    add_search_arguments(parser)
    parser.set_defaults(handler=run)


def parse_setting(text: str) -> Setting:
    """Parse ``PATH=V1,V2,...``; commas inside brackets, braces or quotes do not split values."""
    import yaml

    path, separator, values_text = text.partition("=")
    path = path.strip()
    if not separator or not path:
        raise UsageError(f"invalid --set {text!r}; write PATH=VALUE[,VALUE...], for example "
                         "workload.arrival_rate=1/s,2/s")
    texts = _split_values(values_text)
    values = []
    for value_text in texts:
        if not value_text:
            raise UsageError(f"--set {text!r} has an empty value; separate values with single commas")
        try:
            values.append(yaml.safe_load(value_text))
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error)
            raise UsageError(f"--set {path}: value {value_text!r} is not valid YAML: {problem}") from None
    if len(set(texts)) < len(texts):
        raise UsageError(f"--set {path} lists a value twice in {values_text!r}")
    return Setting(path, tuple(texts), tuple(values))


def _split_values(text: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    depth = 0
    quote = None
    for char in text:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            pieces.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    pieces.append("".join(current).strip())
    return pieces


def grid_points(settings: Sequence[Setting]) -> list[SweepPoint]:
    """Return one point per combination; the last ``--set`` varies fastest."""
    points = []
    for combination in itertools.product(*(range(len(setting.values)) for setting in settings)):
        texts = {setting.path: setting.texts[i] for setting, i in zip(settings, combination)}
        values = {setting.path: setting.values[i] for setting, i in zip(settings, combination)}
        points.append(SweepPoint(texts, values))
    return points


def run(args: argparse.Namespace) -> int:
    from kvplan.commands.study import check_search_arguments, report_interrupted
    from kvplan.spec.errors import SpecError

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, but got {args.trials}")
    check_search_arguments(args)
    settings = [parse_setting(text) for text in args.settings]
    paths = [setting.path for setting in settings]
    repeated = sorted({path for path in paths if paths.count(path) > 1})
    if repeated:
        raise UsageError(f"--set names {', '.join(repeated)} more than once; list all values in one --set")

    points = grid_points(settings)
    _load_points(args.plan, points)
    problems = [[(issue.path, issue.message) for issue in point.issues] for point in points]
    if problems[0] and all(problem == problems[0] for problem in problems):
        # Every variant fails the same way, so the plan itself or a path in --set is wrong.
        raise SpecError(points[0].issues)
    interrupted = _search_points(points, args)
    if interrupted is not None:
        # Only the points searched so far, the interrupted one last, have a result to show.
        searched = points[:interrupted[0] + 1]
        sys.stdout.write(render_sweep(args, settings, searched))
        print(f"kvplan sweep: stopped at point {interrupted[0] + 1} of {len(points)} ({searched[-1].label}); "
              "the table shows the points searched so far", file=sys.stderr)
        return report_interrupted("sweep", interrupted[1])

    sys.stdout.write(render_sweep(args, settings, points))
    return _report(points)


def _load_points(plan_path: str, points: Sequence[SweepPoint]) -> None:
    from kvplan.spec import load_plan_with_overrides
    from kvplan.spec.errors import SpecError

    for point in points:
        try:
            point.plan = load_plan_with_overrides(plan_path, point.values)
        except SpecError as error:
            point.issues = error.issues


def _search_points(points: Sequence[SweepPoint],
                   args: argparse.Namespace) -> tuple[int, SearchInterrupted] | None:
    """Search every valid point; return the index of the point Ctrl-C stopped and its interrupt, or None."""
    from kvplan.commands._progress import search_progress
    from kvplan.optimizer.search import optimize
    from kvplan.optimizer.studies import SearchInterrupted
    from kvplan.spec.errors import KvplanError

    for index, point in enumerate(points, start=1):
        if point.plan is None:
            continue
        started = time.perf_counter()
        description = f"point {index}/{len(points)}"
        try:
            with search_progress(point.plan.objective, quiet=args.quiet, description=description) as progress:
                point.result = optimize(point.plan, trials=args.trials, seed=args.seed,
                                        exhaustive=args.exhaustive, progress=progress,
                                        **_study_options(args, point))
        except SearchInterrupted as interrupted:
            point.result = interrupted.result
            return index - 1, interrupted
        except KvplanError as error:
            point.error = str(error)
        logger.info("point %d of %d (%s): %s in %.1f s", index, len(points), point.label,
                    point.status, time.perf_counter() - started)
    return None


def _study_options(args: argparse.Namespace, point: SweepPoint) -> dict[str, Any]:
    """Return the study options of one point: its own study, named after the sweep's and its values."""
    from kvplan.commands.study import search_options

    options = search_options(args)
    if args.storage is not None:
        base = args.study_name or point.plan.name
        options["study_name"] = f"{base} [{point.label}]"
    return options


def _report(points: Sequence[SweepPoint]) -> int:
    """Print what went wrong to stderr and return the exit code."""
    invalid = [point for point in points if point.status == "invalid"]
    for point in invalid:
        print(f"kvplan sweep: point {point.label} is invalid:", file=sys.stderr)
        problems = [str(issue) for issue in point.issues] or [point.error]
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    met = sum(point.status == "met" for point in points)
    if not invalid and met == 0:
        print("kvplan sweep: no point has a deployment that meets the SLA; see the SLA column",
              file=sys.stderr)
    elif invalid and met == 0:
        print(f"kvplan sweep: no valid point meets the SLA ({len(invalid)} of {len(points)} points "
              "are invalid)", file=sys.stderr)
    return EXIT_FAILURE if invalid or met == 0 else EXIT_OK


# Rendering


def _reason(point: SweepPoint) -> str | None:
    """Explain a point without an SLA-meeting deployment; None for a point that has one."""
    from kvplan.commands._tables import closest_deployment, infeasible_summary

    status = point.status
    if status == "invalid":
        if point.issues:
            first = point.issues[0]
            more = f" ({len(point.issues) - 1} more on stderr)" if len(point.issues) > 1 else ""
            return f"invalid: {first.path}: {first.message}{more}"
        return f"invalid: {point.error}"
    if status == "infeasible":
        return infeasible_summary(point.result)
    if status == "sla_missed":
        return "; ".join(closest_deployment(point.result).violations)
    return None


def render_sweep(args: argparse.Namespace, settings: Sequence[Setting], points: Sequence[SweepPoint]) -> str:
    if args.format == "json":
        return _render_json(args, settings, points)
    if args.format == "csv":
        return _render_csv(settings, points)
    return _render_table(args, settings, points)


def _render_json(args: argparse.Namespace, settings: Sequence[Setting], points: Sequence[SweepPoint]) -> str:
    from kvplan.commands._tables import closest_deployment, issue_dicts, plan_summary, render_json
    from kvplan.optimizer.search import DEFAULT_TRIALS, SCHEMA_VERSION

    entries = []
    for point in points:
        result = point.result
        deployment = closest_deployment(result) if result is not None else None
        entries.append({
            "values": point.values,
            "status": point.status,
            "reason": _reason(point),
            "plan": plan_summary(point.plan) if point.plan is not None else None,
            "search": None if result is None else {
                "method": result.method,
                "evaluated": result.evaluated,
                "space_size": result.space_size,
                "infeasible_reasons": result.infeasible_reasons,
                "sla_violations": result.sla_violations,
            },
            "deployment": deployment.to_dict() if deployment is not None else None,
            "issues": issue_dicts(point.issues),
        })
    document = {
        "schema_version": SCHEMA_VERSION,
        "command": "sweep",
        "plan": {"source": args.plan},
        "parameters": [{"path": setting.path, "values": list(setting.values)} for setting in settings],
        "search": {
            "method": "exhaustive" if args.exhaustive else "tpe",
            "trials": None if args.exhaustive else (args.trials or DEFAULT_TRIALS),
            "seed": args.seed,
        },
        "points": entries,
        "summary": {
            "points": len(points),
            "met": sum(point.status == "met" for point in points),
            "invalid": sum(point.status == "invalid" for point in points),
        },
    }
    return render_json(document)


def _render_csv(settings: Sequence[Setting], points: Sequence[SweepPoint]) -> str:
    from kvplan.commands._tables import DEPLOYMENT_FIELDS, closest_deployment, deployment_fields, render_csv
    from kvplan.output import optional_settings_in

    deployments = [closest_deployment(point.result) if point.result is not None else None for point in points]
    optional = optional_settings_in([d.evaluation.config for d in deployments if d is not None])
    # The --set columns are prefixed so that a setting such as `objective` cannot clash
    # with a result column of the same name.
    rows = []
    for point, deployment in zip(points, deployments):
        row: dict[str, Any] = {f"set.{path}": text for path, text in point.texts.items()}
        row["status"] = point.status
        row["reason"] = _reason(point) or ""
        row["objective"] = point.plan.objective if point.plan is not None else ""
        row.update(deployment_fields(deployment, optional))
        rows.append(row)
    fieldnames = [*(f"set.{setting.path}" for setting in settings), "status", "reason", "objective",
                  *DEPLOYMENT_FIELDS, *optional]
    return render_csv(fieldnames, rows)


def _render_table(args: argparse.Namespace, settings: Sequence[Setting], points: Sequence[SweepPoint]) -> str:
    from kvplan.commands._tables import (
        OBJECTIVE_TITLES,
        DeploymentColumns,
        closest_deployment,
        describe_search,
        describe_sla,
        render_rows,
    )
    from kvplan.output import optional_settings_in

    plans = [point.plan for point in points if point.plan is not None]
    deployments = [closest_deployment(point.result) if point.result is not None else None for point in points]
    utilizations = {d.evaluation.config.gpu_memory_utilization for d in deployments if d is not None}
    optional = optional_settings_in([d.evaluation.config for d in deployments if d is not None])
    columns = DeploymentColumns(plans, utilization_varies=len(utilizations) > 1, optional_settings=optional)
    objectives = {plan.objective for plan in plans}
    slas = {describe_sla(plan) for plan in plans}

    shape = " x ".join(f"{setting.path} ({len(setting.values)})" for setting in settings)
    lines = [
        f"Sweep of {args.plan}: {len(points)} point(s), {shape}",
        f"Search per point: {describe_search(args.trials, args.seed, args.exhaustive)}",
    ]
    if len(objectives) == 1:
        lines.append(f"Objective: {OBJECTIVE_TITLES[next(iter(objectives))]}")
    if len(slas) == 1:
        lines.append(f"SLA: {next(iter(slas))}")

    headers = [setting.path for setting in settings]
    if len(objectives) > 1:
        headers.append("objective")
    headers += [*columns.headers(), "SLA"]
    rows = []
    for point, deployment in zip(points, deployments):
        row = list(point.texts.values())
        if len(objectives) > 1:
            row.append(point.plan.objective if point.plan is not None else "-")
        row += columns.cells(deployment)
        row.append("met" if point.status == "met" else _reason(point))
        rows.append(row)

    met = sum(point.status == "met" for point in points)
    notes = [
        columns.notes(),
        "A row whose SLA column lists misses shows the deployment closest to the SLA: under an "
        "arrival rate the one that keeps up with the highest rate, otherwise the best-ranked one.",
        f"{met} of {len(points)} point(s) have a deployment that meets the SLA.",
    ]
    body = render_rows(headers, rows, args.format)
    return "\n".join([*lines, "", body, "", *notes]) + "\n"
