"""``kvplan explain``: where a deployment's time goes, what binds it and what would change that.

Each deployment comes from ``--config`` or, without it, from the top of the ranking that
``kvplan optimize`` prints. For each one the command reports the cost model's split of
its time and the constraint that binds it (see
:func:`kvplan.costmodel.attribution.bottleneck`). It also reports the neighbouring
deployments that address that constraint, each evaluated with the same cost model.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Sequence

from kvplan.cli import EXIT_FAILURE, EXIT_OK, UsageError, parse_config

if TYPE_CHECKING:
    from kvplan.costmodel.attribution import Alternative
    from kvplan.optimizer.search import RankedDeployment
    from kvplan.spec.types import Plan

# Deployments explained when none is given with --config.
DEFAULT_TOP = 3

# Shares below this are left out of the text lines; JSON carries every share.
MIN_SHARE_SHOWN = 0.005
# Relative KV capacity changes below this are left out of the text: a different
# max_num_seqs moves the capacity by a percent or so through vLLM's sampler reserve.
MIN_CAPACITY_CHANGE_SHOWN = 0.02


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="explain what limits deployments and what would change the ranking",
        description="For each deployment given with --config, or else for the best deployments of "
                    "the ranking kvplan optimize prints, show where its time goes, what binds it (KV "
                    "capacity, HBM bandwidth, compute, communication, engine overhead, max_num_seqs, "
                    "the token budget or a missed SLA bound) and how neighbouring deployments that "
                    "address it change the objective, each evaluated with the cost model. Exit code 0 "
                    "when at least one deployment is feasible, 1 otherwise.",
    )
    parser.add_argument("plan", metavar="PLAN", help="path of a Plan spec")
    parser.add_argument("--config", action="append", metavar="KEY=VALUE,...",
                        help="a deployment, for example dp=4,tp=2,pp=1,max_num_seqs=2048; repeat for "
                             "several (default: the best deployments found by the search)")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP,
                        help=f"deployments of the ranking to explain without --config (default: {DEFAULT_TOP})")
    parser.add_argument("--alternatives", type=int, default=None,
                        help="neighbouring deployments reported per deployment (default: 3)")
    parser.add_argument("--trials", type=int, default=None,
                        help="Optuna trials of the search without --config (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    parser.add_argument("--all", action="store_true", dest="all_deployments",
                        help="without --config, take the top of the ranking of every evaluated deployment, "
                             "not only the best one of each (dp, tp, pp) layout, as kvplan optimize --all")
    parser.add_argument("--exhaustive", action="store_true",
                        help="without --config, evaluate every point of the search space instead of sampling")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default: text)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kvplan.costmodel.attribution import DEFAULT_ALTERNATIVES
    from kvplan.spec import load_plan

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, but got {args.top}")
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, but got {args.trials}")
    alternatives = DEFAULT_ALTERNATIVES if args.alternatives is None else args.alternatives
    if alternatives < 0:
        raise UsageError(f"--alternatives must be at least 0, but got {alternatives}")
    configs = [parse_config(text) for text in args.config or ()]

    plan = load_plan(args.plan)
    ranked, source = _deployments(plan, configs, args)
    document = explain(plan, ranked, source, alternatives)
    if args.format == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(plan, document))
    return EXIT_OK if any(item["feasible"] for item in document["explanations"]) else EXIT_FAILURE


def _deployments(plan: Plan, configs: list[dict[str, Any]], args: argparse.Namespace):
    """Return the ranked deployments to explain and where they come from."""
    from kvplan.optimizer.search import evaluate, optimize

    if configs:
        return list(evaluate(plan, configs).results), "config"
    result = optimize(plan, trials=args.trials, seed=args.seed, exhaustive=args.exhaustive)
    if not args.all_deployments:
        result = result.best_per_layout()
    feasible = [ranked for ranked in result.results if ranked.evaluation.feasible]
    return (feasible or list(result.results))[:args.top], "optimize"


def explain(plan: Plan, ranked: Sequence[RankedDeployment], source: str, alternatives: int) -> dict[str, Any]:
    """Build the explanation document of ``ranked`` deployments of ``plan``."""
    from kvplan.optimizer.search import OBJECTIVES, SCHEMA_VERSION

    from kvplan.optimizer.variants import deployment_plan, variant_of

    direction, metric = OBJECTIVES[plan.objective]
    # Deployments that set a node type, KV cache dtype, watermark or admission rule are
    # explained under the plan with those settings, one group per combination.
    groups: dict[Any, list[int]] = {}
    for index, item in enumerate(ranked):
        groups.setdefault(variant_of(item.evaluation.config), []).append(index)
    explanations: list[dict[str, Any]] = [{} for _ in ranked]
    for indices in groups.values():
        items = [ranked[index] for index in indices]
        group_plan = deployment_plan(plan, items[0].evaluation.config)
        for index, explanation in zip(indices, _explain_group(group_plan, items, alternatives, direction, metric)):
            explanations[index] = explanation
    return {
        "schema_version": SCHEMA_VERSION,
        "plan": {"name": plan.name, "source": plan.source},
        "objective": plan.objective,
        "objective_direction": direction,
        "deployments_from": source,
        "explanations": explanations,
    }


def _explain_group(plan: Plan, ranked: Sequence[RankedDeployment], alternatives: int, direction: str,
                   metric: str) -> list[dict[str, Any]]:
    """Explain deployments that share one plan variant, in the order given."""
    from kvplan.costmodel.attribution import bottleneck, propose_changes
    from kvplan.costmodel.evaluate import CostModel

    feasible = [item.evaluation for item in ranked if item.evaluation.feasible]
    # Only feasible deployments get neighbours; an infeasible one may lie beyond the
    # degrees the model can build tables for.
    configs = [evaluation.config for evaluation in feasible]
    model = CostModel(plan, tp_values={c.tp for c in configs}, pp_values={c.pp for c in configs})
    proposals = iter(propose_changes(model, feasible, metric, direction, alternatives) if alternatives else
                     [[] for _ in feasible])

    explanations = []
    for item in ranked:
        evaluation = item.evaluation
        found = bottleneck(plan, evaluation)
        metrics = evaluation.metrics
        explanations.append({
            "rank": item.rank,
            "config": evaluation.config.to_dict(),
            "feasible": evaluation.feasible,
            "infeasible_reason": evaluation.infeasible_reason,
            "sla_met": item.sla_met,
            "violations": list(item.violations),
            "objective_value": item.objective_value,
            "bottleneck": found.to_dict() if found else None,
            "engine_time_shares": metrics.get("engine_time_shares"),
            "time_shares": metrics.get("time_shares"),
            "alternatives": [a.to_dict() for a in next(proposals)] if evaluation.feasible else [],
            "metrics": metrics,
        })
    return explanations


def render_text(plan: Plan, document: dict[str, Any]) -> str:
    from kvplan.output import OBJECTIVE_TITLES, describe_plan

    # The first line of the plan's description names its model, node types and GPU budgets.
    lines = [describe_plan(plan)[0],
             f"Objective: {OBJECTIVE_TITLES[plan.objective]}; {_describe_sla(plan)}"]
    for item in document["explanations"]:
        lines.append("")
        lines += _explanation_lines(plan, item)
    lines += ["", "Shares come from the cost model's step times; every alternative was evaluated with "
              "the same model, not estimated. See docs/explain.md."]
    return "\n".join(lines) + "\n"


def _describe_sla(plan: Plan) -> str:
    from kvplan.formatting import format_seconds

    bounds = [f"{b.metric} {b.statistic} <= {format_seconds(b.max_s)}" for b in plan.sla]
    if plan.workload.arrival_mode == "rate":
        bounds.append("keep up with the arrival rate")
    return "SLA: " + (", ".join(bounds) if bounds else "none")


def _describe_config(config: dict[str, Any]) -> str:
    from kvplan.output import OPTIONAL_CONFIG_COLUMNS, format_setting

    gpus = config["dp"] * config["tp"] * config["pp"]
    optional = "".join(f" {key}={format_setting(config[key])}" for key in OPTIONAL_CONFIG_COLUMNS if key in config)
    return (f"dp={config['dp']} tp={config['tp']} pp={config['pp']} max_num_seqs={config['max_num_seqs']} "
            f"max_num_batched_tokens={config['max_num_batched_tokens']} "
            f"gpu_memory_utilization={config['gpu_memory_utilization']:g}{optional} ({_gpus(gpus)})")


def _gpus(count: int) -> str:
    return "1 GPU" if count == 1 else f"{count} GPUs"


def _explanation_lines(plan: Plan, item: dict[str, Any]) -> list[str]:
    lines = [f"#{item['rank']} {_describe_config(item['config'])}"]
    if not item["feasible"]:
        return lines + [f"  Infeasible: {item['infeasible_reason']}"]
    metrics = item["metrics"]
    if item["sla_met"]:
        verdict = "SLA met" if _has_sla(plan) else "no SLA"
    else:
        verdict = "misses the SLA: " + "; ".join(item["violations"])
    lines.append(f"  Predicted: {_predicted(plan, metrics)}; {verdict}")
    bottleneck = item["bottleneck"]
    lines.append(f"  Bottleneck: {bottleneck['label']}. {_sentence(bottleneck['detail'])}")
    lines.append(f"  Engine time ({_engine_basis(plan, metrics)}): {_shares_text(item['engine_time_shares'])}")
    if item["time_shares"] is not None:
        from kvplan.formatting import format_seconds

        queueing = item["time_shares"]["queueing"]
        lines.append(f"  A request's life (mean {format_seconds(metrics['e2e_s']['mean'])} end to end): "
                     f"{queueing * 100:.0f} % queueing before its first admission, {(1.0 - queueing) * 100:.0f} % "
                     "admitted, split like the engine time")
    if item["alternatives"]:
        lines.append("  What would change it (each alternative evaluated with the cost model):")
        lines += [f"    - {_alternative_text(plan, item, alternative)}" for alternative in item["alternatives"]]
    else:
        lines.append("  No neighbouring deployment addresses it within the GPU budget.")
    return lines


def _has_sla(plan: Plan) -> bool:
    return bool(plan.sla) or plan.workload.arrival_mode == "rate"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _predicted(plan: Plan, metrics: dict[str, Any]) -> str:
    from kvplan.formatting import format_count, format_seconds

    parts = []
    if metrics.get("makespan_s") is not None:
        parts.append(f"makespan {format_seconds(metrics['makespan_s'])}")
    throughput = metrics.get("output_tokens_per_s")
    per_gpu = metrics.get("output_tokens_per_s_per_gpu")
    parts.append(f"{format_count(throughput)} output tokens/s ({format_count(per_gpu)} per GPU)")
    parts.append(f"TTFT p99 {format_seconds((metrics.get('ttft_s') or {}).get('p99'))}")
    parts.append(f"TPOT p50 {format_seconds((metrics.get('tpot_s') or {}).get('p50'))}")
    return ", ".join(parts)


def _engine_basis(plan: Plan, metrics: dict[str, Any]) -> str:
    from kvplan.formatting import format_seconds

    if plan.workload.arrival_mode == "batch" and metrics.get("makespan_s") is not None:
        return f"share of the makespan of {format_seconds(metrics['makespan_s'])}"
    return f"share of each second at steady state, steps of {format_seconds(metrics.get('step_time_s'))}"


def _shares_text(shares: dict[str, float] | None) -> str:
    from kvplan.costmodel.attribution import PART_TITLES

    if not shares:
        return "not defined (the model has no steady state for this deployment)"
    ordered = sorted(shares.items(), key=lambda item: -item[1])
    shown = [f"{PART_TITLES[name]} {share * 100:.0f} %" for name, share in ordered if share >= MIN_SHARE_SHOWN]
    return ", ".join(shown)


def _objective_text(plan: Plan, value: float | None) -> str:
    from kvplan.formatting import format_count, format_seconds

    metric = plan.objective
    if metric == "makespan_s":
        return f"makespan {format_seconds(value)}"
    if metric == "cost_per_million_tokens":
        return "-" if value is None else f"${value:.3g} per million output tokens"
    if metric == "output_tokens_per_s_per_gpu":
        return f"{format_count(value)} output tokens/s per GPU"
    return f"{format_count(value)} output tokens/s"


def _percent_change(before: float | None, after: float | None) -> str | None:
    if not before or after is None:
        return None
    return f"{(after / before - 1.0) * 100:+.1f} %"


def _alternative_text(plan: Plan, item: dict[str, Any], alternative: dict[str, Any]) -> str:
    from kvplan.formatting import format_count

    gpus = alternative["metrics"]["gpus"]
    head = f"{alternative['change']} ({_gpus(gpus)})"
    if not alternative["feasible"]:
        return f"{head}: infeasible, {alternative['infeasible_reason']}"
    metrics = alternative["metrics"]
    base = item["metrics"]
    parts = [_objective_text(plan, alternative["objective_value"])]
    change = alternative["objective_change"]
    if change is not None and abs(change) < 0.0005:
        parts[0] += " (unchanged)"
    elif change is not None:
        parts[0] += f" ({abs(change) * 100:.1f} % {'better' if change > 0 else 'worse'})"
    before, after = base.get("kv_capacity_tokens"), metrics.get("kv_capacity_tokens")
    if before and after and abs(after / before - 1.0) >= MIN_CAPACITY_CHANGE_SHOWN:
        ratio = after / before
        parts.append(f"KV capacity {format_count(metrics['kv_capacity_tokens'])} tokens per replica ({ratio:.2f}x)")
    throughput = _percent_change(base.get("output_tokens_per_s"), metrics.get("output_tokens_per_s"))
    per_gpu = _percent_change(base.get("output_tokens_per_s_per_gpu"), metrics.get("output_tokens_per_s_per_gpu"))
    if throughput is not None:
        parts.append(f"output tokens/s {throughput}, per GPU {per_gpu}")
    if base.get("preemptions") or metrics.get("preemptions"):
        parts.append(f"preemptions {format_count(base['preemptions'])} -> {format_count(metrics['preemptions'])}")
    if _has_sla(plan):
        parts.append("meets the SLA" if alternative["sla_met"] else "misses the SLA")
    resource = metrics.get("binding_resource")
    if resource:
        from kvplan.costmodel.attribution import RESOURCE_LABELS

        parts.append(f"then bound by {RESOURCE_LABELS[resource]}")
    return f"{head}: " + "; ".join(parts)
