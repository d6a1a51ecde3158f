"""Time attribution of a deployment, its bottleneck, and the effect of neighbouring deployments.

Three layers:

* :func:`time_components` runs inside the jitted cost model. It splits the engine's time
  into compute, HBM reads (weights and KV cache), TP all-reduces, PP transfers, the
  dispatch and combine of expert parallelism, engine overhead and recomputation after
  preemption. It also estimates the mean time a request
  queues before its prefill.
* :func:`share_metrics` and :func:`bottleneck` turn those arrays and the other metrics of
  one deployment into shares that sum to 1 and into the one constraint that binds it.
* :func:`propose_changes` evaluates neighbouring deployments with the same cost model and
  reports how each changes the objective, so every proposal carries a predicted number.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax.numpy as jnp

from kvplan.costmodel.scheduling import _steady_round, workload_moments

if TYPE_CHECKING:
    from kvplan.costmodel.evaluate import CostModel, Evaluation
    from kvplan.spec.types import Deployment, Plan

# Parts of the engine's busy time, in the order of the ``engine_parts`` array.
ENGINE_PARTS = ("compute", "weight_read", "kv_read", "tp_allreduce", "pp_transfer", "ep_dispatch_combine",
                "engine_overhead", "recomputation")
# Parts of a request's life: waiting for admission, then the engine's parts.
REQUEST_PARTS = ("queueing", *ENGINE_PARTS)

# Smallest steady-round recomputation share taken as real; see ``time_components``.
STEADY_RECOMPUTE_MIN_SHARE = 1e-3

PART_TITLES = {
    "queueing": "queueing",
    "compute": "compute",
    "weight_read": "HBM: weights",
    "kv_read": "HBM: KV cache",
    "tp_allreduce": "TP all-reduce",
    "pp_transfer": "PP transfers",
    "ep_dispatch_combine": "EP dispatch/combine",
    "engine_overhead": "engine overhead",
    "recomputation": "recomputation",
}


def time_components(inputs, layout, tp, pp, dp, max_num_batched_tokens, replica) -> dict[str, Any]:
    """Split one replica's time into parts; traced inside the cost model, one configuration.

    Engine parts: the steady round without recomputation (the same running count and
    admissions, no preempted request re-prefilled) gives the split of compute, weight and
    KV reads, communication and overhead. Recomputation is the share of the steady round
    that its re-prefill of preempted requests adds.

    Queueing: mean TTFT minus the request's own prefill, the rounds its mean prompt takes
    in the budget left by the steady decodes.

    NOTE: in an offline batch the split comes from the steady round, so the fill (prefill
    only), the drain (a shrinking batch that reads its weights more often per token) and
    the recomputation of requests preempted by over-admission are counted at the steady
    round's mix.
    """
    moments = workload_moments(inputs)
    budget = max_num_batched_tokens
    clean_round = _steady_round(inputs, layout, tp, pp, budget, replica.running_requests, moments, 0.0)
    clean = clean_round.step

    parts = jnp.stack([
        clean.compute,
        clean.weight_read,
        clean.kv_read,
        clean.tp_allreduce,
        clean.pp_transfer,
        clean.ep_dispatch_combine,
        clean.fixed_gpu + clean.cpu,
    ])
    parts = parts / jnp.maximum(jnp.sum(parts), 1e-30)

    # The steady round carries the re-prefill of preempted requests; its extra time over
    # the same round without them is the recomputation.
    with_recompute = replica.step.total
    steady_share = jnp.clip((with_recompute - clean.total) / jnp.maximum(with_recompute, 1e-30), 0.0, 1.0)
    # Below 0.1 % the steady difference is float32 rounding of two equal rounds.
    # NOTE: a batch replica that runs as one cohort (all its requests admitted at once,
    # their lockstep demand fitting the pool) has no steady round, so any recomputation in
    # its drain is not counted.
    recomputation = jnp.where(steady_share > STEADY_RECOMPUTE_MIN_SHARE, steady_share, 0.0)
    engine_parts = jnp.concatenate([parts * (1.0 - recomputation), recomputation[None]])

    chunk = jnp.maximum(budget - clean_round.decodes, 1.0)
    prompt_rounds = jnp.maximum(jnp.ceil(moments.mean_prompt / chunk), 1.0)
    queueing_s = jnp.maximum(replica.ttft.mean - prompt_rounds * clean.total, 0.0)
    # Below 1 % of the TTFT the difference is mostly float32 rounding of two nearly
    # equal times, and too small to report.
    queueing_s = jnp.where(queueing_s < 1e-2 * replica.ttft.mean, 0.0, queueing_s)
    return {
        "engine_parts": engine_parts,
        "queueing_s": queueing_s,
        "running_context_tokens": moments.running_context,
    }


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def share_metrics(raw: dict[str, Any], row: int, metrics: dict[str, Any], arrival_mode: str) -> dict[str, Any]:
    """Return the attribution metrics of row ``row`` of the cost model's arrays.

    ``engine_time_shares``: shares of the engine's busy time (the makespan in an offline
    batch, each second otherwise). ``time_shares``: shares of a request's mean end-to-end
    latency, queueing first and the rest split like the engine's time. Each sums to 1; a
    dict is None when the model has no finite value for it (a rate it cannot keep up with).
    ``binding_resource``: the limit that binds, one of ``RESOURCE_LABELS``.
    """
    components = raw["attribution"]
    engine = [float(value) for value in components["engine_parts"][row]]
    engine_total = sum(engine)
    engine_shares = None
    if all(math.isfinite(value) for value in engine) and engine_total > 0:
        engine_shares = {name: value / engine_total for name, value in zip(ENGINE_PARTS, engine)}

    queueing_s = _finite_or_none(components["queueing_s"][row])
    e2e_mean = (metrics.get("e2e_s") or {}).get("mean")
    request_shares = None
    if engine_shares is not None and queueing_s is not None and e2e_mean:
        queueing = min(queueing_s / e2e_mean, 1.0)
        request_shares = {"queueing": queueing}
        request_shares.update({name: share * (1.0 - queueing) for name, share in engine_shares.items()})

    flags = {name: bool(raw[name][row]) for name in ("kv_bound", "budget_bound", "seqs_bound")}
    return {
        "engine_time_shares": engine_shares,
        "time_shares": request_shares,
        "mean_queueing_s": queueing_s,
        "running_context_tokens": _finite_or_none(components["running_context_tokens"][row]),
        "binding_resource": _binding_resource(flags, engine_shares, arrival_mode),
    }


# Short labels of the limits a deployment can hit, for tables.
RESOURCE_LABELS = {
    "kv_capacity": "KV capacity",
    "hbm_bandwidth": "HBM bandwidth",
    "compute": "compute",
    "communication": "communication",
    "engine_overhead": "engine overhead",
    "max_num_seqs": "max_num_seqs",
    "token_budget": "token budget",
}

# Engine parts behind each resource that a step's time can be bound by.
RESOURCE_PARTS = {
    "compute": ("compute",),
    "hbm_bandwidth": ("weight_read", "kv_read"),
    "communication": ("tp_allreduce", "pp_transfer", "ep_dispatch_combine"),
    "engine_overhead": ("engine_overhead",),
}


def _resource_shares(engine_shares: dict[str, float]) -> dict[str, float]:
    """Return the share of the engine's time outside recomputation that each resource takes."""
    outside = max(1.0 - engine_shares["recomputation"], 1e-12)
    return {resource: sum(engine_shares[part] for part in parts) / outside
            for resource, parts in RESOURCE_PARTS.items()}


def _binding_resource(flags: dict[str, bool], engine_shares: dict[str, float] | None, arrival_mode: str) -> str:
    """Name the limit that binds a deployment.

    The token budget comes first, because when it caps the decodes of a step the KV
    pool and max_num_seqs do not matter. It is reported as ``compute`` when most of the
    step is compute-bound, because a larger budget then lengthens each step about as
    much as it adds tokens. Then a full KV pool, then a max_num_seqs that caps the
    running count (not under an arrival rate, which sets the running count itself), and
    otherwise the resource that takes most of a step.
    """
    resources = _resource_shares(engine_shares) if engine_shares else None
    if flags["budget_bound"]:
        if resources is not None and resources["compute"] >= 0.5:
            return "compute"
        return "token_budget"
    if flags["kv_bound"]:
        return "kv_capacity"
    if flags["seqs_bound"] and arrival_mode != "rate":
        return "max_num_seqs"
    if resources is None:
        return "hbm_bandwidth"
    return max(resources, key=resources.get)


@dataclasses.dataclass(frozen=True)
class Bottleneck:
    """Bottleneck of one deployment: a code, a short label for tables and the numbers behind it."""

    code: str  # a key of RESOURCE_LABELS, or "sla"
    label: str
    detail: str
    resource: str  # the binding resource, also when the SLA is missed

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def missed_sla_bounds(plan: Plan, metrics: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """Return (name, value, bound) for each SLA bound missed, the worst miss first.

    The name is ``<metric>_<statistic>`` (``ttft_p99``), or ``arrival_rate`` when the
    deployment cannot keep up with the arrivals. Value and bound are in seconds, or in
    requests per second for the arrival rate. Value is None when undefined.
    """
    missed = []
    if metrics.get("keeps_up") is False:
        missed.append(("arrival_rate", math.inf, metrics.get("max_arrival_rate_per_s"),
                       plan.workload.arrival_rate_per_s))
    for bound in plan.sla:
        value = (metrics.get(f"{bound.metric}_s") or {}).get(bound.statistic)
        name = f"{bound.metric}_{bound.statistic}"
        if value is None:
            if metrics.get("keeps_up") is not False:
                missed.append((name, math.inf, None, bound.max_s))
        elif value > bound.max_s:
            missed.append((name, value / bound.max_s, value, bound.max_s))
    missed.sort(key=lambda item: -item[1])
    return [(name, value, limit) for name, _, value, limit in missed]


def _format_share(value: float) -> str:
    return f"{value * 100:.0f} %"


def _resource_detail(resource: str, deployment: Deployment, metrics: dict[str, Any]) -> str:
    from kvplan.formatting import format_count

    shares = _resource_shares(metrics["engine_time_shares"]) if metrics.get("engine_time_shares") else {}
    running = metrics.get("running_requests_per_replica") or 0.0
    capacity = metrics.get("kv_capacity_tokens") or 0.0
    context = metrics.get("running_context_tokens") or 0.0
    if resource == "kv_capacity":
        fits = capacity / context if context else 0.0
        text = (f"the KV cache holds {format_count(capacity)} tokens per replica, room for about "
                f"{fits:,.0f} running requests at their mean context of {context:,.0f} tokens, while "
                f"max_num_seqs allows {deployment.max_num_seqs:,}")
        preemptions = metrics.get("preemptions")
        if preemptions:
            # An offline batch reports preemptions over the whole run, other modes per second.
            per = "" if metrics.get("makespan_s") is not None else " per second"
            text += f"; the model predicts {format_count(preemptions)} preemptions{per}"
        return text
    if resource == "max_num_seqs":
        fits = capacity / context if context else 0.0
        return (f"{running:,.0f} requests run per replica, the max_num_seqs limit, while the KV cache "
                f"has room for about {fits:,.0f}")
    if resource == "token_budget":
        return (f"max_num_batched_tokens {deployment.max_num_batched_tokens:,} caps the tokens of each step "
                f"below what the {_running_requests(running)} and their prefills need")
    engine = metrics.get("engine_time_shares") or {}
    if resource == "hbm_bandwidth":
        return (f"reading HBM takes {_format_share(shares.get('hbm_bandwidth', 0.0))} of each step "
                f"(weights {_format_share(engine.get('weight_read', 0.0))}, KV cache "
                f"{_format_share(engine.get('kv_read', 0.0))}) with {_running_requests(running)} per replica")
    if resource == "compute":
        return (f"matrix work at the achieved FLOP rate takes {_format_share(shares.get('compute', 0.0))} "
                "of each step")
    if resource == "communication":
        text = (f"communication takes {_format_share(shares.get('communication', 0.0))} of each step "
                f"(TP all-reduce {_format_share(engine.get('tp_allreduce', 0.0))}, PP transfers "
                f"{_format_share(engine.get('pp_transfer', 0.0))}")
        if deployment.enable_expert_parallel:
            text += f", EP dispatch and combine {_format_share(engine.get('ep_dispatch_combine', 0.0))}"
        return text + ")"
    return (f"host and fixed per-layer kernel time take {_format_share(shares.get('engine_overhead', 0.0))} "
            f"of each step with {_running_requests(running)} per replica")


def _running_requests(running: float) -> str:
    count = f"{running:,.0f}"
    return f"{count} running request" if count == "1" else f"{count} running requests"


def bottleneck(plan: Plan, evaluation: Evaluation) -> Bottleneck | None:
    """Return what binds a feasible deployment: a missed SLA bound first, else its resource.

    None for an infeasible deployment, whose infeasibility reason explains it already.
    """
    if not evaluation.feasible:
        return None
    metrics = evaluation.metrics
    resource = metrics.get("binding_resource") or "hbm_bandwidth"
    detail = _resource_detail(resource, evaluation.config, metrics)
    missed = missed_sla_bounds(plan, metrics)
    if not missed:
        return Bottleneck(resource, RESOURCE_LABELS[resource], detail, resource)

    from kvplan.formatting import format_seconds

    name, value, limit = missed[0]
    if name == "arrival_rate":
        label = "SLA: arrival rate"
        text = f"it keeps up with at most {value or 0.0:.3g} requests/s of the {limit:g} requests/s"
    else:
        label = f"SLA: {name}"
        metric, _, statistic = name.partition("_")
        title = f"{metric.upper()} {statistic}"
        if value is None:
            text = f"{title} is undefined"
        else:
            text = f"{title} {format_seconds(value)} exceeds the bound of {format_seconds(limit)}"
    return Bottleneck("sla", label, f"{text}; {RESOURCE_LABELS[resource]} binds the engine: {detail}",
                      resource)


def bottleneck_label(plan: Plan, evaluation: Evaluation) -> str | None:
    """Return the short label of :func:`bottleneck`, or None for an infeasible deployment.

    Cheaper than :func:`bottleneck`, which also writes the detail, because the search ranks
    every evaluated deployment after each batch.
    """
    if not evaluation.feasible:
        return None
    missed = missed_sla_bounds(plan, evaluation.metrics)
    if missed:
        name = missed[0][0]
        return "SLA: arrival rate" if name == "arrival_rate" else f"SLA: {name}"
    return RESOURCE_LABELS[evaluation.metrics.get("binding_resource") or "hbm_bandwidth"]


def _scaled(deployment: Deployment, **factors: float) -> Deployment | None:
    """Return ``deployment`` with each named setting multiplied by its factor, or None.

    None when a factor would leave a setting below 1 or not a whole number.
    """
    values = deployment.to_dict()
    for name, factor in factors.items():
        scaled = values[name] * factor
        if scaled < 1 or scaled != int(scaled):
            return None
        values[name] = int(scaled)
    return dataclasses.replace(deployment, **values)


def _fit_kv(deployment: Deployment, metrics: dict[str, Any]) -> Deployment | None:
    """Return ``deployment`` with max_num_seqs lowered to the running count its KV cache holds."""
    capacity = metrics.get("kv_capacity_tokens") or 0.0
    context = metrics.get("running_context_tokens") or 0.0
    if not context:
        return None
    fits = int(capacity / context)
    if fits < 1 or fits >= deployment.max_num_seqs:
        return None
    return dataclasses.replace(deployment, max_num_seqs=fits)


# Neighbouring deployments, each one change of the settings a user controls.
MOVES: dict[str, Callable[[Deployment, dict[str, Any]], Deployment | None]] = {
    "tp_up": lambda d, m: _scaled(d, tp=2),
    "tp_up_same_gpus": lambda d, m: _scaled(d, tp=2, dp=0.5),
    "tp_down_same_gpus": lambda d, m: _scaled(d, tp=0.5, dp=2),
    "pp_up": lambda d, m: _scaled(d, pp=2),
    "pp_up_same_gpus": lambda d, m: _scaled(d, pp=2, tp=0.5),
    "pp_to_tp": lambda d, m: _scaled(d, pp=0.5, tp=2),
    "dp_up": lambda d, m: _scaled(d, dp=2),
    "seqs_up": lambda d, m: _scaled(d, max_num_seqs=2),
    "seqs_down": lambda d, m: _scaled(d, max_num_seqs=0.5),
    "seqs_fit_kv": _fit_kv,
    "budget_up": lambda d, m: _scaled(d, max_num_batched_tokens=2),
    "memory_up": lambda d, m: (dataclasses.replace(d, gpu_memory_utilization=0.95)
                               if d.gpu_memory_utilization < 0.95 else None),
}

# The changes worth trying for each binding resource, and for each missed SLA metric.
RESOURCE_MOVES = {
    "kv_capacity": ("tp_up", "tp_up_same_gpus", "pp_up", "pp_up_same_gpus", "seqs_fit_kv", "seqs_down",
                    "memory_up"),
    "hbm_bandwidth": ("seqs_up", "tp_up", "tp_up_same_gpus", "dp_up"),
    "compute": ("tp_up", "dp_up", "budget_up", "tp_up_same_gpus"),
    "communication": ("tp_down_same_gpus", "pp_to_tp", "pp_up_same_gpus"),
    "engine_overhead": ("tp_down_same_gpus", "dp_up", "seqs_down"),
    "max_num_seqs": ("seqs_up", "dp_up"),
    "token_budget": ("budget_up", "dp_up"),
}
SLA_MOVES = {
    "ttft": ("dp_up", "seqs_up", "budget_up", "tp_up"),
    "tpot": ("seqs_down", "tp_up", "dp_up"),
    "e2e": ("dp_up", "tp_up", "seqs_up", "seqs_down"),
    "arrival_rate": ("dp_up", "tp_up", "seqs_up"),
}

# Alternatives reported per deployment.
DEFAULT_ALTERNATIVES = 3


@dataclasses.dataclass(frozen=True)
class Alternative:
    """A neighbouring deployment evaluated with the same cost model, compared to its origin."""

    move: str
    change: str  # "tp 2 -> 4, dp 4 -> 2"
    evaluation: Evaluation
    sla_met: bool
    objective_value: float | None
    objective_change: float | None  # relative; positive is better, whatever the direction

    def to_dict(self) -> dict[str, Any]:
        metrics = self.evaluation.metrics
        return {
            "move": self.move,
            "change": self.change,
            "config": self.evaluation.config.to_dict(),
            "feasible": self.evaluation.feasible,
            "infeasible_reason": self.evaluation.infeasible_reason,
            "sla_met": self.sla_met,
            "objective_value": self.objective_value,
            "objective_change": self.objective_change,
            "metrics": {key: metrics.get(key) for key in (
                "gpus", "makespan_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu",
                "kv_capacity_tokens", "preemptions", "binding_resource")},
        }


def candidate_moves(plan: Plan, evaluation: Evaluation) -> list[str]:
    """Return the names of the moves that address what binds ``evaluation``, most direct first."""
    found = bottleneck(plan, evaluation)
    if found is None:
        return []
    names: list[str] = []
    for name, _, _ in missed_sla_bounds(plan, evaluation.metrics):
        names += SLA_MOVES[name.split("_")[0] if name != "arrival_rate" else name]
    names += RESOURCE_MOVES[found.resource]
    return list(dict.fromkeys(names))


def _describe_change(before: Deployment, after: Deployment) -> str:
    changes = []
    for name in ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization"):
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            changes.append(f"{name} {old:g} -> {new:g}")
    return ", ".join(changes)


def _relative_change(base: float | None, value: float | None, direction: str) -> float | None:
    if base is None or value is None or base == 0:
        return None
    change = (value - base) / abs(base)
    return -change if direction == "minimize" else change


def propose_changes(model: CostModel, evaluations: Sequence[Evaluation], metric: str, direction: str,
                    limit: int = DEFAULT_ALTERNATIVES) -> list[list[Alternative]]:
    """Evaluate the neighbours that address each deployment's bottleneck and rank them.

    Neighbours stay within the plan's GPU budget, one node's GPUs for TP, and the TP and
    PP degrees the model was built for (so no neighbour recompiles it), and all of them
    are evaluated in one call. For each deployment the ``limit`` best by the plan's
    objective are returned, feasible and SLA-meeting ones first. A change that makes the
    objective worse is kept, because it shows which lever does not help.
    """
    plan = model.plan
    tp_values, pp_values = set(model._tp_values), set(model._pp_values)
    requested_moves: list[list[tuple[str, Deployment]]] = []
    for evaluation in evaluations:
        moves = []
        for name in candidate_moves(plan, evaluation):
            neighbour = MOVES[name](evaluation.config, evaluation.metrics)
            if neighbour is None or neighbour == evaluation.config:
                continue
            if (neighbour.gpus > plan.search.gpu_budget or neighbour.tp > plan.node.gpus_per_node
                    or neighbour.tp not in tp_values or neighbour.pp not in pp_values
                    or any(neighbour == taken for _, taken in moves)):
                continue
            moves.append((name, neighbour))
        requested_moves.append(moves)

    distinct = list(dict.fromkeys(neighbour for moves in requested_moves for _, neighbour in moves))
    evaluated = dict(zip(distinct, model.evaluate(distinct))) if distinct else {}

    proposals = []
    for evaluation, moves in zip(evaluations, requested_moves):
        base = evaluation.metrics.get(metric)
        alternatives = []
        for name, neighbour in moves:
            result = evaluated[neighbour]
            value = result.metrics.get(metric) if result.feasible else None
            sla_met = result.feasible and not missed_sla_bounds(plan, result.metrics)
            alternatives.append(Alternative(name, _describe_change(evaluation.config, neighbour), result,
                                            sla_met, value, _relative_change(base, value, direction)))
        alternatives.sort(key=lambda a: (not a.evaluation.feasible, not a.sla_met,
                                         -(a.objective_change if a.objective_change is not None else -math.inf)))
        proposals.append(alternatives[:limit])
    return proposals
