"""``kvplan size``: the fewest nodes, and the deployment on them, that serve an arrival rate.

For 1, 2, ... up to ``--max-nodes`` nodes, the plan is loaded with ``hardware.nodes``
set, ``search.gpu_budget`` removed (so the budget is every GPU of those nodes) and the
workload switched to the requested arrival rate, then searched like ``kvplan optimize``.
The first node count whose best deployment keeps up with the rate and meets the SLA is
the fleet size. A plan whose search.node lists several node types is sized once per type,
and the fleets are ranked by price per hour, or by GPU count when a type has no price.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from kvplan.cli import EXIT_FAILURE, EXIT_OK, FORMATS, UsageError

if TYPE_CHECKING:
    from kvplan.optimizer.search import RankedDeployment, SearchResult
    from kvplan.spec.errors import SpecIssue
    from kvplan.spec.types import Plan

logger = logging.getLogger("kvplan")

DEFAULT_MAX_NODES = 16
# The objective sizing uses when the plan's objective needs an offline batch.
RATE_OBJECTIVE = "throughput_per_gpu"


@dataclasses.dataclass
class SizeStep:
    """The search on one node count."""

    nodes: int
    gpus: int
    plan: Plan | None = None
    result: SearchResult | None = None
    # Problems of a search section that needs more GPUs than this node count has.
    issues: list[SpecIssue] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> str:
        """Return ``met``, ``sla_missed``, ``infeasible`` or ``search_too_large``."""
        if self.result is None:
            return "search_too_large"
        if self.result.best is not None:
            return "met"
        if any(ranked.evaluation.feasible for ranked in self.result.results):
            return "sla_missed"
        return "infeasible"

    @property
    def deployment(self) -> RankedDeployment | None:
        """The best SLA-meeting deployment, else the feasible one that sustains the highest rate."""
        from kvplan.commands._tables import closest_deployment

        return None if self.result is None else closest_deployment(self.result)

    @property
    def max_arrival_rate_per_s(self) -> float | None:
        deployment = self.deployment
        return None if deployment is None else deployment.evaluation.metrics.get("max_arrival_rate_per_s")

    def reason(self) -> str | None:
        """Explain why this node count is not enough; None when it is."""
        from kvplan.commands._tables import infeasible_summary

        status = self.status
        if status == "search_too_large":
            return "; ".join(f"{issue.path}: {issue.message}" for issue in self.issues)
        if status == "infeasible":
            return infeasible_summary(self.result)
        if status == "sla_missed":
            return "; ".join(self.deployment.violations)
        return None


@dataclasses.dataclass
class Sizing:
    """Every node count searched, the chosen one (the last step when it meets the SLA) and why the search stopped."""

    max_nodes: int
    objective_note: str | None
    steps: list[SizeStep]
    # The plan of the last node count loaded, for its node, workload and SLA.
    reference: Plan | None = None
    stop_reason: str | None = None
    # The node type sized, when the plan's search.node lists several; None otherwise.
    node_type: str | None = None

    @property
    def chosen(self) -> SizeStep | None:
        if self.steps and self.steps[-1].status == "met":
            return self.steps[-1]
        return None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "size", help="find the fewest nodes that serve an arrival rate within the SLA",
        description="Search the plan on 1, 2, ... nodes at the given arrival rate and stop at the "
                    "first node count whose best deployment keeps up and meets the SLA. The plan's "
                    "search.gpu_budget is ignored, so each node count may use all its GPUs. Prints the "
                    "cost per hour and per million output tokens when the node has a price. Exit "
                    "code 0 when a node count works, 1 when none up to --max-nodes does.",
    )
    parser.add_argument("plan", metavar="PLAN", help="path of a Plan spec")
    parser.add_argument("--arrival-rate", metavar="RATE",
                        help="requests per unit of time, for example 20/s or 1000/min; replaces the "
                             "workload's arrival mode (default: the workload's arrival_rate)")
    parser.add_argument("--max-nodes", type=int, default=DEFAULT_MAX_NODES, metavar="N",
                        help=f"largest node count to try (default: {DEFAULT_MAX_NODES})")
    parser.add_argument("--trials", type=int, default=None,
                        help="Optuna trials per node count before the local polish (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="evaluate every point of each node count's search space instead of sampling")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.max_nodes < 1:
        raise UsageError(f"--max-nodes must be at least 1, but got {args.max_nodes}")
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, but got {args.trials}")
    if args.arrival_rate is not None:
        _check_arrival_rate(args.arrival_rate)

    node_types = _searched_node_types(args)
    if node_types:
        sizings = [size_fleet(args, node_type=name) for name in node_types]
        sys.stdout.write(render_node_types(args, sizings))
        if any(sizing.chosen is not None for sizing in sizings):
            return EXIT_OK
        for sizing in sizings:
            print(f"kvplan size: {sizing.node_type}: {failure_message(sizing)}", file=sys.stderr)
        return EXIT_FAILURE

    sizing = size_fleet(args)
    sys.stdout.write(render_sizing(args, sizing))
    if sizing.chosen is not None:
        return EXIT_OK
    print(f"kvplan size: {failure_message(sizing)}", file=sys.stderr)
    return EXIT_FAILURE


def _searched_node_types(args: argparse.Namespace) -> list[str]:
    """Return the names of the plan's search.node types, or [] when it lists none.

    Raises UsageError when the plan lists node types but its search section is invalid
    on one node, because the types cannot be read then.
    """
    overrides, _ = base_overrides(args.plan, args.arrival_rate)
    plan, _, issues = _load_step(args.plan, {**overrides, "hardware.nodes": 1})
    if plan is None:
        if _written_search_lists_nodes(args.plan):
            details = "; ".join(f"{issue.path}: {issue.message}" for issue in issues)
            raise UsageError(f"the plan's search section is invalid on 1 node ({details}); with search.node, "
                             "kvplan size needs a search section that is valid on one node of every type")
        return []
    return [node.name for node in plan.search.node or ()]


def _written_search_lists_nodes(plan_path: str) -> bool:
    from kvplan.spec.files import MAX_SPEC_FILE_BYTES, read_text
    from kvplan.spec.yamlpos import YamlSyntaxProblem, load_yaml

    try:
        data = load_yaml(read_text(plan_path, MAX_SPEC_FILE_BYTES, "spec file")).data
    except (OSError, UnicodeDecodeError, YamlSyntaxProblem):
        return False
    search = data.get("search") if isinstance(data, dict) else None
    return isinstance(search, dict) and "node" in search


def _check_arrival_rate(text: str) -> None:
    from kvplan.spec.errors import ValueProblem
    from kvplan.spec.units import parse_arrival_rate

    try:
        rate = parse_arrival_rate(text)
    except ValueProblem as problem:
        raise UsageError(f"invalid --arrival-rate: {problem.message}") from None
    if rate <= 0:
        raise UsageError(f"--arrival-rate must be greater than 0, but got {text!r}")


def base_overrides(plan_path: str, arrival_rate: str | None) -> tuple[dict[str, Any], str | None]:
    """Return the overrides every node count shares and a note when the objective changes."""
    overrides: dict[str, Any] = {"search.gpu_budget": None}
    if arrival_rate is not None:
        overrides["workload.arrival_rate"] = arrival_rate
    note = None
    if _written_objective(plan_path) == "makespan":
        # makespan needs an offline batch, which a sizing for an arrival rate is not.
        overrides["objective"] = RATE_OBJECTIVE
        note = f"{RATE_OBJECTIVE} in place of the plan's makespan, which needs an offline batch"
    return overrides, note


def _written_objective(plan_path: str) -> Any:
    """Return the plan file's ``objective`` as written, or None when it cannot be read.

    Reads the file with the spec loader's guards (a regular file within the size limit,
    nesting, alias and integer limits), because it is read before the plan is loaded.
    """
    from kvplan.spec.files import MAX_SPEC_FILE_BYTES, read_text
    from kvplan.spec.yamlpos import YamlSyntaxProblem, load_yaml

    try:
        data = load_yaml(read_text(plan_path, MAX_SPEC_FILE_BYTES, "spec file")).data
    except (OSError, UnicodeDecodeError, YamlSyntaxProblem):
        return None  # loading the plan reports the problem
    return data.get("objective") if isinstance(data, dict) else None


def size_fleet(args: argparse.Namespace, node_type: str | None = None) -> Sizing:
    """Search node counts from 1 upwards until one meets the SLA or the limit is reached.

    With ``node_type``, the name of one of the plan's search.node types, every node count
    searches that type alone.
    """
    from kvplan.optimizer.search import optimize

    overrides, note = base_overrides(args.plan, args.arrival_rate)
    sizing = Sizing(args.max_nodes, note, [], node_type=node_type)
    # GPUs of the largest layout when the plan lists dp, tp and pp, so that more nodes
    # stop helping once they hold it; None when a list grows with the budget.
    ceiling = None
    for nodes in range(1, args.max_nodes + 1):
        step_overrides = {**overrides, "hardware.nodes": nodes}
        plan, reference, issues = _load_step(args.plan, step_overrides, node_type)
        if nodes == 1:
            _check_rate_mode(reference)
            search = reference.search
            if search.dp and search.tp and search.pp:
                ceiling = max(search.dp) * max(search.tp) * max(search.pp)
        sizing.reference = reference
        gpus_per_node = reference.node.gpus_per_node
        step = SizeStep(nodes, nodes * gpus_per_node, plan=plan, issues=issues)
        if plan is None:
            sizing.steps.append(step)
            continue
        if ceiling is not None and ceiling <= (nodes - 1) * gpus_per_node and sizing.steps[-1].result is not None:
            sizing.stop_reason = (
                f"the largest layout the plan's search.dp, search.tp and search.pp allow uses {ceiling} "
                f"GPUs, which {nodes - 1} node(s) already hold, so more nodes cannot help"
            )
            break
        if plan.search.dp is None:
            step_overrides["search.dp"] = replica_counts(nodes, step.gpus)
            plan, _, _ = _load_step(args.plan, step_overrides, node_type)
            step.plan = plan

        started = time.perf_counter()
        step.result = optimize(plan, trials=args.trials, seed=args.seed, exhaustive=args.exhaustive)
        logger.info("%d node(s): %s in %.1f s", nodes, step.status, time.perf_counter() - started)
        sizing.steps.append(step)
        if step.status == "met":
            break
    return sizing


def replica_counts(nodes: int, gpus: int) -> list[int]:
    """Return the dp candidates for ``nodes`` nodes holding ``gpus`` GPUs in all.

    These are the default powers of two up to ``gpus``, and ``nodes`` times each power
    of two. Replicas of 2**k GPUs fill 3 nodes of 8 GPUs only with dp = 3 * 8 / 2**k,
    which no power of two equals.
    """
    counts = set()
    power = 1
    while power <= gpus:
        counts.add(power)
        if nodes * power <= gpus:
            counts.add(nodes * power)
        power *= 2
    return sorted(counts)


def _load_step(plan_path: str, overrides: dict[str, Any],
               node_type: str | None = None) -> tuple[Plan | None, Plan, list[SpecIssue]]:
    """Load the plan for one node count: (plan, a plan to read the node from, search problems).

    dp, tp or pp lists that need more GPUs than these nodes hold make only the search
    section invalid, and more nodes can fix that. The plan is then None, and the plan
    loaded with only the search section's node types names the node. Every other
    problem raises. With ``node_type``, both plans are narrowed to that node type.
    """
    from kvplan.optimizer.variants import single_node_type_plan
    from kvplan.spec import load_plan_with_overrides
    from kvplan.spec.errors import SpecError

    try:
        plan = load_plan_with_overrides(plan_path, overrides)
    except SpecError as error:
        if not all(issue.path.startswith("$.search") for issue in error.issues):
            raise
        search_overrides = {f"search.{key}": None for key in ("gpu_budget", "dp", "tp", "pp", "max_num_seqs",
                                                              "max_num_batched_tokens", "gpu_memory_utilization")}
        try:
            reference = load_plan_with_overrides(plan_path, {**overrides, **search_overrides})
        except SpecError:
            try:
                reference = load_plan_with_overrides(plan_path, {**overrides, "search": None})
            except SpecError:
                raise error from None
        if node_type is not None and node_type in {node.name for node in reference.search.node or ()}:
            reference = single_node_type_plan(reference, node_type)
        return None, reference, error.issues
    if node_type is not None:
        plan = single_node_type_plan(plan, node_type)
    return plan, plan, []


def _check_rate_mode(plan: Plan) -> None:
    if plan.workload.arrival_mode == "rate":
        return
    mode_key = "requests" if plan.workload.arrival_mode == "batch" else "concurrency"
    raise UsageError(
        f"--arrival-rate is required, because workload '{plan.workload.name}' sets {mode_key}, "
        "not arrival_rate; pass for example --arrival-rate 20/s"
    )


def failure_message(sizing: Sizing) -> str:
    plan = sizing.reference
    rate = plan.workload.arrival_rate_per_s if plan is not None else None
    tried = sizing.steps[-1].nodes if sizing.steps else 0
    node = plan.node.name if plan is not None else "the node"
    message = (f"no deployment on up to {tried} node(s) of {node} keeps up with {rate:g} requests/s "
               "and meets the SLA")
    if sizing.stop_reason:
        message += f"; stopped because {sizing.stop_reason}"
    searched = [step for step in sizing.steps if step.max_arrival_rate_per_s is not None]
    if searched:
        best = max(searched, key=lambda step: step.max_arrival_rate_per_s)
        from kvplan.commands._tables import describe_deployment

        message += (f"; the highest rate sustained was {best.max_arrival_rate_per_s:.3g} requests/s, by "
                    f"{describe_deployment(best.deployment)} on {best.nodes} node(s)")
    last = sizing.steps[-1] if sizing.steps else None
    if last is not None and last.reason():
        message += f"; on {last.nodes} node(s): {last.reason()}"
    return message


# Cost


def fleet_cost_per_hour(step: SizeStep) -> float | None:
    """USD per hour for every GPU of the step's nodes, or None when the node has no price."""
    price = step.plan.node.price_per_gpu_hour if step.plan is not None else None
    return None if price is None else step.gpus * price


def fleet_cost_per_million_tokens(step: SizeStep) -> float | None:
    """USD per million output tokens for the whole fleet at the deployment's output rate."""
    per_hour = fleet_cost_per_hour(step)
    deployment = step.deployment
    if per_hour is None or deployment is None:
        return None
    tokens_per_s = deployment.evaluation.metrics.get("output_tokens_per_s")
    if not tokens_per_s:
        return None
    return per_hour / 3600.0 / tokens_per_s * 1e6


# Rendering


def render_sizing(args: argparse.Namespace, sizing: Sizing) -> str:
    if args.format == "json":
        return _render_json(args, sizing)
    if args.format == "csv":
        return _render_csv(sizing)
    return _render_table(args, sizing)


def _step_fields(step: SizeStep) -> dict[str, Any]:
    return {
        "nodes": step.nodes,
        "gpus": step.gpus,
        "status": step.status,
        "reason": step.reason(),
        "max_arrival_rate_per_s": step.max_arrival_rate_per_s,
        "cost_per_hour": fleet_cost_per_hour(step),
        "cost_per_million_tokens": fleet_cost_per_million_tokens(step),
    }


def _render_json(args: argparse.Namespace, sizing: Sizing) -> str:
    from kvplan.commands._tables import issue_dicts, plan_summary, render_json
    from kvplan.optimizer.search import DEFAULT_TRIALS, SCHEMA_VERSION

    plan = sizing.reference
    steps = []
    for step in sizing.steps:
        deployment = step.deployment
        steps.append({
            **_step_fields(step),
            "deployment": deployment.to_dict() if deployment is not None else None,
            "search": None if step.result is None else {
                "method": step.result.method,
                "evaluated": step.result.evaluated,
                "space_size": step.result.space_size,
            },
            "issues": issue_dicts(step.issues),
        })
    chosen = sizing.chosen
    document = {
        "schema_version": SCHEMA_VERSION,
        "command": "size",
        "plan": {"source": args.plan, **(plan_summary(plan) if plan is not None else {})},
        "arrival_rate_per_s": plan.workload.arrival_rate_per_s if plan is not None else None,
        "max_nodes": sizing.max_nodes,
        "search": {
            "method": "exhaustive" if args.exhaustive else "tpe",
            "trials": None if args.exhaustive else (args.trials or DEFAULT_TRIALS),
            "seed": args.seed,
        },
        "steps": steps,
        "fleet": None if chosen is None else {
            "nodes": chosen.nodes,
            "gpus": chosen.gpus,
            "cost_per_hour": fleet_cost_per_hour(chosen),
            "cost_per_million_tokens": fleet_cost_per_million_tokens(chosen),
            "deployment": chosen.deployment.to_dict(),
        },
        "reason": None if chosen is not None else failure_message(sizing),
    }
    return render_json(document)


def _render_csv(sizing: Sizing) -> str:
    from kvplan.commands._tables import DEPLOYMENT_FIELDS, deployment_fields, render_csv

    # gpus is every GPU of the nodes, so the deployment's own count becomes gpus_used. The
    # fleet's cost replaces the cost of the GPUs the deployment uses.
    renamed = {"gpus": "gpus_used"}
    deployment_keys = [renamed.get(key, key) for key in DEPLOYMENT_FIELDS if key != "cost_per_million_tokens"]
    rows = []
    for step in sizing.steps:
        row = {renamed.get(key, key): value for key, value in deployment_fields(step.deployment).items()
               if key != "cost_per_million_tokens"}
        row.update({key: ("" if value is None else value) for key, value in _step_fields(step).items()})
        row["bottleneck_label"] = (step.deployment.bottleneck if step.deployment is not None else None) or ""
        rows.append(row)
    step_keys = ["nodes", "gpus", "status", "reason", "max_arrival_rate_per_s", "cost_per_hour",
                 "cost_per_million_tokens"]
    keys = [*step_keys, *(key for key in deployment_keys if key not in step_keys), "bottleneck_label"]
    return render_csv(keys, rows)


def _render_table(args: argparse.Namespace, sizing: Sizing) -> str:
    from kvplan.commands._tables import (
        OBJECTIVE_TITLES,
        describe_search,
        describe_sla,
        format_dollars,
        format_rate,
        render_rows,
    )
    from kvplan.formatting import format_count, format_seconds

    plan = sizing.reference
    lines = []
    if plan is not None:
        workload = plan.workload
        price = plan.node.price_per_gpu_hour
        price_text = f"${price:g} per GPU-hour" if price is not None else "no price"
        lines += [
            f"Sizing plan {plan.name} for {workload.arrival_rate_per_s:g} requests/s: {plan.model.name} "
            f"({plan.model.weight_dtype}) on 1 to {sizing.max_nodes} x {plan.node.name} "
            f"({plan.node.gpus_per_node} GPUs per node, {price_text})",
            f"Workload {workload.name}: prompt {workload.prompt_tokens.description}; output "
            f"{workload.output_tokens.description}",
            f"SLA: {describe_sla(plan)}",
            f"Objective: {OBJECTIVE_TITLES[plan.objective]}"
            + (f" ({sizing.objective_note})" if sizing.objective_note else ""),
            f"Search per node count: {describe_search(args.trials, args.seed, args.exhaustive)}, "
            "GPU budget = all GPUs of the nodes",
        ]

    show_cost = plan is not None and plan.node.price_per_gpu_hour is not None
    headers = ["nodes", "GPUs", "dp", "tp", "pp", "seqs", "batch", "max req/s", "tok/s", "TTFT p99",
               "TPOT p99", "bound by"]
    if show_cost:
        headers += ["$/h", "$/M tok"]
    headers.append("SLA")
    rows = []
    for step in sizing.steps:
        row = [str(step.nodes), str(step.gpus)]
        deployment = step.deployment
        if deployment is None:
            row += ["-"] * (len(headers) - 3)
        else:
            config = deployment.evaluation.config
            metrics = deployment.evaluation.metrics
            row += [
                str(config.dp), str(config.tp), str(config.pp), str(config.max_num_seqs),
                str(config.max_num_batched_tokens),
                format_rate(metrics.get("max_arrival_rate_per_s")),
                format_count(metrics.get("output_tokens_per_s")),
                format_seconds((metrics.get("ttft_s") or {}).get("p99")),
                format_seconds((metrics.get("tpot_s") or {}).get("p99")),
                deployment.bottleneck or str(metrics.get("bottleneck", "-")),
            ]
            if show_cost:
                row += [format_dollars(fleet_cost_per_hour(step)),
                        format_dollars(fleet_cost_per_million_tokens(step))]
        row.append("met" if step.status == "met" else step.reason())
        rows.append(row)

    notes = [
        "Each row is one node count: its best deployment, or the feasible one that sustains the "
        "highest arrival rate when none meets the SLA. max req/s = highest arrival rate the "
        "deployment keeps up with."
    ]
    if show_cost:
        notes.append("$/h and $/M tok count every GPU of the nodes, whether the deployment uses it or not.")
    notes += _fleet_lines(sizing)
    body = render_rows(headers, rows, args.format)
    return "\n".join([*lines, "", body, "", *notes]) + "\n"


def _fleet_lines(sizing: Sizing) -> list[str]:
    from kvplan.commands._tables import describe_deployment
    from kvplan.formatting import format_count

    chosen = sizing.chosen
    if chosen is None:
        return [f"No fleet found: {failure_message(sizing)}."]
    plan = chosen.plan
    deployment = chosen.deployment
    metrics = deployment.evaluation.metrics
    used = deployment.evaluation.config.gpus
    usage = f"uses {used} of the {chosen.gpus} GPUs" if used < chosen.gpus else f"uses all {chosen.gpus} GPUs"
    lines = [
        f"Fleet: {chosen.nodes} x {plan.node.name} ({chosen.gpus} GPUs). Run "
        f"{describe_deployment(deployment)}; it {usage}, keeps up with "
        f"{plan.workload.arrival_rate_per_s:g} requests/s (up to "
        f"{metrics.get('max_arrival_rate_per_s') or 0:.3g}/s) and delivers "
        f"{format_count(metrics.get('output_tokens_per_s'))} output tokens/s."
    ]
    per_hour = fleet_cost_per_hour(chosen)
    if per_hour is None:
        lines.append(f"Cost: node {plan.node.name} has no price; set price_per_gpu_hour in its spec to "
                     "see the cost per hour and per million output tokens.")
    else:
        per_million = fleet_cost_per_million_tokens(chosen)
        per_million_text = "-" if per_million is None else f"${per_million:,.2f}"
        lines.append(
            f"Cost: ${per_hour:,.2f} per hour ({chosen.gpus} GPUs x ${plan.node.price_per_gpu_hour:g}), "
            f"{per_million_text} per million output tokens."
        )
    return lines



# Several node types


def rank_node_types(sizings: list[Sizing]) -> tuple[list[Sizing], str]:
    """Order the sizings of several node types, cheapest fleet first, and name the order.

    Fleets are ranked by price per hour when every node type has a price, otherwise by
    GPU count. Node types without a fleet come last, in the plan's order.
    """
    priced = all(sizing.reference is not None and sizing.reference.node.price_per_gpu_hour is not None
                 for sizing in sizings)

    def key(sizing: Sizing) -> tuple[int, float]:
        chosen = sizing.chosen
        if chosen is None:
            return (1, 0.0)
        return (0, fleet_cost_per_hour(chosen) if priced else float(chosen.gpus))

    order = "price per hour" if priced else "GPU count"
    return sorted(sizings, key=key), order


def render_node_types(args: argparse.Namespace, sizings: list[Sizing]) -> str:
    ranked, order = rank_node_types(sizings)
    if args.format == "json":
        return _render_node_types_json(args, ranked, order)
    if args.format == "csv":
        return _render_node_types_csv(ranked)
    return _render_node_types_table(args, ranked, order)


def _node_type_fields(sizing: Sizing) -> dict[str, Any]:
    chosen = sizing.chosen
    node = sizing.reference.node if sizing.reference is not None else None
    return {
        "node": sizing.node_type,
        "price_per_gpu_hour": None if node is None else node.price_per_gpu_hour,
        "nodes": None if chosen is None else chosen.nodes,
        "gpus": None if chosen is None else chosen.gpus,
        "cost_per_hour": None if chosen is None else fleet_cost_per_hour(chosen),
        "cost_per_million_tokens": None if chosen is None else fleet_cost_per_million_tokens(chosen),
        "reason": None if chosen is not None else failure_message(sizing),
    }


def _render_node_types_json(args: argparse.Namespace, ranked: list[Sizing], order: str) -> str:
    from kvplan.commands._tables import render_json

    node_types = []
    for rank, sizing in enumerate(ranked, start=1):
        document = json.loads(_render_json(args, sizing))
        document.pop("schema_version")
        document.pop("command")
        node_types.append({"rank": rank, **_node_type_fields(sizing), "sizing": document})
    from kvplan.optimizer.search import SCHEMA_VERSION

    return render_json({
        "schema_version": SCHEMA_VERSION,
        "command": "size",
        "plan": {"source": args.plan},
        "ranked_by": order,
        "node_types": node_types,
    })


def _render_node_types_csv(ranked: list[Sizing]) -> str:
    from kvplan.commands._tables import DEPLOYMENT_FIELDS, deployment_fields, render_csv

    from kvplan.output import optional_settings_in

    deployments = [sizing.chosen.deployment for sizing in ranked
                   if sizing.chosen is not None and sizing.chosen.deployment is not None]
    # The node has its own column; the other optional settings follow the parallel degrees.
    optional = [key for key in optional_settings_in([d.evaluation.config for d in deployments]) if key != "node"]
    rows = []
    for rank, sizing in enumerate(ranked, start=1):
        chosen = sizing.chosen
        row = {"rank": rank, **_node_type_fields(sizing)}
        fields = deployment_fields(chosen.deployment if chosen is not None else None, optional)
        row.update({key: value for key, value in fields.items() if key not in row})
        row["bottleneck_label"] = chosen.deployment.bottleneck if chosen is not None and chosen.deployment else None
        rows.append({key: ("" if value is None else value) for key, value in row.items()})
    keys = ["rank", "node", "price_per_gpu_hour", "nodes", "gpus", "cost_per_hour", "cost_per_million_tokens",
            "reason"]
    fields = [*DEPLOYMENT_FIELDS[:6], *optional, *DEPLOYMENT_FIELDS[6:], "bottleneck_label"]
    return render_csv([*keys, *(key for key in fields if key not in keys)], rows)


def _render_node_types_table(args: argparse.Namespace, ranked: list[Sizing], order: str) -> str:
    from kvplan.commands._tables import describe_deployment, describe_search, describe_sla, format_dollars, render_rows

    plan = next((sizing.reference for sizing in ranked if sizing.reference is not None), None)
    lines = []
    if plan is not None:
        lines += [
            f"Sizing plan {plan.name} for {plan.workload.arrival_rate_per_s:g} requests/s: {plan.model.name} "
            f"({plan.model.weight_dtype}) on 1 to {args.max_nodes} nodes of each of {len(ranked)} node types",
            f"SLA: {describe_sla(plan)}",
            f"Search per node count: {describe_search(args.trials, args.seed, args.exhaustive)}, "
            "GPU budget = all GPUs of the nodes",
        ]
    headers = ["#", "node", "nodes", "GPUs", "$/GPU-h", "$/h", "$/M tok", "deployment"]
    rows = []
    for rank, sizing in enumerate(ranked, start=1):
        fields = _node_type_fields(sizing)
        chosen = sizing.chosen
        price = fields["price_per_gpu_hour"]
        rows.append([
            str(rank),
            str(sizing.node_type),
            "-" if chosen is None else str(chosen.nodes),
            "-" if chosen is None else str(chosen.gpus),
            "-" if price is None else f"{price:g}",
            format_dollars(fields["cost_per_hour"]),
            format_dollars(fields["cost_per_million_tokens"]),
            f"no fleet up to {args.max_nodes} node(s)" if chosen is None else describe_deployment(chosen.deployment),
        ])
    notes = [f"Each row is the fewest nodes of one type that keep up and meet the SLA, ranked by {order}; "
             "$/h and $/M tok count every GPU of the nodes."]
    for sizing in ranked:
        if sizing.chosen is None:
            notes.append(f"{sizing.node_type}: {failure_message(sizing)}.")
    body = render_rows(headers, rows, args.format)
    return "\n".join([*lines, "", body, "", *notes]) + "\n"
