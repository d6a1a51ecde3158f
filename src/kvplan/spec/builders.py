"""Semantic checks and conversion of validated spec documents into the frozen dataclasses.

Each ``build_*`` function validates its merged document against the kind's schema,
reports every problem through the session, and returns None when the spec cannot be
built. Checks that need more than one value (a median above the maximum, a GPU budget
larger than the node, a missing price for the cost objective) live here.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Mapping
from typing import Any

from kvplan.spec.catalog import CATALOG
from kvplan.spec.distributions import build_length_distribution
from kvplan.spec.errors import ValueProblem
from kvplan.spec.files import MAX_CONFIG_FILE_BYTES, read_text
from kvplan.spec.hf_config import parse_hf_config
from kvplan.spec.limits import MAX_GPUS
from kvplan.spec.session import API_VERSION, LoadSession, Resolved, builtin_node_document, is_clean
from kvplan.spec.sources import Origin, SourceMap, parse_field
from kvplan.spec.types import (
    DeployedConfig,
    EngineSettings,
    FloatRange,
    IntRange,
    LengthDistribution,
    ModelSpec,
    NodeSpec,
    ObjectiveName,
    Plan,
    SearchSpace,
    SLABound,
    WorkloadSpec,
)
from kvplan.spec.units import parse_arrival_rate, parse_bandwidth, parse_flop_rate, parse_size, parse_time
from kvplan.spec.validation import SchemaProblem
from kvplan.spec.yamlpos import JsonPath

OBJECTIVES: Mapping[str, ObjectiveName] = {
    "makespan": "makespan_s",
    "throughput": "output_tokens_per_s",
    "throughput_per_gpu": "output_tokens_per_s_per_gpu",
    "cost": "cost_per_million_tokens",
}

# Engine keys in the spec and the EngineSettings field each one sets, with its parser.
_ENGINE_FIELDS: Mapping[str, tuple[str, Any]] = {
    "gpu_memory_utilization": ("gpu_memory_utilization", float),
    "block_size": ("block_size", int),
    "watermark": ("watermark", float),
    "require_full_prompt_admission": ("require_full_prompt_admission", bool),
    "pp_batches_in_flight": ("pp_batches_in_flight", int),
    "kv_cache_tokens": ("kv_cache_tokens", int),
    "max_num_seqs": ("max_num_seqs", int),
    "max_num_batched_tokens": ("max_num_batched_tokens", int),
    "async_scheduling": ("async_scheduling", bool),
    "cpu_overhead_per_step": ("cpu_overhead_per_step_s", parse_time),
    "cpu_overhead_per_request": ("cpu_overhead_per_request_s", parse_time),
    "kernel_overhead_per_layer": ("kernel_overhead_per_layer_s", parse_time),
    "non_torch_memory": ("non_torch_memory_bytes", parse_size),
    "cuda_graph_memory": ("cuda_graph_memory_bytes", parse_size),
}

# Most candidates of one searched setting. Optuna samples each setting as a categorical
# choice, and its time per trial grows with the number of candidates: 100,000 candidates
# took 55 s where 4,096 took 10 s (kvplan optimize with 200 trials, measured on a 2-core
# machine).
MAX_CANDIDATES = 10_000

# Settings that can be held fixed under engine or searched under search, but not both.
_SEARCHABLE_ENGINE_KEYS = ("max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "watermark",
                           "require_full_prompt_admission")

# Searched settings whose candidates are fractions; the others are integers or, for
# the keys in _BOOLEAN_SEARCH_KEYS, booleans.
_FRACTION_SEARCH_KEYS = ("gpu_memory_utilization", "watermark")
_BOOLEAN_SEARCH_KEYS = ("require_full_prompt_admission",)


def with_kind(resolved: Resolved, kind: str) -> Resolved:
    """Fill in apiVersion and kind for a document written inline in a plan."""
    data, source_map = resolved
    filled = {"apiVersion": API_VERSION, "kind": kind, **data}
    return filled, source_map


# Model


def build_model(session: LoadSession, resolved: Resolved) -> ModelSpec | None:
    data, source_map = resolved
    problems = session.validate(data, source_map, "Model")
    # The config file is checked even when other keys are invalid, so that its problems
    # show up in the same run.
    if "config" not in data or not is_clean(problems, ("config",)):
        return None

    reference = data["config"]
    origin = source_map.origin_for(("config",))
    config_path = os.path.normpath(os.path.join(origin.base_dir, reference))
    outside = session.reference_problem(config_path, reference)
    if outside is not None:
        session.report(source_map, ("config",), f"config file {outside}")
        return None
    config = _read_json_config(session, source_map, reference, config_path)
    if config is None:
        return None
    try:
        architecture = parse_hf_config(config, source=config_path)
    except ValueProblem as problem:
        session.report(source_map, ("config",), problem.message)
        return None
    if problems:
        return None

    weight_dtype = data.get("weight_dtype")
    if weight_dtype is None:
        quantization = config.get("quantization_config")
        is_fp8 = isinstance(quantization, dict) and quantization.get("quant_method") == "fp8"
        weight_dtype = "fp8" if is_fp8 else "bfloat16"
    return ModelSpec(
        name=data["name"],
        config_path=config_path,
        architecture=architecture,
        weight_dtype=weight_dtype,
        kv_cache_dtype=data.get("kv_cache_dtype", "auto"),
        hf_repo=data.get("hf_repo"),
    )


def _read_json_config(
    session: LoadSession, source_map: SourceMap, reference: str, config_path: str
) -> dict[str, Any] | None:
    try:
        config = json.loads(read_text(config_path, MAX_CONFIG_FILE_BYTES, "config.json file", encoding="utf-8"))
    except FileNotFoundError:
        session.report(source_map, ("config",), f"config file {reference!r} not found (looked for {config_path})")
        return None
    except json.JSONDecodeError as error:
        session.report(
            source_map,
            ("config",),
            f"invalid JSON in {config_path} at line {error.lineno}, column {error.colno}: {error.msg}",
        )
        return None
    except RecursionError:
        session.report(source_map, ("config",), f"invalid JSON in {config_path}: arrays or objects are nested too deeply")
        return None
    except (OSError, UnicodeDecodeError) as error:
        session.report(source_map, ("config",), f"cannot read config file {config_path}: {error}")
        return None
    except ValueError as error:
        # json raises ValueError itself for integers of more than 4,300 digits.
        session.report(source_map, ("config",), f"invalid JSON in {config_path}: {error}")
        return None
    if not isinstance(config, dict):
        session.report(source_map, ("config",), f"{config_path} must contain a JSON object")
        return None
    return config


# Node


def build_node(session: LoadSession, resolved: Resolved) -> NodeSpec | None:
    data, source_map = resolved
    if session.validate(data, source_map, "Node"):
        return None

    # The schema formats accept zero, which would divide by zero in the cost model.
    rates = {
        ("gpu_memory",): parse_size(data["gpu_memory"]),
        ("hbm_bandwidth",): parse_bandwidth(data["hbm_bandwidth"]),
        ("nvlink_bandwidth",): parse_bandwidth(data["nvlink_bandwidth"]),
        ("internode_bandwidth",): parse_bandwidth(data["internode_bandwidth"]),
    }
    for dtype, rate in data["peak_flops"].items():
        rates[("peak_flops", dtype)] = parse_flop_rate(rate)
    zero_paths = [path for path, value in rates.items() if value <= 0.0]
    for path in zero_paths:
        value = data[path[0]] if len(path) == 1 else data[path[0]][path[1]]
        session.report(source_map, path, f"must be greater than 0, but got {value!r}")
    if zero_paths:
        return None

    efficiency = data["efficiency"]
    return NodeSpec(
        name=data["name"],
        gpu_name=data["gpu"],
        gpus_per_node=int(data["gpus_per_node"]),
        gpu_memory_bytes=parse_size(data["gpu_memory"]),
        hbm_bandwidth_bytes_per_s=parse_bandwidth(data["hbm_bandwidth"]),
        peak_flops_per_s={dtype: parse_flop_rate(rate) for dtype, rate in data["peak_flops"].items()},
        nvlink_bandwidth_bytes_per_s=parse_bandwidth(data["nvlink_bandwidth"]),
        nvlink_latency_s=parse_time(data["nvlink_latency"]),
        internode_bandwidth_bytes_per_s=parse_bandwidth(data["internode_bandwidth"]),
        internode_latency_s=parse_time(data["internode_latency"]),
        hbm_bandwidth_efficiency=float(efficiency["hbm_bandwidth"]),
        compute_efficiency=float(efficiency["compute"]),
        fp8_compute_efficiency=float(efficiency["fp8_compute"]),
        allreduce_bandwidth_efficiency=float(efficiency["allreduce_bandwidth"]),
        price_per_gpu_hour=float(data["price_per_gpu_hour"]) if "price_per_gpu_hour" in data else None,
    )


# Workload


def build_workload(session: LoadSession, resolved: Resolved) -> WorkloadSpec | None:
    data, source_map = resolved
    problems = session.validate(data, source_map, "Workload")

    lengths: dict[str, LengthDistribution | None] = {}
    for key in ("prompt_tokens", "output_tokens"):
        lengths[key] = None
        if key in data and is_clean(problems, (key,)):
            lengths[key] = _build_distribution(session, source_map, key, data[key])

    if problems or lengths["prompt_tokens"] is None or lengths["output_tokens"] is None:
        return None

    arrival_rate = None
    if "requests" in data:
        mode = "batch"
    elif "arrival_rate" in data:
        mode = "rate"
        arrival_rate = parse_arrival_rate(data["arrival_rate"])
        if arrival_rate <= 0.0:
            session.report(source_map, ("arrival_rate",), f"must be greater than 0, but got {data['arrival_rate']!r}")
            return None
    else:
        mode = "concurrency"
    return WorkloadSpec(
        name=data["name"],
        prompt_tokens=lengths["prompt_tokens"],
        output_tokens=lengths["output_tokens"],
        arrival_mode=mode,
        requests=int(data["requests"]) if "requests" in data else None,
        arrival_rate_per_s=arrival_rate,
        concurrency=int(data["concurrency"]) if "concurrency" in data else None,
    )


def _build_distribution(
    session: LoadSession, source_map: SourceMap, key: str, spec: Mapping[str, Any]
) -> LengthDistribution | None:
    base_dir = source_map.origin_for((key,)).base_dir
    if spec.get("distribution") == "file" and isinstance(spec.get("path"), str):
        lengths_path = os.path.normpath(os.path.join(base_dir, spec["path"]))
        outside = session.reference_problem(lengths_path, spec["path"])
        if outside is not None:
            session.report(source_map, (key, "path"), f"lengths file {outside}")
            return None
    try:
        return build_length_distribution(spec, base_dir=base_dir)
    except ValueProblem as problem:
        session.report(source_map, (key, *parse_field(problem.field)), problem.message)
        return None


# Plan


def build_plan(session: LoadSession, data: Mapping[str, Any], source_map: SourceMap, *, source: str) -> Plan | None:
    """Build a Plan from a plan document, resolving the model, node and workload it names."""
    start = len(session.issues)
    problems = session.validate(data, source_map, "Plan")

    model = _build_reference(session, data, source_map, ("model",), "Model", problems)
    hardware = data.get("hardware")
    node = None
    if isinstance(hardware, dict):
        node = _build_reference(session, hardware, source_map, ("hardware", "node"), "Node", problems)
    workload = _build_reference(session, data, source_map, ("workload",), "Workload", problems)

    engine = None
    if is_clean(problems, ("engine",)):
        engine = _build_engine(data.get("engine", {}))
    sla = None
    if is_clean(problems, ("sla",)):
        sla = _build_sla(session, source_map, data.get("sla", {}))

    # Checks that combine sections run whenever the sections they read are valid, so a
    # problem in one referenced file does not hide the others.
    search_nodes = _build_search_nodes(session, data, source_map, problems)
    search = None
    if (node is not None and search_nodes is not False
            and all(is_clean(problems, (key,)) for key in ("hardware", "engine", "search"))):
        search = _build_search(session, source_map, data, node, int(hardware.get("nodes", 1)), search_nodes)
    objective = None
    if node is not None and workload is not None and is_clean(problems, ("objective",)):
        # With search.node, the deployments run on those node types, not on hardware.node.
        price_node = None if search_nodes else node
        objective = _build_objective(session, source_map, data, price_node, workload)
        if objective is not None and search_nodes:
            objective = _check_search_node_prices(session, source_map, data, search_nodes, objective)
    if model is not None and node is not None:
        _check_compute_dtype(session, source_map, model, node)
    if model is not None and search_nodes:
        for index, search_node in enumerate(search_nodes):
            _check_compute_dtype(session, source_map, model, search_node, ("search", "node", index))
    if model is not None and search is not None:
        _check_expert_parallel(session, source_map, model, search)
    if model is not None and node is not None and search is not None:
        _check_model_fits(session, source_map, model, node, search)
    if engine is not None and workload is not None:
        _check_kv_cache_holds_request(session, source_map, engine, workload)
    deployed = None
    if "deployed" in data and engine is not None and is_clean(problems, ("deployed",)):
        deployed = _build_deployed(data["deployed"], engine)
        if search is not None:
            _check_deployed_settings(session, source_map, deployed, node, search, model)
            _check_deployed_budget(session, source_map, deployed, search)

    built = (model, node, workload, engine, sla, search, objective)
    if problems or any(part is None for part in built) or len(session.issues) > start:
        return None
    return Plan(
        name=data["name"],
        source=source,
        model=model,
        node=node,
        num_nodes=int(hardware.get("nodes", 1)),
        engine=engine,
        workload=workload,
        sla=sla,
        search=search,
        objective=objective,
        deployed=deployed,
    )


def _build_reference(
    session: LoadSession,
    container: Mapping[str, Any],
    source_map: SourceMap,
    path: JsonPath,
    kind: str,
    problems: list[SchemaProblem],
) -> Any:
    """Load and build the document that ``path`` of the plan names or contains inline."""
    value = container.get(path[-1])
    if not isinstance(value, (str, dict)) or not is_clean(problems, path):
        return None
    resolved = resolve_reference(session, value, source_map, path, kind)
    if resolved is None:
        return None
    return BUILDERS[kind](session, resolved)


def resolve_reference(
    session: LoadSession, value: str | dict[str, Any], source_map: SourceMap, path: JsonPath, kind: str
) -> Resolved | None:
    """Resolve a built-in node name, a file path or an inline mapping to a merged document."""
    origin = source_map.origin_for(path)
    chain = (os.path.realpath(origin.source),) if os.path.isfile(origin.source) else ()
    if isinstance(value, dict):
        inline_origin = Origin(origin.source, origin.base_dir, origin.positions, origin.root + path)
        resolved = session.resolve(value, inline_origin, kind, chain)
        return None if resolved is None else with_kind(resolved, kind)

    if kind == "Node" and value in CATALOG:
        return builtin_node_document(value)
    display_path = os.path.normpath(os.path.join(origin.base_dir, value))
    loaded = session.load_referenced_file(display_path, value, source_map, path, kind, role=kind.lower())
    if loaded is None:
        return None
    data, file_origin = loaded
    return session.resolve(data, file_origin, kind, chain + (os.path.realpath(display_path),))


def _build_search_nodes(
    session: LoadSession, data: Mapping[str, Any], source_map: SourceMap, problems: list[SchemaProblem]
) -> tuple[NodeSpec, ...] | None | bool:
    """Build the node types listed under search.node.

    Returns None when the plan lists none, and False when one of them cannot be built
    (the problem is reported).
    """
    spec = data.get("search")
    if not isinstance(spec, dict) or "node" not in spec:
        return None
    if not is_clean(problems, ("search", "node")):
        return False
    nodes: list[NodeSpec] = []
    first_index: dict[str, int] = {}
    valid = True
    for index, value in enumerate(spec["node"]):
        path = ("search", "node", index)
        resolved = resolve_reference(session, value, source_map, path, "Node")
        built = None if resolved is None else build_node(session, resolved)
        if built is None:
            valid = False
            continue
        if built.name in first_index:
            session.report(
                source_map,
                path,
                f"node name {built.name!r} is already used by search.node[{first_index[built.name]}]; give each"
                " node type its own name (set name: in the node spec)",
            )
            valid = False
            continue
        first_index[built.name] = index
        nodes.append(built)
    return tuple(nodes) if valid else False


def _build_engine(spec: Mapping[str, Any]) -> EngineSettings:
    settings = {}
    for key, value in spec.items():
        field, convert = _ENGINE_FIELDS[key]
        settings[field] = convert(value)
    return EngineSettings(**settings)


def _build_sla(session: LoadSession, source_map: SourceMap, spec: Mapping[str, Any]) -> tuple[SLABound, ...] | None:
    bounds = []
    valid = True
    for metric, statistics in spec.items():
        for statistic, text in statistics.items():
            seconds = parse_time(text)
            if seconds <= 0.0:
                session.report(source_map, ("sla", metric, statistic), f"must be greater than 0, but got {text!r}")
                valid = False
                continue
            bounds.append(SLABound(metric=metric, statistic=statistic, max_s=seconds))
    return tuple(bounds) if valid else None


def _build_search(
    session: LoadSession,
    source_map: SourceMap,
    data: Mapping[str, Any],
    node: NodeSpec,
    num_nodes: int,
    search_nodes: tuple[NodeSpec, ...] | None = None,
) -> SearchSpace | None:
    spec = data.get("search", {})
    engine = data.get("engine", {})
    start = len(session.issues)

    budget = _node_budget(session, source_map, spec, node, num_nodes, ("hardware", "nodes"), "")
    if budget is None:
        return None

    parallel: dict[str, tuple[int, ...] | None] = {}
    for key in ("dp", "tp", "pp"):
        values = spec.get(key)
        parallel[key] = None if values is None else tuple(int(value) for value in values)
        for index, value in enumerate(parallel[key] or ()):
            if value > budget:
                session.report(source_map, ("search", key, index), f"{key} {value} exceeds gpu_budget {budget}")
    if all(parallel[key] is not None for key in parallel):
        smallest = {key: min(parallel[key]) for key in parallel}
        needed = smallest["dp"] * smallest["tp"] * smallest["pp"]
        if needed > budget:
            session.report(
                source_map,
                ("search",),
                f"no combination of dp, tp and pp fits gpu_budget {budget}: the smallest,"
                f" dp {smallest['dp']} x tp {smallest['tp']} x pp {smallest['pp']}, needs {needed} GPUs",
                at_key=True,
            )
    layouts = _count_layouts(parallel, budget, node.gpus_per_node, stop_after=MAX_CANDIDATES)
    if layouts > MAX_CANDIDATES:
        session.report(
            source_map,
            ("search",),
            f"the dp, tp and pp lists give more than {MAX_CANDIDATES:,} combinations within gpu_budget"
            f" {budget}, too many for a search to sample; shorten the lists",
            at_key=True,
        )

    choices: dict[str, Any] = {}
    if search_nodes:
        choices["node"] = search_nodes
        choices["node_gpu_budgets"] = _search_node_budgets(session, source_map, spec, search_nodes, num_nodes)
    for key in ("kv_cache_dtype", "enable_expert_parallel"):
        if key in spec:
            choices[key] = tuple(spec[key])
    for key in _SEARCHABLE_ENGINE_KEYS:
        if key in spec and key in engine:
            session.report(
                source_map,
                ("engine", key),
                f"{key} is set under both engine and search; keep it under search to search it,"
                " or under engine to hold it fixed",
                at_key=True,
            )
        elif key in spec:
            converted = _choices(session, source_map, ("search", key), spec[key])
            if converted is not None:
                choices[key] = converted
        elif key in engine and key not in _OPTIONAL_SEARCH_KEYS:
            # A setting fixed under engine is the only candidate of the search.
            convert = float if key in _FRACTION_SEARCH_KEYS else int
            choices[key] = (convert(engine[key]),)

    if len(session.issues) > start:
        return None
    return SearchSpace(gpu_budget=budget, dp=parallel["dp"], tp=parallel["tp"], pp=parallel["pp"], **choices)


# Searched settings that stay None, the plan's own setting, unless search lists them.
_OPTIONAL_SEARCH_KEYS = ("watermark", "require_full_prompt_admission")


def _search_node_budgets(
    session: LoadSession, source_map: SourceMap, spec: Mapping[str, Any], nodes: tuple[NodeSpec, ...], num_nodes: int
) -> tuple[int, ...]:
    """Return the GPU budget of each node type: search.gpu_budget, or all GPUs of its nodes."""
    budgets = []
    for index, node in enumerate(nodes):
        budget = _node_budget(session, source_map, spec, node, num_nodes, ("search", "node", index),
                              f" (search.node[{index}])")
        budgets.append(int(spec.get("gpu_budget", num_nodes * node.gpus_per_node)) if budget is None else budget)
    return tuple(budgets)


def _node_budget(session: LoadSession, source_map: SourceMap, spec: Mapping[str, Any], node: NodeSpec,
                 num_nodes: int, nodes_path: tuple, where: str) -> int | None:
    """Return the GPU budget on ``num_nodes`` nodes of ``node``: search.gpu_budget, or all their GPUs.

    Reports a budget above those GPUs, and returns None, after reporting it at
    ``nodes_path``, when the nodes hold more GPUs than kvplan accepts.
    """
    total_gpus = num_nodes * node.gpus_per_node
    if total_gpus > MAX_GPUS:
        session.report(
            source_map,
            nodes_path,
            f"{num_nodes:,} nodes of {node.gpus_per_node:,} GPUs make {total_gpus:,} GPUs, above the limit of"
            f" {MAX_GPUS:,}; lower hardware.nodes",
        )
        return None
    budget = int(spec.get("gpu_budget", total_gpus))
    if budget > total_gpus:
        session.report(
            source_map,
            ("search", "gpu_budget"),
            f"gpu_budget {budget} exceeds the {total_gpus} GPUs of {num_nodes} {node.name} node"
            f"{'s' if num_nodes != 1 else ''}{where}; lower it or add nodes under hardware",
        )
    return budget


def _count_layouts(
    parallel: Mapping[str, tuple[int, ...] | None], budget: int, gpus_per_node: int, *, stop_after: int
) -> int:
    """Count the (dp, tp, pp) combinations whose product fits ``budget``, stopping above ``stop_after``.

    Unset lists default to powers of two as in ``kvplan.optimizer.space``. Counting stops
    early, so lists of thousands of values cost no more than ``stop_after`` steps.
    """
    powers = _powers_of_two_up_to(budget)
    dp_values = sorted(set(parallel["dp"] or powers))
    tp_values = sorted(set(parallel["tp"] or _powers_of_two_up_to(min(budget, gpus_per_node))))
    pp_values = sorted(set(parallel["pp"] or powers))
    count = 0
    for dp in dp_values:
        for tp in tp_values:
            fitting = bisect.bisect_right(pp_values, budget // (dp * tp))
            if fitting == 0:
                break
            count += fitting
            if count > stop_after:
                return count
    return count


def _choices(session: LoadSession, source_map: SourceMap, path: JsonPath, value: Any) -> Any:
    is_fraction = path[-1] in _FRACTION_SEARCH_KEYS
    convert = float if is_fraction else int
    if path[-1] in _BOOLEAN_SEARCH_KEYS:
        convert = bool
    if isinstance(value, list):
        return tuple(convert(item) for item in value)
    if not isinstance(value, dict):
        return (convert(value),)

    low, high = value["min"], value["max"]
    if low > high:
        session.report(source_map, path + ("max",), f"max {high} is below min {low}")
        return None
    step = value.get("step")
    # A float step such as 1e-300 makes the count overflow to inf, which still compares.
    candidates = (high - low) / step + 1 if step is not None else 0
    if candidates > MAX_CANDIDATES:
        session.report(
            source_map,
            path + ("step",),
            f"the range from {low} to {high} in steps of {step} has {candidates:,.0f} candidates,"
            f" more than the {MAX_CANDIDATES:,} a search can sample; raise step",
        )
        return None
    if is_fraction:
        return FloatRange(low=float(low), high=float(high), step=step)
    log = bool(value.get("log", False))
    if log and step is not None and step != 1:
        session.report(source_map, path + ("step",), "a log-scaled range cannot have a step; remove step or set log: false")
        return None
    if not log and step is None and high - low + 1 > MAX_CANDIDATES:
        session.report(
            source_map,
            path,
            f"the range from {low} to {high} has {high - low + 1:,} candidates, more than the {MAX_CANDIDATES:,}"
            " a search can sample; add a step or set log: true",
        )
        return None
    return IntRange(low=int(low), high=int(high), log=log, step=int(step or 1))


def _build_objective(
    session: LoadSession, source_map: SourceMap, data: Mapping[str, Any], node: NodeSpec | None,
    workload: WorkloadSpec
) -> ObjectiveName | None:
    """Return the plan's objective.

    ``node`` is the node whose price the cost objective needs, or None to skip that check.
    """
    name = data.get("objective")
    if name is None:
        name = "makespan" if workload.arrival_mode == "batch" else "throughput_per_gpu"
        return OBJECTIVES[name]
    if name == "makespan" and workload.arrival_mode != "batch":
        mode_key = "arrival_rate" if workload.arrival_mode == "rate" else "concurrency"
        session.report(
            source_map,
            ("objective",),
            f"objective makespan needs an offline batch (requests: N), but workload {workload.name!r}"
            f" uses {mode_key}; choose throughput, throughput_per_gpu or cost",
        )
        return None
    if name == "cost" and node is not None and node.price_per_gpu_hour is None:
        session.report(
            source_map,
            ("objective",),
            f"objective cost needs a GPU price, but node {node.name!r} has no price_per_gpu_hour;"
            " set it in the node (for example base: h200-sxm-8 with price_per_gpu_hour: 3.5)",
        )
        return None
    return OBJECTIVES[name]


def _check_search_node_prices(
    session: LoadSession,
    source_map: SourceMap,
    data: Mapping[str, Any],
    nodes: tuple[NodeSpec, ...],
    objective: ObjectiveName,
) -> ObjectiveName | None:
    """Report each search.node type without a price when the objective is cost."""
    if objective != "cost_per_million_tokens":
        return objective
    unpriced = [index for index, node in enumerate(nodes) if node.price_per_gpu_hour is None]
    for index in unpriced:
        session.report(
            source_map,
            ("search", "node", index),
            f"objective cost needs a GPU price for every node type, but node {nodes[index].name!r} has no"
            " price_per_gpu_hour; set it in the node (for example base: h100-sxm-8 with price_per_gpu_hour: 2.5)",
        )
    return None if unpriced else objective


def _check_expert_parallel(session: LoadSession, source_map: SourceMap, model: ModelSpec, search: SearchSpace) -> None:
    """Report enable_expert_parallel: true for a model without experts."""
    if model.architecture.moe is not None or not search.enable_expert_parallel:
        return
    if True in search.enable_expert_parallel:
        index = search.enable_expert_parallel.index(True)
        session.report(
            source_map,
            ("search", "enable_expert_parallel", index),
            f"model {model.name!r} is dense (no MoE experts), so expert parallelism does not apply;"
            " remove search.enable_expert_parallel or list only false",
        )


def _check_compute_dtype(
    session: LoadSession, source_map: SourceMap, model: ModelSpec, node: NodeSpec, path: JsonPath = ("hardware", "node")
) -> None:
    # The cost model runs the matrix multiplications in the weight dtype.
    if model.weight_dtype not in node.peak_flops_per_s:
        session.report(
            source_map,
            path,
            f"node {node.name!r} has no peak_flops entry for {model.weight_dtype}, the weight dtype of"
            f" model {model.name!r}",
        )


def _check_kv_cache_holds_request(session: LoadSession, source_map: SourceMap, engine: EngineSettings,
                                  workload: WorkloadSpec) -> None:
    """Report an ``engine.kv_cache_tokens`` too small for one longest request, or for one block.

    vLLM rejects a request whose prompt and output cannot fit in the whole KV cache, so
    no deployment of such a plan could serve the workload.
    """
    capacity = engine.kv_cache_tokens
    if capacity is None:
        return
    prompt = workload.prompt_tokens.max_tokens
    output = workload.output_tokens.max_tokens
    needed = max(prompt + output, engine.block_size or 0)
    if capacity < needed:
        session.report(
            source_map,
            ("engine", "kv_cache_tokens"),
            f"a KV cache of {capacity:,} tokens cannot hold one longest request of the workload ({prompt + output:,}"
            f" tokens: prompt {prompt:,} + output {output:,}); set kv_cache_tokens to at least {needed:,}, or"
            " remove it to size the KV cache from GPU memory",
        )


def _check_model_fits(
    session: LoadSession, source_map: SourceMap, model: ModelSpec, node: NodeSpec, search: SearchSpace
) -> None:
    """Report a model whose weights fit on no GPU of the node at any split the search allows.

    Only the weights are compared with the usable memory, so a plan is rejected here only
    when no deployment can run it; the activation and runtime reserves are left to the
    cost model, which marks the deployments they exclude infeasible.
    """
    # Imported here because kvplan.costmodel imports kvplan.spec.types, which loads this
    # package first.
    from kvplan.costmodel.architecture import parallel_layout

    smallest_dp = min(search.dp) if search.dp else 1
    tp_values = search.tp or _powers_of_two_up_to(min(search.gpu_budget, node.gpus_per_node))
    pp_values = search.pp or _powers_of_two_up_to(search.gpu_budget)
    lightest: tuple[float, int, int] | None = None
    for tp in tp_values:
        for pp in pp_values:
            if tp > node.gpus_per_node or smallest_dp * tp * pp > search.gpu_budget:
                continue
            layout = parallel_layout(model, tp, pp)
            if not layout.valid:
                continue
            bytes_per_gpu = max(stage.weight_bytes for stage in layout.stages)
            if lightest is None or bytes_per_gpu < lightest[0]:
                lightest = (bytes_per_gpu, tp, pp)
    if lightest is None:
        # No split is valid at all, and the cost model gives the reason for each one.
        return

    utilization = _largest_utilization(search.gpu_memory_utilization)
    usable_bytes = node.gpu_memory_bytes * utilization
    bytes_per_gpu, tp, pp = lightest
    if bytes_per_gpu <= usable_bytes:
        return
    limits = f"gpu_budget {search.gpu_budget}"
    if search.dp or search.tp or search.pp:
        limits += " and the search's dp, tp and pp values"
    remedy = "raise gpu_budget or hardware.nodes"
    if model.weight_dtype != "fp8":
        remedy += ", or serve the weights in fp8"
    session.report(
        source_map,
        ("model",),
        f"model {model.name!r} does not fit node {node.name!r}: its weights need {_gigabytes(bytes_per_gpu)}"
        f" per GPU even at tp {tp} x pp {pp}, the lightest split within {limits}, but"
        f" gpu_memory_utilization {utilization:g} leaves {_gigabytes(usable_bytes)} of each"
        f" {_gigabytes(node.gpu_memory_bytes)} GPU; {remedy}",
    )


def _gigabytes(size_bytes: float) -> str:
    """Format a size in GB, with three significant digits and an exponent above 10^7 GB."""
    gigabytes = size_bytes / 1e9
    return f"{gigabytes:.1f} GB" if gigabytes < 1e7 else f"{gigabytes:.3g} GB"


def _powers_of_two_up_to(limit: int) -> tuple[int, ...]:
    values = []
    value = 1
    while value <= limit:
        values.append(value)
        value *= 2
    return tuple(values)


def _largest_utilization(values: tuple[float, ...] | FloatRange) -> float:
    if isinstance(values, FloatRange):
        return values.high
    return max(values)


def _build_deployed(spec: Mapping[str, Any], engine: EngineSettings) -> DeployedConfig:
    return DeployedConfig(
        dp=int(spec["dp"]),
        tp=int(spec["tp"]),
        pp=int(spec["pp"]),
        max_num_seqs=int(spec.get("max_num_seqs", engine.max_num_seqs)),
        max_num_batched_tokens=int(spec.get("max_num_batched_tokens", engine.max_num_batched_tokens)),
        gpu_memory_utilization=float(spec.get("gpu_memory_utilization", engine.gpu_memory_utilization)),
        node=spec.get("node"),
        kv_cache_dtype=spec.get("kv_cache_dtype"),
        watermark=float(spec["watermark"]) if "watermark" in spec else None,
        require_full_prompt_admission=spec.get("require_full_prompt_admission"),
        enable_expert_parallel=spec.get("enable_expert_parallel"),
    )


def _check_deployed_settings(
    session: LoadSession, source_map: SourceMap, deployed: DeployedConfig, node: NodeSpec, search: SearchSpace,
    model: ModelSpec | None
) -> None:
    """Report a deployed node name that is no node type of the plan, and expert parallelism on a dense model."""
    names = list(dict.fromkeys([node.name, *(search_node.name for search_node in search.node or ())]))
    if deployed.node is not None and deployed.node not in names:
        session.report(
            source_map,
            ("deployed", "node"),
            f"node {deployed.node!r} is not a node type of this plan; use one of {', '.join(names)}"
            " (the name of hardware.node or of a search.node entry)",
        )
    if deployed.enable_expert_parallel and model is not None and model.architecture.moe is None:
        session.report(
            source_map,
            ("deployed", "enable_expert_parallel"),
            f"model {model.name!r} is dense (no MoE experts), so expert parallelism does not apply;"
            " remove enable_expert_parallel or set it to false",
        )


def _check_deployed_budget(
    session: LoadSession, source_map: SourceMap, deployed: DeployedConfig, search: SearchSpace
) -> None:
    # A deployment on one of the search.node types has that type's budget.
    budgets = {node.name: budget for node, budget in zip(search.node or (), search.node_gpu_budgets or ())}
    budget = budgets.get(deployed.node, search.gpu_budget)
    if deployed.gpus > budget:
        session.report(
            source_map,
            ("deployed",),
            f"the deployed dp {deployed.dp} x tp {deployed.tp} x pp {deployed.pp} uses {deployed.gpus} GPUs,"
            f" more than gpu_budget {budget}; correct deployed, or raise search.gpu_budget"
            " (and hardware.nodes) to the GPUs it uses",
            at_key=True,
        )


BUILDERS = {
    "Model": build_model,
    "Node": build_node,
    "Workload": build_workload,
}
