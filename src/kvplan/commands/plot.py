"""``kvplan plot``: draw a search result's throughput-latency front and the load curve of its best deployment.

The input is a JSON document that ``kvplan optimize --format json --output FILE``
wrote (with or without ``--objective``), or an Optuna storage (an SQLite file or URL, or
a journal file) holding a study that kvplan ran. The left panel shows every evaluated
deployment by output tokens per second per GPU against a latency, with the non-dominated
SLA-meeting ones joined as the front. The right panel evaluates the best deployment
with the cost model at growing concurrency (or arrival rate, for a plan with one).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import io
import json
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Sequence

from kvplan.cli import EXIT_OK, UsageError

if TYPE_CHECKING:
    from kvplan.costmodel.evaluate import Evaluation
    from kvplan.spec.types import Deployment, Plan

logger = logging.getLogger("kvplan")

OUTPUT_SUFFIXES = (".png", ".html", ".htm")
# Latencies the plot can put on its y axis.
LATENCY_CHOICES = tuple(f"{latency}_{statistic}" for latency in ("ttft", "tpot", "e2e")
                        for statistic in ("mean", "p50", "p90", "p99"))
DEFAULT_LATENCY = "ttft_p99"
# Points of the load curve: concurrency doubles from 1, or the arrival rate grows
# geometrically up to this fraction of the highest rate the deployment keeps up with.
CURVE_POINTS = 12
MAX_CURVE_CONCURRENCY = 65536
RATE_CURVE_TOP = 0.95
CONFIG_KEYS = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization")
SQLITE_SIGNATURE = b"SQLite format 3\x00"
# Each line of an Optuna journal file is a JSON operation that starts with this key.
JOURNAL_START = b'{"op_code"'


@dataclasses.dataclass(frozen=True)
class PlotPoint:
    """One evaluated deployment as the plot draws it."""

    config: dict[str, Any]
    feasible: bool
    sla_met: bool
    violations: tuple[str, ...]
    # Metrics keyed like Evaluation.metrics; empty for an infeasible deployment.
    metrics: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PlotData:
    """Contents of a result or study: its plan, objectives and evaluated deployments."""

    source: str
    plan_name: str
    plan_source: str | None
    # Canonical metric names, or the plan's single objective.
    objectives: tuple[str, ...]
    points: tuple[PlotPoint, ...]
    # The deployment whose load curve is drawn, or None when none is feasible.
    best: PlotPoint | None
    # The plan itself when the source stores it (a study); else it is loaded from plan_source.
    plan: Plan | None = None


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    load: float
    throughput_per_gpu: float | None
    latency: float | None
    tpot_p50: float | None
    keeps_up: bool


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", help="draw the throughput-latency front of a search result and the load curve of its best deployment",
        description="Draw every deployment of a search result by output tokens/s per GPU against a "
                    "latency, with the Pareto front of the SLA-meeting ones, infeasible and SLA-missing "
                    "deployments marked, and the best deployment's throughput and latency as "
                    "concurrency (or the arrival rate) grows. The input is a JSON file from "
                    "kvplan optimize --format json --output FILE, or an Optuna storage with "
                    "--study-name.",
    )
    parser.add_argument("source", metavar="STUDY_OR_RESULT",
                        help="a JSON result file, an SQLite file or storage URL such as sqlite:///runs.db, "
                             "or an Optuna journal file")
    parser.add_argument("--output", required=True, metavar="FILE",
                        help="the image to write: FILE.png, or FILE.html for a self-contained page")
    parser.add_argument("--study-name", metavar="NAME",
                        help="the study to plot when the storage contains several")
    parser.add_argument("--plan", metavar="PLAN",
                        help="the Plan spec to evaluate the load curve with (default: the plan the "
                             "result or study names)")
    parser.add_argument("--latency", choices=LATENCY_CHOICES, default=None, metavar="METRIC",
                        help="latency on the y axes: ttft, tpot or e2e with _mean, _p50, _p90 or _p99, "
                             "such as tpot_p50 (default: the result's first latency objective, else ttft_p99)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    suffix = os.path.splitext(args.output)[1].lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {args.output!r} must end in .png or .html; the suffix picks the format")

    data = load_plot_data(args.source, study_name=args.study_name, plan_path=args.plan)
    latency = args.latency or next((name for name in data.objectives if name in LATENCY_CHOICES),
                                   DEFAULT_LATENCY)
    plan = _load_curve_plan(data, args.plan)
    curve, curve_note = load_curve(plan, data.best, latency) if plan is not None else ([], "no plan to evaluate")
    if suffix == ".png":
        from kvplan.atomic import write_bytes_atomic

        figure = draw_figure(data, curve, curve_note, latency)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        _write(args.output, lambda: write_bytes_atomic(args.output, buffer.getvalue()))
    else:
        from kvplan.atomic import write_text_atomic

        page = render_html(data, curve, curve_note, latency)
        _write(args.output, lambda: write_text_atomic(args.output, page))
    front = sum(1 for point in front_points(data.points, latency))
    print(f"kvplan: wrote {args.output}: {len(data.points)} deployments, {front} on the front of output "
          f"tokens/s per GPU and {_title(latency)}, {len(curve)} load points", file=sys.stderr)
    return EXIT_OK


def _write(path: str, write) -> None:
    from kvplan.spec.errors import KvplanError

    try:
        write()
    except OSError as error:
        raise KvplanError(f"cannot write {path}: {error.strerror or error}; check that the folder exists "
                          "and is writable") from None


# --- Loading ------------------------------------------------------------------------


def load_plot_data(source: str, *, study_name: str | None = None, plan_path: str | None = None) -> PlotData:
    """Load a JSON result file, or a study from an Optuna storage URL or file.

    Raises KvplanError for a file that is neither, or a document of another command.
    """
    from kvplan.spec.errors import KvplanError

    if "://" in source:
        return _load_study(source, study_name, plan_path)
    if study_name is not None and source.endswith(".json"):
        raise UsageError(f"--study-name applies to a storage, but {source} is a JSON result")
    try:
        with open(source, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise KvplanError(f"cannot read {source}: {error.strerror or error}") from None
    if head.startswith(SQLITE_SIGNATURE):
        return _load_study(f"sqlite:///{os.path.abspath(source)}", study_name, plan_path)
    if head.lstrip().startswith(JOURNAL_START):
        return _load_study(os.path.abspath(source), study_name, plan_path, journal=True)
    if head.lstrip().startswith(b"{"):
        if study_name is not None:
            raise UsageError(f"--study-name applies to a storage, but {source} is a JSON result")
        return _load_result(source)
    raise KvplanError(f"{source} is neither a JSON result of kvplan optimize nor an Optuna storage (SQLite or "
                      "journal file)")


def _load_result(path: str) -> PlotData:
    from kvplan.spec.errors import KvplanError

    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise KvplanError(f"cannot read {path} as JSON: {error}") from None
    command = document.get("command", "optimize") if isinstance(document, dict) else None
    if command != "optimize" or not isinstance(document.get("plan"), dict):
        hint = f" (it comes from kvplan {command})" if isinstance(command, str) else ""
        raise KvplanError(f"{path} is not a result of kvplan optimize --format json{hint}; write one with "
                          "kvplan optimize PLAN --format json --output FILE")
    if "points" in document:
        objectives = tuple(o.get("metric") for o in document.get("objectives") or [])
        entries = document["points"]
    elif "results" in document:
        objectives = (document.get("objective"),)
        entries = document["results"]
    else:
        entries = []
    if not entries:
        raise KvplanError(f"{path} contains no deployments to plot; write a result with "
                          "kvplan optimize PLAN --format json --output FILE")
    try:
        points = tuple(_point_from_entry(entry) for entry in entries)
    except (KeyError, TypeError, ValueError) as error:
        raise KvplanError(f"{path}: a deployment entry is malformed ({type(error).__name__}: {error})") from None
    best = _best_point(points, document)
    plan = document["plan"]
    return PlotData(path, str(plan.get("name")), plan.get("source"), objectives, points, best)


def _config_of(entry: dict[str, Any]) -> dict[str, Any]:
    """Return an entry's deployment: the CONFIG_KEYS and the optional settings it sets."""
    from kvplan.spec.types import OPTIONAL_DEPLOYMENT_FIELDS

    config = {key: entry["config"][key] for key in CONFIG_KEYS}
    config.update({key: entry["config"][key] for key in OPTIONAL_DEPLOYMENT_FIELDS if key in entry["config"]})
    return config


def _point_from_entry(entry: dict[str, Any]) -> PlotPoint:
    config = _config_of(entry)
    return PlotPoint(
        config=config,
        feasible=bool(entry["feasible"]),
        sla_met=bool(entry["sla_met"]),
        violations=tuple(entry.get("violations") or ()),
        metrics=dict(entry.get("metrics") or {}),
    )


def _best_point(points: Sequence[PlotPoint], document: dict[str, Any]) -> PlotPoint | None:
    """Return the front's first deployment (a ranked result's first SLA-meeting one).

    Documents list deployments ranked, so the first one that meets the SLA is the best;
    when none does, the first feasible one is used.
    """
    if document.get("front"):
        config = _config_of(document["front"][0])
        for point in points:
            if point.config == config:
                return point
    for point in points:
        if point.feasible and point.sla_met:
            return point
    return next((point for point in points if point.feasible), None)


def _load_study(source: str, study_name: str | None, plan_path: str | None, *, journal: bool = False) -> PlotData:
    """Rank the evaluations a kvplan study stores in its trials.

    The study stores its plan, so the load curve needs no plan file unless ``--plan``
    replaces it.
    """
    from kvplan.optimizer import studies
    from kvplan.spec import load_plan
    from kvplan.spec.errors import KvplanError

    url = f"{studies.JOURNAL_PREFIX}{source}" if journal else source
    try:
        storage_url = studies.parse_storage_url(url)
    except ValueError as error:
        raise KvplanError(f"{source} is neither a JSON result nor a storage: {error}") from None
    storage = studies.open_storage(storage_url, must_exist=True)
    study = studies.load_kvplan_study(storage, study_name, storage_display=storage_url.display)
    plan = load_plan(plan_path) if plan_path else studies.study_plan(study)
    evaluations = list(studies.evaluations_in_study(study).values())
    if not evaluations:
        raise KvplanError(f"study {study.study_name!r} in {storage_url.display} has no completed trial to plot")
    # A multi-objective study is ranked by its objectives, with its Pareto front first;
    # a single-objective one by the plan's objective.
    objectives = studies.study_objectives(study) or (plan.objective,)
    points, best = _rank_evaluations(plan, objectives, evaluations)
    return PlotData(f"{storage_url.display} (study {study.study_name})", plan.name, plan_path or plan.source,
                    objectives, points, best, plan)


def _rank_evaluations(plan: Plan, objectives: Sequence[str],
                      evaluations: Sequence[Evaluation]) -> tuple[tuple[PlotPoint, ...], PlotPoint | None]:
    from kvplan.optimizer.objectives import METRICS
    from kvplan.optimizer.pareto import rank_points
    from kvplan.optimizer.search import _rank

    if len(objectives) >= 2 and all(name in METRICS for name in objectives):
        ranked = rank_points(plan, [METRICS[name] for name in objectives], evaluations)
    else:
        ranked = _rank(plan, evaluations)
    points = tuple(
        PlotPoint(r.evaluation.config.to_dict(), r.evaluation.feasible, r.sla_met, tuple(r.violations),
                  dict(r.evaluation.metrics))
        for r in ranked
    )
    best = next((p for p in points if p.feasible and p.sla_met), None) or next((p for p in points if p.feasible), None)
    return points, best


# --- Front and load curve -----------------------------------------------------------


def _latency_value(metrics: dict[str, Any], latency: str) -> float | None:
    from kvplan.optimizer.objectives import METRICS

    return METRICS[latency].value(metrics)


def _drawable(point: PlotPoint, latency: str) -> bool:
    throughput = point.metrics.get("output_tokens_per_s_per_gpu")
    value = _latency_value(point.metrics, latency)
    return point.feasible and throughput is not None and value is not None and value > 0


def front_points(points: Sequence[PlotPoint], latency: str) -> list[PlotPoint]:
    """Return the SLA-meeting points no other beats in both throughput per GPU and latency."""
    from kvplan.optimizer.pareto import non_dominated

    candidates = [p for p in points if p.sla_met and _drawable(p, latency)]
    vectors = [(p.metrics["output_tokens_per_s_per_gpu"], _latency_value(p.metrics, latency)) for p in candidates]
    front = [candidates[i] for i in non_dominated(vectors, ("maximize", "minimize"))]
    return sorted(front, key=lambda p: p.metrics["output_tokens_per_s_per_gpu"])


def _load_curve_plan(data: PlotData, plan_path: str | None) -> Plan | None:
    from kvplan.spec import load_plan
    from kvplan.spec.errors import KvplanError

    if plan_path is None and data.plan is not None:
        return data.plan
    path = plan_path or data.plan_source
    if not path or path.startswith("<"):
        logger.warning("the result names no plan file, so the load curve is left out; pass --plan PLAN")
        return None
    if not os.path.exists(path):
        raise KvplanError(f"plan {path} named by {data.source} not found; run kvplan plot from the folder "
                          "where the search ran, or pass --plan PLAN")
    return load_plan(path)


def load_curve(plan: Plan, best: PlotPoint | None, latency: str) -> tuple[list[CurvePoint], str]:
    """Evaluate ``best`` at growing load; return the points and a note on the load axis.

    A plan with an arrival rate is evaluated at rates up to ``RATE_CURVE_TOP`` of the
    highest rate the deployment keeps up with. Any other plan is evaluated as closed-loop
    clients, from 1 up to twice the requests the deployment can run at once.
    """
    from kvplan.costmodel.evaluate import CostModel
    from kvplan.optimizer.variants import deployment_plan
    from kvplan.spec.types import Deployment

    if best is None or not best.feasible:
        return [], "no feasible deployment"
    deployment = Deployment(**best.config)
    # The deployment's node type, KV cache dtype, watermark and admission rule, where set.
    plan = deployment_plan(plan, deployment)
    workload = plan.workload
    if workload.arrival_mode == "rate":
        top = CostModel(plan).evaluate([deployment])[0].metrics.get("max_arrival_rate_per_s")
        if not top:
            return [], "the deployment keeps up with no arrival rate"
        top *= RATE_CURVE_TOP
        loads = [top * (1 / 64) ** (1 - i / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)]
        variants = [dataclasses.replace(workload, arrival_rate_per_s=load) for load in loads]
        note = "arrival rate (requests/s)"
    else:
        limit = min(2 * deployment.dp * deployment.max_num_seqs, MAX_CURVE_CONCURRENCY)
        loads = [float(2**i) for i in range(int(math.log2(limit)) + 1)]
        if len(loads) > CURVE_POINTS:
            step = len(loads) / CURVE_POINTS
            loads = [loads[int(i * step)] for i in range(CURVE_POINTS - 1)] + [loads[-1]]
        variants = [dataclasses.replace(workload, arrival_mode="concurrency", concurrency=int(load),
                                        requests=None, arrival_rate_per_s=None) for load in loads]
        note = "concurrent clients"
    curve = []
    model = None
    for load, variant in zip(loads, variants):
        variant_plan = dataclasses.replace(plan, workload=variant)
        model = CostModel(variant_plan)
        evaluation = model.evaluate([deployment])[0]
        metrics = evaluation.metrics
        curve.append(CurvePoint(
            load=load,
            throughput_per_gpu=metrics.get("output_tokens_per_s_per_gpu") if evaluation.feasible else None,
            latency=_latency_value(metrics, latency) if evaluation.feasible else None,
            tpot_p50=_latency_value(metrics, "tpot_p50") if evaluation.feasible else None,
            keeps_up=metrics.get("keeps_up") is not False,
        ))
    return curve, note


# --- Drawing ------------------------------------------------------------------------


def _title(latency: str) -> str:
    from kvplan.optimizer.objectives import METRICS

    return METRICS[latency].title


def _describe_config(config: dict[str, Any]) -> str:
    from kvplan.output import OPTIONAL_CONFIG_COLUMNS, format_setting

    text = (f"dp={config['dp']} tp={config['tp']} pp={config['pp']} max_num_seqs={config['max_num_seqs']} "
            f"max_num_batched_tokens={config['max_num_batched_tokens']} "
            f"gpu_memory_utilization={config['gpu_memory_utilization']:g}")
    for key in OPTIONAL_CONFIG_COLUMNS:
        if config.get(key) is not None:
            text += f" {key}={format_setting(config[key])}"
    return text


def draw_figure(data: PlotData, curve: Sequence[CurvePoint], curve_note: str, latency: str):
    """Return a matplotlib Figure with the front panel and the load-curve panel."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 5.5), layout="constrained")
    front_axes, curve_axes = figure.subplots(1, 2)
    _draw_front(front_axes, data, latency)
    _draw_curve(curve_axes, data, curve, curve_note, latency)
    names = [name for name in data.objectives if name]
    label = "objectives" if len(names) > 1 else "objective"
    figure.suptitle(f"{data.plan_name}: {len(data.points)} deployments evaluated ({label}: {', '.join(names)})")
    return figure


def _draw_front(axes, data: PlotData, latency: str) -> None:
    drawable = [p for p in data.points if _drawable(p, latency)]
    front = front_points(data.points, latency)
    front_ids = {id(p) for p in front}
    met = [p for p in drawable if p.sla_met and id(p) not in front_ids]
    missed = [p for p in drawable if not p.sla_met]
    infeasible = sum(1 for p in data.points if not p.feasible)
    undrawn = sum(1 for p in data.points if p.feasible and not _drawable(p, latency))

    def xy(points):
        return ([p.metrics["output_tokens_per_s_per_gpu"] for p in points],
                [_latency_value(p.metrics, latency) for p in points])

    if met:
        axes.scatter(*xy(met), s=18, color="0.6", label=f"meets the SLA, dominated ({len(met)})")
    if missed:
        axes.scatter(*xy(missed), s=26, marker="x", color="tab:orange", label=f"misses the SLA ({len(missed)})")
    if front:
        x, y = xy(front)
        axes.plot(x, y, "-o", color="tab:blue", markersize=5, drawstyle="steps-pre",
                  label=f"Pareto front ({len(front)})")
    if data.best is not None and _drawable(data.best, latency):
        x, y = xy([data.best])
        first = data.objectives[0] if data.objectives else "the objective"
        axes.scatter(x, y, s=160, marker="*", color="tab:red", zorder=5, label=f"best by {first}")
    if infeasible:
        axes.plot([], [], " ", label=f"infeasible, not drawn ({infeasible})")
    if undrawn:
        axes.plot([], [], " ", label=f"no {_title(latency)} predicted ({undrawn})")
    axes.set_xlabel("output tokens/s per GPU")
    axes.set_ylabel(f"{_title(latency)} (s)")
    _log_scale_if_wide(axes, [_latency_value(p.metrics, latency) for p in drawable])
    axes.set_title(f"Throughput per GPU against {_title(latency)}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")


def _log_scale_if_wide(axes, values: Sequence[float | None]) -> None:
    positive = [v for v in values if v is not None and v > 0]
    if positive and max(positive) / min(positive) > 20:
        axes.set_yscale("log")


def _draw_curve(axes, data: PlotData, curve: Sequence[CurvePoint], note: str, latency: str) -> None:
    best = data.best
    points = [c for c in curve if c.throughput_per_gpu is not None and c.latency is not None]
    if best is None or not points:
        axes.text(0.5, 0.5, f"No load curve: {note}", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    x = [c.throughput_per_gpu for c in points]
    axes.plot(x, [c.latency for c in points], "-o", color="tab:blue", label=_title(latency))
    if latency != "tpot_p50":
        tpot = [(c.throughput_per_gpu, c.tpot_p50) for c in points if c.tpot_p50 is not None]
        if tpot:
            axes.plot([t[0] for t in tpot], [t[1] for t in tpot], "-s", color="tab:green", markersize=4,
                      label="TPOT p50")
    for c in points:
        label = f"{c.load:,.0f}" if c.load >= 1 and c.load.is_integer() else f"{c.load:.3g}"
        if not c.keeps_up:
            label += " (falls behind)"
        axes.annotate(label, (c.throughput_per_gpu, c.latency), textcoords="offset points", xytext=(4, 4),
                      fontsize="x-small", color="0.3")
    axes.set_yscale("log")
    axes.set_xlabel("output tokens/s per GPU")
    axes.set_ylabel("latency (s)")
    axes.set_title(f"Best deployment as load grows (labels: {note})", fontsize="medium")
    axes.text(0.01, 0.01, _describe_config(best.config), transform=axes.transAxes, fontsize="x-small",
              color="0.3", va="bottom")
    axes.grid(True, alpha=0.3, which="both")
    axes.legend(fontsize="small")


def render_html(data: PlotData, curve: Sequence[CurvePoint], curve_note: str, latency: str) -> str:
    """Return a self-contained HTML page: the figure as inline SVG and the front as a table."""
    figure = draw_figure(data, curve, curve_note, latency)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE before the element
    title = f"kvplan: {data.plan_name}"
    front = front_points(data.points, latency)
    front_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
            p.config["dp"], p.config["tp"], p.config["pp"], p.config["max_num_seqs"],
            p.config["max_num_batched_tokens"], f"{p.config['gpu_memory_utilization']:g}",
            f"{p.metrics['output_tokens_per_s_per_gpu']:,.0f}", f"{_latency_value(p.metrics, latency):.4g}",
        )) + "</tr>"
        for p in reversed(front)
    )
    curve_rows = "".join(
        f"<tr><td>{c.load:.4g}</td><td>{_cell(c.throughput_per_gpu, ',.0f')}</td>"
        f"<td>{_cell(c.latency, '.4g')}</td><td>{_cell(c.tpot_p50, '.4g')}</td>"
        f"<td>{'yes' if c.keeps_up else 'no'}</td></tr>"
        for c in curve
    )
    latency_title = html.escape(_title(latency))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Source: {html.escape(data.source)}. {len(data.points)} deployments evaluated, {len(front)} on the
front of output tokens/s per GPU against {latency_title} among those that meet the SLA.</p>
<figure id="plot">
{svg}
</figure>
<h2>Pareto front</h2>
<table id="front">
<tr><th>dp</th><th>tp</th><th>pp</th><th>max_num_seqs</th><th>max_num_batched_tokens</th>
<th>gpu_memory_utilization</th><th>output tokens/s per GPU</th><th>{latency_title} (s)</th></tr>
{front_rows}
</table>
<h2>Best deployment as load grows</h2>
<p>{html.escape(_describe_config(data.best.config)) if data.best else "No feasible deployment."}
Load: {html.escape(curve_note)}.</p>
<table id="curve">
<tr><th>load</th><th>output tokens/s per GPU</th><th>{latency_title} (s)</th><th>TPOT p50 (s)</th>
<th>keeps up</th></tr>
{curve_rows}
</table>
</body>
</html>
"""


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
