"""``kvplan study``: list, show and export the Optuna studies that searches keep in a storage.

Also defines the options that ``optimize`` and ``sweep`` share for stored studies
(``--storage``, ``--study-name``, ``--n-jobs``, ``--quiet``) and their handling of Ctrl-C.
Every study command reads the trials' stored predictions and evaluates nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from kvplan.cli import EXIT_INTERRUPTED, EXIT_OK, FORMATS, UsageError

if TYPE_CHECKING:
    import optuna

    from kvplan.optimizer.pareto import ParetoResult
    from kvplan.optimizer.studies import SearchInterrupted

EXPORT_FORMATS = ("csv", "json")
STORAGE_HELP = ("where the search keeps its Optuna study: sqlite:///FILE, journal:///FILE (an Optuna "
                "journal file), postgresql://USER:PASSWORD@HOST/DATABASE or mysql+pymysql://...; four "
                "slashes before an absolute path")


def storage_url(text: str) -> str:
    """Check a ``--storage`` value for argparse and return it unchanged."""
    from kvplan.optimizer.studies import parse_storage_url

    try:
        parse_storage_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of a search that keeps its trials in a study."""
    parser.add_argument("--storage", type=storage_url, metavar="URL",
                        help=f"{STORAGE_HELP}. A later run with the same storage and study name adds trials "
                             "to it (default: in memory, gone when the command ends)")
    parser.add_argument("--study-name", metavar="NAME",
                        help="name of the study in --storage (default: the plan's name)")
    parser.add_argument("--n-jobs", type=int, default=1, metavar="N",
                        help="worker processes that share the trials, each with its own sampler seed "
                             "(default: 1); without --storage they share a temporary journal file")
    parser.add_argument("--quiet", action="store_true",
                        help="draw no progress bar on stderr (it is drawn only when stderr is a terminal)")


def check_search_arguments(args: argparse.Namespace) -> None:
    if args.n_jobs < 1:
        raise UsageError(f"--n-jobs must be at least 1, but got {args.n_jobs}")
    if getattr(args, "exhaustive", False) and (args.storage is not None or args.n_jobs != 1):
        raise UsageError("--exhaustive evaluates every deployment in one process without Optuna, so it keeps "
                         "no study; drop --storage and --n-jobs, or drop --exhaustive")
    if args.study_name is not None and not args.study_name.strip():
        raise UsageError("--study-name is empty; give a name or leave the option out")


def search_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return the keyword arguments of ``kvplan.optimize`` that the study options set."""
    return {"storage": args.storage, "study_name": args.study_name, "n_jobs": args.n_jobs}


def report_interrupted(command: str, interrupted: SearchInterrupted) -> int:
    """Tell on stderr what an interrupted search kept, and return the exit code."""
    from kvplan.optimizer.pareto import ParetoResult

    result = interrupted.result
    shown = "the Pareto front" if isinstance(result, ParetoResult) else "the best"
    message = (f"kvplan {command}: interrupted by Ctrl-C; the output shows {shown} of the "
               f"{result.evaluated} deployment(s) evaluated in completed trials")
    if interrupted.storage is not None:
        message += (f". They are kept in study {interrupted.study_name!r} in {interrupted.storage}, and the "
                    "same command with the same --storage resumes it")
    print(message, file=sys.stderr)
    return EXIT_INTERRUPTED


# kvplan study


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", help="list, show or export the studies in an Optuna storage",
        description="Read the Optuna studies that optimize --storage and sweep --storage keep. Nothing is "
                    "evaluated again: each trial stores its deployment and the cost model's prediction.",
    )
    actions = parser.add_subparsers(dest="study_command", metavar="ACTION", required=True,
                                    parser_class=type(parser))

    listing = actions.add_parser("list", help="list the studies with trial counts and the best deployment",
                                 description="List every study in the storage with its trial counts and "
                                             "the best deployment that meets the SLA, or the size of the "
                                             "Pareto front of a multi-objective study.")
    listing.add_argument("storage", type=storage_url, metavar="STORAGE", help=STORAGE_HELP)
    listing.add_argument("--format", choices=("table", "json"), default="table",
                         help="output format (default: table)")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="rank the deployments of a study like kvplan optimize",
                              description="Rank the deployments of a study's completed trials and print them "
                                          "like kvplan optimize: a multi-objective study prints its Pareto "
                                          "front. Exit code 1 when none meets the SLA.")
    show.add_argument("storage", type=storage_url, metavar="STORAGE", help=STORAGE_HELP)
    show.add_argument("--study-name", metavar="NAME",
                      help="the study to show (default: the only study in the storage)")
    show.add_argument("--top", type=int, default=None,
                      help="rows to print (default: 10, or every row with --all; the whole front of a "
                           "multi-objective study)")
    show.add_argument("--all", action="store_true", dest="all_deployments",
                      help="list every deployment, not only the best one of each (dp, tp, pp) layout or the "
                           "Pareto front")
    show.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    show.set_defaults(handler=run_show)

    export = actions.add_parser("export", help="write every trial of a study as CSV or JSON",
                                description="Write every trial of a study, with its deployment and "
                                            "predicted metrics, as CSV or JSON.")
    export.add_argument("storage", type=storage_url, metavar="STORAGE", help=STORAGE_HELP)
    export.add_argument("--study-name", metavar="NAME",
                        help="the study to export (default: the only study in the storage)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                        help="csv or json (default: from the --output file's extension, else csv)")
    export.add_argument("--output", metavar="FILE",
                        help="write to FILE (replaced atomically) instead of stdout")
    export.set_defaults(handler=run_export)


@contextlib.contextmanager
def _opened(storage: str) -> Iterator[optuna.storages.BaseStorage]:
    from kvplan.optimizer.studies import opened_storage

    with opened_storage(storage, must_exist=True) as opened:
        yield opened


def _display(storage: str) -> str:
    from kvplan.optimizer.studies import parse_storage_url

    return parse_storage_url(storage).display


@contextlib.contextmanager
def _loaded(args: argparse.Namespace) -> Iterator[optuna.Study]:
    """Yield the study that ``--study-name`` names, or the only one, with its storage open."""
    from kvplan.optimizer.studies import load_kvplan_study

    with _opened(args.storage) as storage:
        yield load_kvplan_study(storage, args.study_name, storage_display=_display(args.storage))


def _trial_counts(study: optuna.Study) -> dict[str, int]:
    """Count trials by state, and completed kvplan trials by the part of the search that made them."""
    from kvplan.optimizer.studies import SOURCE_POLISH, SOURCE_TPE, trial_source

    counts = {"complete": 0, "sampled": 0, "polish": 0, "running": 0, "failed": 0, "other": 0}
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name
        if state == "COMPLETE":
            counts["complete"] += 1
            source = trial_source(trial)
            if source == SOURCE_TPE:
                counts["sampled"] += 1
            elif source == SOURCE_POLISH:
                counts["polish"] += 1
        elif state == "RUNNING":
            counts["running"] += 1
        elif state == "FAIL":
            counts["failed"] += 1
        else:
            counts["other"] += 1
    return counts


def _study_entry(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    """Describe one study for ``study list``: its plan, trial counts and best deployment."""
    import optuna

    from kvplan.optimizer.studies import PLAN_ATTR, result_of_study, study_objectives, study_plan

    study = optuna.load_study(study_name=name, storage=storage)
    entry: dict[str, Any] = {"study": name, "kvplan": PLAN_ATTR in study.user_attrs, "trials": _trial_counts(study),
                             "plan": None, "objective": None, "objectives": None, "front_size": None, "best": None}
    if not entry["kvplan"]:
        return entry
    plan = study_plan(study)
    entry["plan"] = plan.name
    objectives = study_objectives(study)
    result = result_of_study(study, plan)
    best = result.best
    if objectives is not None:
        # The best deployment of a multi-objective study is the front's first by the first objective.
        entry["objectives"] = list(objectives)
        entry["front_size"] = len(result.front)
        if best is not None:
            entry["best"] = {"objective_values": dict(zip(objectives, best.values)),
                             "config": best.evaluation.config.to_dict()}
        return entry
    entry["objective"] = plan.objective
    entry["objectives"] = [plan.objective]
    if best is not None:
        entry["best"] = {"objective_value": best.objective_value, "config": best.evaluation.config.to_dict()}
    return entry


def run_list(args: argparse.Namespace) -> int:
    import optuna

    from kvplan.commands._progress import format_best
    from kvplan.commands._tables import render_json, render_rows
    from kvplan.formatting import format_count

    with _opened(args.storage) as storage:
        entries = [_study_entry(storage, name) for name in sorted(optuna.get_all_study_names(storage))]
    if args.format == "json":
        sys.stdout.write(render_json({"storage": _display(args.storage), "studies": entries}))
        return EXIT_OK
    if not entries:
        print(f"No study in {_display(args.storage)}.")
        return EXIT_OK
    rows = []
    for entry in entries:
        counts = entry["trials"]
        if not entry["kvplan"]:
            rows.append([entry["study"], "-", "-", format_count(counts["complete"]), "-", "-",
                         "not made by kvplan", "-"])
            continue
        best = entry["best"]
        if best is None:
            best_text, deployment = "no deployment meets the SLA", "-"
        else:
            if entry["objective"] is None:
                best_text = f"front of {format_count(entry['front_size'])}"
            else:
                best_text = format_best(entry["objective"], best["objective_value"]).removeprefix("best ")
            config = best["config"]
            deployment = (f"dp={config['dp']} tp={config['tp']} pp={config['pp']} "
                          f"max_num_seqs={config['max_num_seqs']}")
        rows.append([entry["study"], entry["plan"], ", ".join(entry["objectives"]), format_count(counts["complete"]),
                     format_count(counts["running"]), format_count(counts["failed"]), best_text, deployment])
    headers = ["study", "plan", "objective", "trials", "running", "failed", "best", "best deployment"]
    print(f"Studies in {_display(args.storage)}:\n")
    print(render_rows(headers, rows, "table"))
    print("\nColumns: trials = completed trials (sampled and polish), running = asked and not yet "
          "completed, best = best objective value among deployments that meet the SLA.")
    if any(entry["front_size"] is not None for entry in entries):
        print("A multi-objective study lists its objectives; its best is the size of its Pareto front, and its "
              "best deployment the front's best by the first objective.")
    return EXIT_OK


def _study_summary(study: optuna.Study, storage: str) -> dict[str, Any]:
    return {"name": study.study_name, "storage": _display(storage), "trials": _trial_counts(study)}


def run_show(args: argparse.Namespace) -> int:
    from kvplan.cli import DEFAULT_TOP, _exit_code_for
    from kvplan.commands._tables import render_json
    from kvplan.optimizer.studies import result_of_study
    from kvplan.output import render_result

    if args.top is not None and args.top < 1:
        raise UsageError(f"--top must be at least 1, but got {args.top}")
    with _loaded(args) as study:
        result = result_of_study(study)
        summary = _study_summary(study, args.storage)
    if not result.evaluated:
        from kvplan.spec.errors import KvplanError

        raise KvplanError(f"study {summary['name']!r} has no completed trials yet")
    from kvplan.optimizer.pareto import ParetoResult

    if isinstance(result, ParetoResult):
        return _show_front(args, result, summary)
    top = args.top
    if not args.all_deployments:
        result = result.best_per_layout()
        top = top or DEFAULT_TOP
    if args.format == "json":
        document = result.to_dict(top=top)
        document["study"] = summary
        sys.stdout.write(render_json(document))
    elif args.format == "csv":
        sys.stdout.write(render_result(result, "csv", top=top))
    else:
        separator = "\n\n" if args.format == "markdown" else "\n"
        sys.stdout.write(_study_heading(summary) + separator + render_result(result, args.format, top=top))
    return _exit_code_for(result)


def _show_front(args: argparse.Namespace, result: ParetoResult, summary: dict[str, Any]) -> int:
    """Print the Pareto front of a multi-objective study like kvplan optimize --objective."""
    from kvplan.commands._pareto import exit_code_of_front, render_pareto
    from kvplan.commands._tables import render_json

    if args.format == "json":
        document = result.to_dict(top=args.top)
        document["study"] = summary
        sys.stdout.write(render_json(document))
    else:
        text = render_pareto(result, args.format, top=args.top, all_points=args.all_deployments)
        if args.format != "csv":
            separator = "\n\n" if args.format == "markdown" else "\n"
            text = _study_heading(summary) + separator + text
        sys.stdout.write(text)
    return exit_code_of_front(result)


def _study_heading(summary: dict[str, Any]) -> str:
    counts = summary["trials"]
    return (f"Study {summary['name']} in {summary['storage']}: {counts['complete']} completed trials "
            f"({counts['sampled']} sampled, {counts['polish']} from the polish)")


# Export

TRIAL_FIELDS = ("trial", "state", "source", "value", "sla_constraint", "datetime_start", "datetime_complete")


def _export_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Return one record per trial: Optuna's fields, the deployment and the prediction.

    A record of a multi-objective study also has ``on_front``: whether its deployment is
    on the study's Pareto front.
    """
    from kvplan.optimizer.search import sla_violations
    from kvplan.optimizer.studies import (CONSTRAINT_NAME, result_of_study, study_objectives, study_plan,
                                          trial_evaluation, trial_source)

    plan = study_plan(study)
    front = None
    if study_objectives(study) is not None:
        front = {point.evaluation.config for point in result_of_study(study, plan).front}
    records = []
    for trial in study.get_trials(deepcopy=False):
        evaluation = trial_evaluation(trial)
        violations = sla_violations(plan, evaluation) if evaluation is not None and evaluation.feasible else []
        record = {
            "trial": trial.number,
            "state": trial.state.name,
            "source": trial_source(trial),
            "value": trial.value if trial.values is not None and len(trial.values) == 1 else trial.values,
            "sla_constraint": trial.constraints.get(CONSTRAINT_NAME),
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
            "params": trial.params,
            "config": evaluation.config.to_dict() if evaluation is not None else None,
            "feasible": evaluation.feasible if evaluation is not None else None,
            "infeasible_reason": evaluation.infeasible_reason if evaluation is not None else None,
            "sla_met": (evaluation.feasible and not violations) if evaluation is not None else None,
            "violations": violations,
            "metrics": evaluation.metrics if evaluation is not None else None,
        }
        if front is not None:
            record["on_front"] = evaluation is not None and evaluation.config in front
        records.append(record)
    return records


def _render_export_csv(records: list[dict[str, Any]], objectives: Sequence[str] | None) -> str:
    """Render the records as CSV, with a ``value.METRIC`` column per objective for a multi-objective study."""
    from kvplan.commands._tables import render_csv
    from kvplan.output import CONFIG_COLUMNS, LATENCY_METRICS, OPTIONAL_CONFIG_COLUMNS, SCALAR_METRICS, STATISTICS

    latency_columns = [f"{key}_{statistic}" for key in LATENCY_METRICS for statistic in STATISTICS]
    trial_fields = list(TRIAL_FIELDS)
    if objectives is not None:
        value_columns = [f"value.{name}" for name in objectives]
        position = trial_fields.index("value")
        trial_fields[position:position + 1] = [*value_columns, "on_front"]
    # The optional settings (node, KV cache dtype, ...) get a column when some trial sets them.
    optional = [key for key in OPTIONAL_CONFIG_COLUMNS if any(key in (record["config"] or {}) for record in records)]
    fieldnames = [*trial_fields, *CONFIG_COLUMNS, *optional, "feasible", "infeasible_reason", "sla_met",
                  "violations", *SCALAR_METRICS, *latency_columns]
    rows = []
    for record in records:
        row: dict[str, Any] = {field: record[field] for field in TRIAL_FIELDS if field in trial_fields}
        if objectives is not None:
            row["on_front"] = record["on_front"]
            row.update(zip(value_columns, record["value"] or [None] * len(objectives)))
        row.update(record["config"] or {})
        row.update({
            "feasible": record["feasible"],
            "infeasible_reason": record["infeasible_reason"],
            "sla_met": record["sla_met"],
            "violations": "; ".join(record["violations"]),
        })
        metrics = record["metrics"] or {}
        for key in SCALAR_METRICS:
            row[key] = metrics.get(key)
        for key in LATENCY_METRICS:
            for statistic in STATISTICS:
                row[f"{key}_{statistic}"] = (metrics.get(key) or {}).get(statistic)
        rows.append({key: ("" if value is None else value) for key, value in row.items() if key in fieldnames})
    return render_csv(fieldnames, rows)


def _export_format(args: argparse.Namespace) -> str:
    if args.format is not None:
        return args.format
    if args.output is not None and args.output.lower().endswith(".json"):
        return "json"
    return "csv"


def run_export(args: argparse.Namespace) -> int:
    from kvplan.cli import write_output
    from kvplan.optimizer.search import SCHEMA_VERSION
    from kvplan.optimizer.studies import OBJECTIVE_ATTR, study_objectives

    with _loaded(args) as study:
        records = _export_records(study)
        summary = _study_summary(study, args.storage)
        objective = study.user_attrs.get(OBJECTIVE_ATTR)
        objectives = study_objectives(study)
        directions = [direction.name.lower() for direction in study.directions]
    if _export_format(args) == "json":
        document = {
            "schema_version": SCHEMA_VERSION,
            "command": "study export",
            "study": summary,
            "objective": objective,
            "objectives": list(objectives) if objectives is not None else None,
            "directions": directions,
            "trials": records,
        }
        text = json.dumps(document, indent=2, default=str) + "\n"
    else:
        text = _render_export_csv(records, objectives)
    write_output(args.output, text)
    return EXIT_OK
