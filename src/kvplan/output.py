"""Rendering of results as tables, JSON, CSV and Markdown; no computation."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any, Sequence

from tabulate import tabulate

from kvplan.formatting import format_count, format_seconds
from kvplan.spec.errors import SpecIssue

if TYPE_CHECKING:
    # The search module imports JAX (about a second); `kvplan validate` renders without it.
    from kvplan.optimizer.search import RankedDeployment, SearchResult

OBJECTIVE_TITLES = {
    "makespan_s": "minimize makespan",
    "output_tokens_per_s": "maximize output tokens/s",
    "output_tokens_per_s_per_gpu": "maximize output tokens/s per GPU",
    "cost_per_million_tokens": "minimize cost per million output tokens",
}

CONFIG_COLUMNS = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization")
# Settings that a deployment leaves unset unless the search varies them or a config sets
# them (kvplan.spec.types.OPTIONAL_DEPLOYMENT_FIELDS), with their table headers. Tables
# and CSV show one only when some row sets it.
OPTIONAL_CONFIG_COLUMNS = {
    "node": "node",
    "kv_cache_dtype": "kv dtype",
    "watermark": "watermark",
    "require_full_prompt_admission": "full prompt",
    "enable_expert_parallel": "EP",
}
SCALAR_METRICS = (
    "gpus",
    "makespan_s",
    "output_tokens_per_s",
    "output_tokens_per_s_per_gpu",
    "kv_capacity_tokens",
    "kv_bytes_per_token",
    "weight_bytes_per_gpu",
    "peak_kv_usage",
    "preemptions",
    "preemptions_per_request",
    "running_requests_per_replica",
    "step_time_s",
    "keeps_up",
    "max_arrival_rate_per_s",
    "cost_per_million_tokens",
    "bottleneck",
)
LATENCY_METRICS = ("ttft_s", "tpot_s", "e2e_s")
STATISTICS = ("mean", "p50", "p90", "p99")


def _format_percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _shortfall(value: float | None, best: float | None, direction: str) -> str:
    """How far ``value`` falls behind ``best`` on the objective, as a positive percentage.

    For a minimized objective that is value / best - 1 (a 10 % longer makespan); for a
    maximized one 1 - value / best (10 % fewer tokens per second). A row ahead of the
    reference, which can happen when the reference is the best SLA-meeting row, shows a
    negative number.
    """
    if value is None or best is None or best == 0:
        return "-"
    if direction == "minimize":
        shortfall = value / best - 1.0
    else:
        shortfall = 1.0 - value / best
    if abs(shortfall) < 0.0005:
        return "="
    return f"{shortfall * 100:.1f}%"


# Longest infeasibility reason shown in a table cell; JSON and CSV carry the whole text.
MAX_REASON_CHARACTERS = 70


def _shorten(text: str) -> str:
    if len(text) <= MAX_REASON_CHARACTERS:
        return text
    return text[: MAX_REASON_CHARACTERS - 3].rstrip() + "..."


def _objective_direction(objective: str) -> str:
    return "maximize" if objective.startswith("output_tokens") else "minimize"


def optional_settings_in(configs) -> list[str]:
    """Return the optional settings (OPTIONAL_CONFIG_COLUMNS keys) that any of ``configs`` sets."""
    return [key for key in OPTIONAL_CONFIG_COLUMNS if any(getattr(config, key) is not None for config in configs)]


def format_setting(value: Any) -> str:
    """Format one deployment setting for ``key=value`` text: true/false, 0.9, fp8."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe_config(config) -> str:
    """Return a deployment as ``dp=1 tp=8 ...``, with each optional setting it sets."""
    text = (f"dp={config.dp} tp={config.tp} pp={config.pp} max_num_seqs={config.max_num_seqs} "
            f"max_num_batched_tokens={config.max_num_batched_tokens} "
            f"gpu_memory_utilization={config.gpu_memory_utilization:g}")
    for key in OPTIONAL_CONFIG_COLUMNS:
        value = getattr(config, key)
        if value is not None:
            text += f" {key}={format_setting(value)}"
    return text


def describe_plan(plan) -> list[str]:
    """Return the header lines that name a plan's model, node, workload and SLA."""
    workload = plan.workload
    if workload.arrival_mode == "batch":
        load = f"{workload.requests:,} request{'' if workload.requests == 1 else 's'} at once"
    elif workload.arrival_mode == "rate":
        load = f"{workload.arrival_rate_per_s:g} requests/s (Poisson)"
    else:
        load = f"{workload.concurrency:,} concurrent clients"
    hardware = f"{plan.num_nodes} x {plan.node.name}, GPU budget {plan.search.gpu_budget}"
    if plan.search.node:
        budgets = ", ".join(f"{node.name} (GPU budget {budget})"
                            for node, budget in zip(plan.search.node, plan.search.node_gpu_budgets))
        hardware = f"{plan.num_nodes} node(s) of each type searched: {budgets}"
    lines = [
        f"Plan {plan.name}: {plan.model.name} ({plan.model.weight_dtype}) on {hardware}",
        f"Workload {workload.name}: {load}; prompt {workload.prompt_tokens.description}; "
        f"output {workload.output_tokens.description}",
    ]
    if plan.sla:
        bounds = ", ".join(f"{b.metric} {b.statistic} <= {format_seconds(b.max_s)}" for b in plan.sla)
        lines.append(f"SLA: {bounds}")
    return lines


def _describe_plan(result: SearchResult) -> list[str]:
    lines = describe_plan(result.plan)
    if result.method == "evaluate":
        lines.append(f"Objective: {OBJECTIVE_TITLES[result.objective]}; {result.evaluated} deployment(s) given")
    else:
        method = "exhaustive search" if result.method == "exhaustive" else "Optuna TPE search + local polish"
        lines.append(
            f"Objective: {OBJECTIVE_TITLES[result.objective]}; {method}: {result.evaluated} of "
            f"{result.space_size} deployments evaluated"
        )
    return lines


def _table_rows(result: SearchResult, results: Sequence[RankedDeployment]) -> tuple[list[str], list[list[Any]]]:
    mode = result.plan.workload.arrival_mode
    direction = _objective_direction(result.objective)
    # Rows compare against the best SLA-meeting deployment, or the first feasible one
    # when none meets the SLA.
    best = result.best or next((r for r in results if r.evaluation.feasible), None)
    best_value = best.objective_value if best else None
    show_utilization = len({r.evaluation.config.gpu_memory_utilization for r in results}) > 1
    optional = optional_settings_in([r.evaluation.config for r in results])

    headers = ["#", "dp", "tp", "pp", "seqs", "batch"]
    if show_utilization:
        headers.append("mem")
    headers += [OPTIONAL_CONFIG_COLUMNS[key] for key in optional]
    if mode == "batch":
        headers.append("makespan")
    headers += ["tok/s", "tok/s/GPU", "TTFT p99", "TPOT p50", "KV/replica", "KV peak",
                "preempt", "bottleneck"]
    show_cost = any(node.price_per_gpu_hour is not None for node in (result.plan.search.node or (result.plan.node,)))
    if show_cost:
        headers.append("$/M tok")
    headers += ["behind", "SLA"]
    if mode == "rate":
        headers.insert(headers.index("tok/s"), "max req/s")

    rows = []
    for ranked in results:
        evaluation = ranked.evaluation
        config = evaluation.config
        metrics = evaluation.metrics
        row: list[Any] = [ranked.rank, config.dp, config.tp, config.pp, config.max_num_seqs,
                          config.max_num_batched_tokens]
        if show_utilization:
            row.append(f"{config.gpu_memory_utilization:g}")
        row += ["-" if getattr(config, key) is None else format_setting(getattr(config, key)) for key in optional]
        if not evaluation.feasible:
            filler = len(headers) - len(row) - 1
            row += ["-"] * filler + [f"infeasible: {_shorten(evaluation.infeasible_reason or '')}"]
            rows.append(row)
            continue
        if mode == "batch":
            row.append(format_seconds(metrics["makespan_s"]))
        if mode == "rate":
            row.append(f"{metrics['max_arrival_rate_per_s']:.3g}")
        row += [
            format_count(metrics["output_tokens_per_s"]),
            format_count(metrics["output_tokens_per_s_per_gpu"]),
            format_seconds(metrics["ttft_s"]["p99"]),
            format_seconds(metrics["tpot_s"]["p50"]),
            format_count(metrics["kv_capacity_tokens"]),
            _format_percent(metrics["peak_kv_usage"]),
            format_count(metrics["preemptions"]),
            ranked.bottleneck or metrics["bottleneck"],
        ]
        if show_cost:
            cost = metrics.get("cost_per_million_tokens")
            row.append("-" if cost is None else f"{cost:.3g}")
        if not result.plan.sla and metrics.get("keeps_up") is not False:
            verdict = "-"
        else:
            verdict = "met" if ranked.sla_met else "; ".join(ranked.violations)
        row += [
            _shortfall(ranked.objective_value, best_value, direction) if ranked is not best else "best",
            verdict,
        ]
        rows.append(row)
    return headers, rows


def _footer(result: SearchResult) -> list[str]:
    lines = [
        "Columns: seqs = max_num_seqs, batch = max_num_batched_tokens, KV/replica = KV cache "
        "capacity in tokens, bottleneck = what binds the deployment (kvplan explain shows why), "
        "behind = how far the objective falls short of the best row."
    ]
    if result.infeasible_reasons:
        parts = ", ".join(f"{count} x {reason}" for reason, count in result.infeasible_reasons.items())
        lines.append(f"Infeasible among the {result.evaluated} evaluated: {parts}")
    if result.sla_violations:
        parts = ", ".join(f"{count} x {what}" for what, count in result.sla_violations.items())
        lines.append(f"SLA misses among the {result.evaluated} evaluated: {parts}")
    best = result.best
    if best is None:
        lines.append("No feasible deployment meets the SLA.")
    else:
        config = best.evaluation.config
        metrics = best.evaluation.metrics
        summary = f"Best: {describe_config(config)}"
        if metrics.get("makespan_s") is not None:
            summary += f"; makespan {format_seconds(metrics['makespan_s'])}"
        summary += f", {format_count(metrics['output_tokens_per_s'])} output tokens/s"
        if metrics.get("cost_per_million_tokens") is not None:
            summary += f", ${metrics['cost_per_million_tokens']:.3g} per million output tokens"
        summary += f", bottleneck: {best.bottleneck or metrics['bottleneck'].replace('_', ' ')}"
        lines.append(summary)
    return lines


def render_result(result: SearchResult, output_format: str, *, top: int | None) -> str:
    results = result.results if top is None else result.results[:top]
    if output_format == "json":
        return json.dumps(result.to_dict(top=top), indent=2) + "\n"
    if output_format == "csv":
        return _render_csv(results)
    headers, rows = _table_rows(result, results)
    table_format = "github" if output_format == "markdown" else "simple"
    body = tabulate(rows, headers=headers, tablefmt=table_format, disable_numparse=True)
    lines = _describe_plan(result)
    if output_format == "markdown":
        # Markdown joins adjacent lines into one paragraph, so every line stands alone.
        return "\n\n".join([*lines, body, *_footer(result)]) + "\n"
    return "\n".join([*lines, "", body, "", *_footer(result)]) + "\n"


def _csv_row(ranked: RankedDeployment, optional: Sequence[str] = ()) -> dict[str, Any]:
    evaluation = ranked.evaluation
    row: dict[str, Any] = {"rank": ranked.rank}
    row.update({key: getattr(evaluation.config, key) for key in (*CONFIG_COLUMNS, *optional)})
    row.update({
        "feasible": evaluation.feasible,
        "infeasible_reason": evaluation.infeasible_reason or "",
        "sla_met": ranked.sla_met,
        "violations": "; ".join(ranked.violations),
        "objective_value": ranked.objective_value,
    })
    metrics = evaluation.metrics
    for key in SCALAR_METRICS:
        row[key] = metrics.get(key)
    for key in LATENCY_METRICS:
        latency = metrics.get(key) or {}
        for statistic in STATISTICS:
            row[f"{key}_{statistic}"] = latency.get(statistic)
    # Last, so that the columns before it keep their positions.
    row["bottleneck_label"] = ranked.bottleneck
    return {key: ("" if value is None else value) for key, value in row.items()}


def _render_csv(results: Sequence[RankedDeployment]) -> str:
    buffer = io.StringIO()
    optional = optional_settings_in([ranked.evaluation.config for ranked in results])
    fieldnames = ["rank", *CONFIG_COLUMNS, *optional, "feasible", "infeasible_reason", "sla_met", "violations",
                  "objective_value", *SCALAR_METRICS,
                  *(f"{key}_{statistic}" for key in LATENCY_METRICS for statistic in STATISTICS),
                  "bottleneck_label"]
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for ranked in results:
        writer.writerow(_csv_row(ranked, optional))
    return buffer.getvalue()


def render_validation(paths: Sequence[str], issues: Sequence[SpecIssue], output_format: str,
                      files: Sequence[str] = ()) -> str:
    if output_format == "json":
        from kvplan.optimizer.search import SCHEMA_VERSION
        document = {
            "schema_version": SCHEMA_VERSION,
            "valid": not issues,
            "paths": list(paths),
            "files": list(files),
            "errors": [
                {"file": i.file, "line": i.line, "column": i.column, "path": i.path, "message": i.message}
                for i in issues
            ],
        }
        return json.dumps(document, indent=2) + "\n"
    if not issues:
        return f"ok: {len(files)} spec file(s) valid in {len(paths)} path(s)\n"
    return "".join(f"{issue}\n" for issue in issues)
