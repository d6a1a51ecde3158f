"""``kvplan simulate``: the engine's behaviour over time for one or more deployments.

Runs the time-resolved fluid model of :mod:`kvplan.costmodel.simulate`. The table
output is a summary per deployment (beside the closed-form prediction) and a coarse time
table; CSV and JSON carry the series. ``--plot`` draws them with matplotlib, one panel
per series with the deployments overlaid, to compare with a dashboard of vLLM's metrics.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Sequence

from kvplan.cli import EXIT_FAILURE, EXIT_OK, UsageError, parse_config, write_output

if TYPE_CHECKING:
    import numpy as np

    from kvplan.costmodel.simulate import ConfigRun, Simulation
    from kvplan.spec.types import Plan

FORMATS = ("table", "json", "csv")

# Time intervals of the series by default: smooth curves in a plot, a CSV of a few
# hundred rows per deployment.
DEFAULT_POINTS = 200

# Rows of the time table in table output.
TABLE_TIMES = 10

# Limits of --points: two intervals at least, and few enough to keep a CSV readable.
MIN_POINTS = 2
MAX_POINTS = 100_000

# Size of the PNG in inches and its resolution: about 1300 x 1400 pixels.
FIGURE_SIZE_IN = (12.0, 13.0)
FIGURE_DPI = 110


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="show how deployments behave over time (throughput, KV use, preemptions)",
        description="Run a time-resolved model of vLLM's scheduler for each deployment given with "
                    "--config and report, over time, output throughput, KV cache usage, running and "
                    "waiting requests, preemptions and the share of each step spent reading HBM. An "
                    "offline batch runs until its last request ends; an arrival rate or a concurrency "
                    "runs for --duration. Exit code 0 when at least one deployment was simulated.",
    )
    parser.add_argument("plan", metavar="PLAN", help="path of a Plan spec")
    parser.add_argument("--config", action="append", required=True, metavar="KEY=VALUE,...",
                        help="a deployment, for example dp=1,tp=1,pp=1,max_num_seqs=1000; repeat to "
                             "overlay several")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--output", metavar="FILE",
                        help="write the output to FILE (replaced atomically) instead of stdout")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the series into this PNG file")
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS,
                        help=f"time intervals of the CSV, JSON and plot series (default: {DEFAULT_POINTS})")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="simulated time for an arrival rate or a concurrency (default: four times "
                             "the closed form's p99 end-to-end latency)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kvplan.costmodel.simulate import simulate
    from kvplan.spec import load_plan

    if not MIN_POINTS <= args.points <= MAX_POINTS:
        raise UsageError(f"--points must be between {MIN_POINTS} and {MAX_POINTS:,}, but got {args.points}")
    if args.duration is not None and not 0 < args.duration < float("inf"):
        raise UsageError(f"--duration must be a positive number of seconds, but got {args.duration}")
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot {args.plot!r} must end in .png")
    configs = [parse_config(text) for text in args.config]
    plan = load_plan(args.plan)
    if args.duration is not None and plan.workload.arrival_mode == "batch":
        raise UsageError("--duration applies to an arrival rate or a concurrency; this plan's offline "
                         "batch runs until its last request ends")

    plan = _variant_plan(plan, configs)
    simulation = simulate(plan, configs, horizon_s=args.duration)
    times, series = simulation.series(args.points)
    write_output(args.output, render(args, simulation, times, series))
    if args.plot is not None and any(run.feasible for run in simulation.runs):
        write_plot(args.plot, simulation, times, series)

    for run in simulation.runs:
        if not run.feasible:
            print(f"kvplan simulate: {config_label(run)} is infeasible: {run.infeasible_reason}", file=sys.stderr)
        elif not run.finished:
            print(f"kvplan simulate: {config_label(run)} did not finish within {run.steps:,} steps; its series "
                  "stop there", file=sys.stderr)
    if not any(run.feasible for run in simulation.runs):
        print("kvplan simulate: no feasible deployment to simulate; see the reasons above", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _variant_plan(plan: Plan, configs: list[dict[str, Any]]) -> Plan:
    """Return the plan with the node type, KV cache dtype, watermark and admission rule the configs set.

    The simulator runs every config under one plan, so configs that set these
    differently are rejected.
    """
    from kvplan.optimizer.search import _as_deployment
    from kvplan.optimizer.variants import deployment_plan, variant_of

    deployments = [_as_deployment(plan, config) for config in configs]
    variants = {variant_of(deployment) for deployment in deployments}
    if len(variants) > 1:
        raise UsageError("the --config options set node, kv_cache_dtype, watermark or "
                         "require_full_prompt_admission differently; simulate runs every config under one plan, "
                         "so give these settings the same values in every --config, or run simulate once per value")
    return deployment_plan(plan, deployments[0])


def config_label(run: ConfigRun) -> str:
    d = run.deployment
    from kvplan.output import OPTIONAL_CONFIG_COLUMNS, format_setting

    label = f"dp={d.dp},tp={d.tp},pp={d.pp},max_num_seqs={d.max_num_seqs},max_num_batched_tokens={d.max_num_batched_tokens}"
    label += f",gpu_memory_utilization={d.gpu_memory_utilization:g}"
    for key in OPTIONAL_CONFIG_COLUMNS:
        value = getattr(d, key)
        if value is not None:
            label += f",{key}={format_setting(value)}"
    return label


def render(args: argparse.Namespace, simulation: Simulation, times: np.ndarray,
           series: dict[str, np.ndarray]) -> str:
    if args.format == "json":
        return _render_json(args, simulation, times, series)
    if args.format == "csv":
        return _render_csv(simulation, times, series)
    return _render_table(args, simulation)


def _finite(value: Any) -> float | None:
    import math

    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _closed_form(run: ConfigRun) -> dict[str, float | None]:
    metrics = run.closed_form
    return {
        "makespan_s": metrics.get("makespan_s"),
        "output_tokens_per_s": metrics.get("output_tokens_per_s"),
        "ttft_mean_s": (metrics.get("ttft_s") or {}).get("mean"),
        "tpot_mean_s": (metrics.get("tpot_s") or {}).get("mean"),
        "preemptions": metrics.get("preemptions"),
        "peak_kv_usage": metrics.get("peak_kv_usage"),
    }


def _render_json(args: argparse.Namespace, simulation: Simulation, times: np.ndarray,
                 series: dict[str, np.ndarray]) -> str:
    from kvplan.commands._tables import plan_summary, render_json
    from kvplan.costmodel.simulate import SERIES
    from kvplan.optimizer.search import SCHEMA_VERSION

    runs = []
    for row, run in enumerate(simulation.runs):
        entry: dict[str, Any] = {
            "config": run.deployment.to_dict(),
            "feasible": run.feasible,
            "infeasible_reason": run.infeasible_reason,
        }
        if run.feasible:
            entry["finished"] = run.finished
            entry["summary"] = run.summary
            entry["closed_form"] = _closed_form(run)
            entry["series"] = {name: [_finite(value) for value in series[name][row]] for name, _ in SERIES}
        runs.append(entry)
    document = {
        "schema_version": SCHEMA_VERSION,
        "command": "simulate",
        "plan": {"source": args.plan, **plan_summary(simulation.plan)},
        "rounds_per_step": simulation.delta_rounds,
        "series_units": {name: unit for name, unit in SERIES},
        "time_s": [float(value) for value in times],
        "runs": runs,
    }
    return render_json(document)


def _render_csv(simulation: Simulation, times: np.ndarray, series: dict[str, np.ndarray]) -> str:
    from kvplan.commands._tables import render_csv
    from kvplan.costmodel.simulate import SERIES

    config_fields = ["dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization"]
    names = [name for name, _ in SERIES]
    rows = []
    for row, run in enumerate(simulation.runs):
        if not run.feasible:
            continue
        config = run.deployment.to_dict()
        for column, time_s in enumerate(times):
            values = {name: _csv_value(series[name][row][column]) for name in names}
            rows.append({**{field: config[field] for field in config_fields}, "time_s": f"{time_s:.6g}", **values})
    return render_csv([*config_fields, "time_s", *names], rows)


def _csv_value(value: float) -> str:
    value = _finite(value)
    return "" if value is None else f"{value:.6g}"


def _render_table(args: argparse.Namespace, simulation: Simulation) -> str:
    from kvplan.commands._tables import render_rows
    from kvplan.formatting import format_count, format_seconds

    plan = simulation.plan
    workload = plan.workload
    batch = simulation.arrival_mode == "batch"
    lines = [
        f"Simulation of {args.plan} ({plan.model.name} on {plan.node.name})",
        f"Workload: {_describe_workload(workload)}; one step = {simulation.delta_rounds:g} scheduler rounds",
        "",
    ]

    headers = ["dp", "tp", "pp", "seqs", "batch"]
    headers += ["makespan", "closed form"] if batch else ["simulated"]
    headers += ["tok/s", "closed form", "TTFT mean", "TPOT mean", "preemptions", "peak KV"]
    rows = []
    for run in simulation.runs:
        d = run.deployment
        row = [str(d.dp), str(d.tp), str(d.pp), str(d.max_num_seqs), str(d.max_num_batched_tokens)]
        if not run.feasible:
            rows.append(row + [f"infeasible: {run.infeasible_reason}"] + [""] * (len(headers) - len(row) - 1))
            continue
        summary = run.summary
        closed = _closed_form(run)
        if batch:
            row += [format_seconds(summary["makespan_s"]), format_seconds(closed["makespan_s"])]
        else:
            row.append(format_seconds(summary["simulated_s"]))
        row += [
            format_count(summary["output_tokens_per_s"]),
            format_count(closed["output_tokens_per_s"]),
            format_seconds(summary["ttft_mean_s"]),
            format_seconds(summary["tpot_mean_s"]),
            format_count(summary["preemptions"]),
            _percent(summary["peak_kv_usage"]),
        ]
        rows.append(row)
    lines.append(render_rows(headers, rows, "table"))

    times, series = simulation.series(TABLE_TIMES)
    for row, run in enumerate(simulation.runs):
        if not run.feasible:
            continue
        lines += ["", f"Over time, {config_label(run)} (averages over each interval up to the time shown):"]
        time_rows = []
        for column, time_s in enumerate(times):
            time_rows.append([
                format_seconds(float(time_s)),
                format_count(_finite(series["output_tokens_per_s"][row][column])),
                _percent(_finite(series["kv_cache_usage"][row][column])),
                format_count(_finite(series["running_requests"][row][column])),
                format_count(_finite(series["waiting_requests"][row][column])),
                format_count(_finite(series["preemptions"][row][column])),
                _percent(_finite(series["hbm_share"][row][column])),
            ])
        lines.append(render_rows(["time", "tok/s", "KV use", "running", "waiting", "preempted", "HBM share"],
                                 time_rows, "table"))
    lines += [
        "",
        "Columns: seqs = max_num_seqs, batch = max_num_batched_tokens, closed form = the same metric "
        "from the closed-form model that kvplan optimize ranks with, HBM share = share of the step "
        "time spent reading weights and KV cache from HBM.",
    ]
    return "\n".join(lines) + "\n"


def _describe_workload(workload) -> str:
    if workload.arrival_mode == "batch":
        return f"{workload.name}, {workload.requests:,} requests at t = 0"
    if workload.arrival_mode == "rate":
        return f"{workload.name}, Poisson arrivals at {workload.arrival_rate_per_s:g} requests/s"
    return f"{workload.name}, {workload.concurrency:,} concurrent clients"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.0f} %"


# Plot


def write_plot(path: str, simulation: Simulation, times: np.ndarray, series: dict[str, np.ndarray]) -> None:
    """Draw one panel per series, every simulated deployment overlaid, into a PNG at ``path``."""
    import io

    from kvplan.atomic import write_bytes_atomic
    from kvplan.spec.errors import KvplanError

    figure = draw_figure(simulation, times, series)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    try:
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as error:
        raise KvplanError(f"cannot write {path}: {error.strerror or error}; check that the folder exists "
                          "and is writable") from None
    print(f"kvplan: wrote {path}", file=sys.stderr)


# Panels of the figure: series name, y-axis label, scale factor.
PANELS = (
    ("output_tokens_per_s", "output tokens/s", 1.0),
    ("kv_cache_usage", "KV cache usage (%)", 100.0),
    ("running_requests", "running requests", 1.0),
    ("waiting_requests", "waiting requests", 1.0),
    ("preemptions", "preemptions per interval", 1.0),
    ("cumulative_preemptions", "preemptions since start", 1.0),
    ("hbm_share", "HBM time / step time (%)", 100.0),
)


def draw_figure(simulation: Simulation, times: np.ndarray, series: dict[str, np.ndarray]):
    """Return a matplotlib Figure (Agg canvas) with one panel per series."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE_IN, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(4, 2, sharex=True).reshape(-1)
    plan = simulation.plan
    figure.suptitle(f"kvplan simulate: {plan.name} ({plan.model.name}, {_describe_workload(plan.workload)})")
    simulated = [(row, run) for row, run in enumerate(simulation.runs) if run.feasible]
    for axis, (name, label, scale) in zip(axes, PANELS):
        for row, run in simulated:
            axis.plot(times, series[name][row] * scale, label=_legend_label(run), linewidth=1.2)
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        if name in ("kv_cache_usage", "hbm_share"):
            axis.set_ylim(0, 105)
    # The panel above the legend is the last one of its column, so it shows the time axis.
    for axis in (axes[len(PANELS) - 1], axes[len(PANELS) - 2]):
        axis.set_xlabel("time (s)")
        axis.tick_params(labelbottom=True)
    legend_axis = axes[len(PANELS)]
    legend_axis.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    legend_axis.legend(handles, labels, loc="center", title="deployment")
    return figure


def _legend_label(run: ConfigRun) -> str:
    d = run.deployment
    return (f"dp={d.dp} tp={d.tp} pp={d.pp} max_num_seqs={d.max_num_seqs} "
            f"max_num_batched_tokens={d.max_num_batched_tokens}")


__all__: Sequence[str] = ("add_parser", "run", "render", "write_plot", "draw_figure")
