"""Cells, CSV fields and text blocks shared by the ``sweep`` and ``size`` commands.

Both commands print one row per plan variant, each row summarizing one deployment, so
they share the columns that describe it.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

from tabulate import tabulate

from kvplan.formatting import format_count, format_seconds
from kvplan.optimizer.search import DEFAULT_TRIALS, RankedDeployment, SearchResult
from kvplan.output import OBJECTIVE_TITLES, format_setting
from kvplan.spec.errors import SpecIssue
from kvplan.spec.types import Plan

# Flat fields of a deployment in CSV rows, in column order.
DEPLOYMENT_FIELDS = (
    "dp",
    "tp",
    "pp",
    "max_num_seqs",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "gpus",
    "objective_value",
    "makespan_s",
    "output_tokens_per_s",
    "output_tokens_per_s_per_gpu",
    "max_arrival_rate_per_s",
    "ttft_p99_s",
    "tpot_p99_s",
    "bottleneck",
    "sla_met",
    "violations",
    "cost_per_million_tokens",
)



def describe_search(trials: int | None, seed: int, exhaustive: bool) -> str:
    """Describe how each variant's deployments are searched."""
    if exhaustive:
        return "exhaustive search"
    return f"Optuna TPE search + local polish ({trials or DEFAULT_TRIALS} trials, seed {seed})"


def describe_sla(plan: Plan) -> str:
    bounds = [f"{b.metric} {b.statistic} <= {format_seconds(b.max_s)}" for b in plan.sla]
    if plan.workload.arrival_mode == "rate":
        bounds.append("keep up with the arrival rate")
    return ", ".join(bounds) if bounds else "none"


def closest_deployment(result: SearchResult) -> RankedDeployment | None:
    """Return the deployment a row shows: the best one, or the closest to the SLA when none meets it.

    Under an arrival rate, the closest is the feasible deployment that keeps up with the
    highest rate, because the objective ranks by output per GPU, not by headroom. In
    the other modes it is the best-ranked feasible deployment. None when none is feasible.
    """
    if result.best is not None:
        return result.best
    feasible = [ranked for ranked in result.results if ranked.evaluation.feasible]
    if not feasible:
        return None
    if result.plan.workload.arrival_mode != "rate":
        return feasible[0]
    return max(feasible, key=lambda ranked: ranked.evaluation.metrics.get("max_arrival_rate_per_s") or 0.0)


def infeasible_summary(result: SearchResult) -> str:
    parts = ", ".join(f"{count} x {reason}" for reason, count in result.infeasible_reasons.items())
    return f"no feasible deployment among {result.evaluated} evaluated: {parts}"


class DeploymentColumns:
    """The columns that describe one deployment, chosen from the plans of all rows.

    A column that applies to none of the rows (makespan without an offline batch, the
    arrival rate limit without arrival_rate, cost without a price) is left out.
    """

    def __init__(self, plans: Sequence[Plan], *, utilization_varies: bool, optional_settings: Sequence[str] = ()) -> None:
        modes = {plan.workload.arrival_mode for plan in plans}
        self.show_utilization = utilization_varies
        # Keys of kvplan.output.OPTIONAL_CONFIG_COLUMNS that some row's deployment sets.
        self.optional_settings = tuple(optional_settings)
        self.show_makespan = "batch" in modes
        self.show_rate = "rate" in modes
        self.show_cost = any(node.price_per_gpu_hour is not None
                             for plan in plans for node in (plan.search.node or (plan.node,)))

    def notes(self) -> str:
        """Return the line that explains the abbreviated column names."""
        notes = ["seqs = max_num_seqs", "batch = max_num_batched_tokens"]
        if self.show_utilization:
            notes.append("mem = gpu_memory_utilization")
        if self.show_rate:
            notes.append("max req/s = highest arrival rate the deployment keeps up with")
        notes.append("bound by = what limits the deployment")
        if self.show_cost:
            notes.append("$/M tok = USD per million output tokens for the GPUs the deployment uses")
        return f"Columns: {', '.join(notes)}."

    def headers(self) -> list[str]:
        from kvplan.output import OPTIONAL_CONFIG_COLUMNS

        headers = ["dp", "tp", "pp", "seqs", "batch"]
        if self.show_utilization:
            headers.append("mem")
        headers += [OPTIONAL_CONFIG_COLUMNS[key] for key in self.optional_settings]
        if self.show_makespan:
            headers.append("makespan")
        if self.show_rate:
            headers.append("max req/s")
        headers += ["tok/s", "tok/s/GPU", "TTFT p99", "TPOT p99", "bound by"]
        if self.show_cost:
            headers.append("$/M tok")
        return headers

    def cells(self, ranked: RankedDeployment | None) -> list[str]:
        if ranked is None or not ranked.evaluation.feasible:
            return ["-"] * len(self.headers())
        config = ranked.evaluation.config
        metrics = ranked.evaluation.metrics
        cells = [str(config.dp), str(config.tp), str(config.pp), str(config.max_num_seqs),
                 str(config.max_num_batched_tokens)]
        if self.show_utilization:
            cells.append(f"{config.gpu_memory_utilization:g}")
        for key in self.optional_settings:
            value = getattr(config, key)
            cells.append("-" if value is None else format_setting(value))
        if self.show_makespan:
            cells.append(format_seconds(metrics.get("makespan_s")))
        if self.show_rate:
            cells.append(format_rate(metrics.get("max_arrival_rate_per_s")))
        cells += [
            format_count(metrics.get("output_tokens_per_s")),
            format_count(metrics.get("output_tokens_per_s_per_gpu")),
            format_seconds(_latency(metrics, "ttft_s", "p99")),
            format_seconds(_latency(metrics, "tpot_s", "p99")),
            str(metrics.get("bottleneck", "-")),
        ]
        if self.show_cost:
            cells.append(format_dollars(metrics.get("cost_per_million_tokens")))
        return cells


def deployment_fields(ranked: RankedDeployment | None, optional_settings: Sequence[str] = ()) -> dict[str, Any]:
    """Return the CSV fields of a deployment; every field is empty when there is none.

    ``optional_settings`` are the optional settings (see ``DeploymentColumns``) to add
    after ``gpu_memory_utilization``.
    """
    if ranked is None or not ranked.evaluation.feasible:
        return {field: "" for field in (*DEPLOYMENT_FIELDS, *optional_settings)}
    config = ranked.evaluation.config
    metrics = ranked.evaluation.metrics
    fields: dict[str, Any] = {key: getattr(config, key) for key in (*DEPLOYMENT_FIELDS[:6], *optional_settings)}
    fields.update({
        "gpus": config.gpus,
        "objective_value": ranked.objective_value,
        "makespan_s": metrics.get("makespan_s"),
        "output_tokens_per_s": metrics.get("output_tokens_per_s"),
        "output_tokens_per_s_per_gpu": metrics.get("output_tokens_per_s_per_gpu"),
        "max_arrival_rate_per_s": metrics.get("max_arrival_rate_per_s"),
        "ttft_p99_s": _latency(metrics, "ttft_s", "p99"),
        "tpot_p99_s": _latency(metrics, "tpot_s", "p99"),
        "bottleneck": metrics.get("bottleneck"),
        "sla_met": ranked.sla_met,
        "violations": "; ".join(ranked.violations),
        "cost_per_million_tokens": metrics.get("cost_per_million_tokens"),
    })
    return {key: ("" if value is None else value) for key, value in fields.items()}


def describe_deployment(ranked: RankedDeployment) -> str:
    from kvplan.output import describe_config

    return describe_config(ranked.evaluation.config)


def plan_summary(plan: Plan) -> dict[str, Any]:
    """Return the facts of one plan variant that JSON output reports next to its result."""
    workload = plan.workload
    return {
        "name": plan.name,
        "model": plan.model.name,
        "node": plan.node.name,
        "nodes": plan.num_nodes,
        "gpus_per_node": plan.node.gpus_per_node,
        "gpu_budget": plan.search.gpu_budget,
        "price_per_gpu_hour": plan.node.price_per_gpu_hour,
        "workload": workload.name,
        "arrival_mode": workload.arrival_mode,
        "requests": workload.requests,
        "arrival_rate_per_s": workload.arrival_rate_per_s,
        "concurrency": workload.concurrency,
        "objective": plan.objective,
    }


def issue_dicts(issues: Sequence[SpecIssue]) -> list[dict[str, Any]]:
    return [
        {"file": i.file, "line": i.line, "column": i.column, "path": i.path, "message": i.message}
        for i in issues
    ]


def render_rows(headers: Sequence[str], rows: Sequence[Sequence[str]], output_format: str) -> str:
    """Render a table as plain text (``table``) or GitHub Markdown (``markdown``)."""
    table_format = "github" if output_format == "markdown" else "simple"
    return tabulate(rows, headers=list(headers), tablefmt=table_format, disable_numparse=True)


def render_csv(fieldnames: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def render_json(document: dict[str, Any]) -> str:
    # str() covers the YAML values JSON has no type for, such as a date given to --set.
    return json.dumps(document, indent=2, default=str) + "\n"


def format_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_dollars(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _latency(metrics: dict[str, Any], key: str, statistic: str) -> float | None:
    return (metrics.get(key) or {}).get(statistic)
