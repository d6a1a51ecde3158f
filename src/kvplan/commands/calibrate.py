"""``kvplan calibrate``: fit the node's and engine's efficiency constants to benchmark results.

Result files are those ``vllm bench serve --save-result`` writes (one JSON object, or
one per line with --append-result), or CSV files of the same summary metrics or of
measured scheduler steps. Each result is matched to the deployment and workload it
measured through the ``kvplan_*`` keys that ``kvplan bench-plan`` adds with
``--metadata``, looked up in the bench-plan manifest when one is given. The fit
(:mod:`kvplan.costmodel.calibration`) writes a Node spec with the fitted values and a
comment block recording the results, the errors before and after, and the date.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvplan.costmodel.calibration import CalibrationResult, Observation, StepObservation
    from kvplan.spec.types import Deployment, Plan

FORMATS = ("table", "json")

# Columns of a step CSV: one measured scheduler step per row.
STEP_COLUMNS = ("tp", "pp", "decode_requests", "context_tokens", "prefill_tokens", "step_time_ms")


# The constants ``--fit`` accepts: ``kvplan.costmodel.calibration.CONSTANT_NAMES``,
# repeated here so that building the parser does not import JAX.
CONSTANT_NAMES = ("hbm_bandwidth", "compute", "fp8_compute", "nvlink_latency", "cpu_overhead_per_step")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="fit the node's efficiency constants to vllm bench serve results",
        description="Fit the achieved HBM bandwidth and FLOP/s fractions, the all-reduce latency and the "
                    "engine's per-step overhead to measured results by least squares through the cost "
                    "model, and write a Node spec with the fitted values.",
    )
    parser.add_argument("plan", metavar="PLAN", help="path of the Plan spec the benchmarks came from")
    parser.add_argument("--results", nargs="+", required=True, metavar="FILE",
                        help="result files: vllm bench serve --save-result JSON, or CSV of summary metrics "
                             f"or of steps ({', '.join(STEP_COLUMNS)})")
    parser.add_argument("--manifest", metavar="FILE", default=None,
                        help="manifest.json of kvplan bench-plan, to match results by their kvplan_run key")
    parser.add_argument("--holdout", type=float, default=0.0, metavar="FRACTION",
                        help="fraction of the results kept out of the fit to measure its error (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --holdout split (default: 0)")
    parser.add_argument("--fit", default=",".join(CONSTANT_NAMES), metavar="NAME,...",
                        help=f"constants to fit (default: all of {', '.join(CONSTANT_NAMES)})")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help="Node spec to write (default: NODE-calibrated.yaml in the current folder)")
    parser.add_argument("--plan-output", metavar="FILE", default=None,
                        help="also write a copy of the plan that uses the written node and the fitted "
                             "engine constants; it must be in the plan's folder so its paths still resolve")
    parser.add_argument("--format", choices=FORMATS, default="table", help="report format (default: table)")
    parser.set_defaults(handler=run)


# ---------------------------------------------------------------------------------------
# Reading results
# ---------------------------------------------------------------------------------------


def _invalid(path: str, message: str):
    from kvplan.spec.errors import KvplanError

    return KvplanError(f"{path}: {message}")


def read_result_records(path: str) -> list[dict[str, Any]]:
    """Return the records of one result file: JSON objects, or CSV rows as dicts of strings."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise _invalid(path, f"failed to read the result file: {error}") from None
    if path.lower().endswith(".csv"):
        rows = list(csv.DictReader(text.splitlines()))
        if not rows:
            raise _invalid(path, "the CSV file has no data rows")
        return rows
    try:
        document = json.loads(text)
        records = document if isinstance(document, list) else [document]
    except ValueError:
        # vllm bench serve --append-result writes one JSON object per line.
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as error:
                raise _invalid(path, f"invalid JSON on line {number}: {error.msg}; expected the file "
                                     "vllm bench serve --save-result writes") from None
    if not records:
        raise _invalid(path, "the file contains no result")
    for record in records:
        if not isinstance(record, dict):
            raise _invalid(path, f"expected a JSON object per result, but got {type(record).__name__}")
    return records


def _number(path: str, record: dict[str, Any], key: str, *, required: bool = True) -> float | None:
    value = record.get(key)
    if value is None or value == "":
        if required:
            raise _invalid(path, f"missing {key!r}")
        return None
    if isinstance(value, bool):
        raise _invalid(path, f"{key} must be a number, but got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _invalid(path, f"{key} must be a number, but got {value!r}") from None
    if math.isnan(number):
        raise _invalid(path, f"{key} must be a number, but got {value!r}")
    return number


def _count(path: str, record: dict[str, Any], key: str, *, required: bool = True) -> int | None:
    number = _number(path, record, key, required=required)
    if number is None:
        return None
    if not math.isfinite(number) or not number.is_integer() or number < 1:
        raise _invalid(path, f"{key} must be a positive whole number, but got {record.get(key)!r}")
    return int(number)


def _manifest_runs(path: str | None) -> dict[str, dict[str, Any]]:
    from kvplan.commands.bench_plan import MANIFEST_KIND

    if path is None:
        return {}
    records = read_result_records(path)
    manifest = records[0]
    if manifest.get("kind") != MANIFEST_KIND or not isinstance(manifest.get("runs"), list):
        raise _invalid(path, f"not a kvplan bench-plan manifest (expected kind {MANIFEST_KIND!r} and a runs list)")
    runs = {}
    for run in manifest["runs"]:
        if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
            raise _invalid(path, "every run of the manifest needs a run_id")
        runs[run["run_id"]] = run
    return runs


def _deployment(path: str, plan: Plan, record: dict[str, Any], run: dict[str, Any] | None) -> Deployment:
    from kvplan.commands.bench_plan import DEPLOYMENT_KEYS, METADATA_PREFIX
    from kvplan.optimizer.search import _as_deployment
    from kvplan.spec.errors import KvplanError

    if run is not None:
        config = dict(run["deployment"])
    else:
        config = {}
        for key in DEPLOYMENT_KEYS:
            name = METADATA_PREFIX + key
            if key == "gpu_memory_utilization":
                value = _number(path, record, name, required=False)
            else:
                value = _count(path, record, name, required=key in ("dp", "tp", "pp"))
            if value is not None:
                config[key] = value
    try:
        return _as_deployment(plan, config)
    except KvplanError as error:
        raise _invalid(path, f"invalid deployment: {error}") from None


def _workload(path: str, record: dict[str, Any], run: dict[str, Any] | None):
    from kvplan.commands.bench_plan import MAX_RANGE_RATIO, METADATA_PREFIX, BenchWorkload

    source = run["workload"] if run is not None else {
        key: record.get(METADATA_PREFIX + key) for key in ("input_len", "output_len", "range_ratio")
    }
    input_len = _count(path, source, "input_len")
    output_len = _count(path, source, "output_len")
    ratio = _number(path, source, "range_ratio", required=False) or 0.0
    if not 0.0 <= ratio <= MAX_RANGE_RATIO:
        raise _invalid(path, f"range_ratio must be in [0, {MAX_RANGE_RATIO}], but got {ratio}")

    num_prompts = _count(path, record, "num_prompts")
    if "request_rate" not in record:
        # vllm bench serve --save-result always writes it; without it a rate run would be
        # read as an offline batch.
        raise _invalid(path, "missing 'request_rate'; vllm bench serve --save-result writes it (inf when all "
                             "requests are sent at once), so add it to the result")
    rate_value = record["request_rate"]
    rate = None if rate_value in ("inf", "", None) else _number(path, record, "request_rate")
    if rate is not None and (math.isinf(rate)):
        rate = None
    if rate is not None and rate <= 0:
        raise _invalid(path, f"request_rate must be positive or inf, but got {rate_value!r}")
    concurrency = _count(path, record, "max_concurrency", required=False)
    if rate is not None and concurrency is not None:
        raise _invalid(path, "the run sets both request_rate and max_concurrency, which the cost model cannot "
                             "combine; benchmark with one of them")
    return BenchWorkload(input_len, output_len, ratio, num_prompts, rate, concurrency)


def _measured(path: str, record: dict[str, Any], mode: str) -> dict[str, float]:
    from kvplan.costmodel.calibration import METRICS

    measured = {}
    for name in METRICS:
        if name == "duration" and mode != "batch":
            # Rate and concurrency runs include a ramp-up and a drain that the
            # steady-state model does not predict.
            continue
        value = _number(path, record, name, required=False)
        if value is None:
            continue
        if not math.isfinite(value) or value <= 0:
            raise _invalid(path, f"{name} must be a positive number, but got {record.get(name)!r}")
        measured[name] = value
    if not measured:
        raise _invalid(path, f"no measured metric; expected at least one of {', '.join(METRICS)}")
    return measured


def _result_plan(path: str, plan: Plan, record: dict[str, Any], plans: dict[str, Plan]) -> Plan:
    """Return the plan a result names with ``kvplan_plan`` (relative to the result file), else ``plan``.

    Results of other models on the same node can so be fitted together; their plan must
    use the same node as ``plan``.
    """
    from kvplan.commands.bench_plan import METADATA_PREFIX
    from kvplan.spec import load_plan

    name = record.get(METADATA_PREFIX + "plan") or record.get("plan")
    if not name:
        return plan
    if not isinstance(name, str):
        raise _invalid(path, f"{METADATA_PREFIX}plan must be the path of a Plan spec, but got {name!r}")
    plan_path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), name))
    if plan_path not in plans:
        plans[plan_path] = load_plan(plan_path)
    other = plans[plan_path]
    if other.node != plan.node:
        raise _invalid(path, f"the result's plan {name} uses node {other.node.name!r}, but calibration fits the "
                             f"node of the plan given on the command line ({plan.node.name!r}) with other values; "
                             "use plans with the same node")
    return other


def observations_from_record(path: str, index: int, plan: Plan, record: dict[str, Any],
                             runs: dict[str, dict[str, Any]], plans: dict[str, Plan] | None = None) -> Observation:
    """Match one result to its deployment and workload and return it as an Observation."""
    from kvplan.commands.bench_plan import METADATA_PREFIX, bench_plan_variant
    from kvplan.costmodel.calibration import Observation

    run_id = record.get(METADATA_PREFIX + "run") or record.get("run")
    run = runs.get(run_id) if isinstance(run_id, str) else None
    if runs and run is None and isinstance(run_id, str):
        raise _invalid(path, f"run {run_id!r} is not in the manifest; pass the manifest bench-plan wrote for it")
    if run is None and METADATA_PREFIX + "tp" not in record and "tp" not in record:
        raise _invalid(path, "the result does not say which deployment it measured: run the benchmark with "
                             f"--metadata {METADATA_PREFIX}run=ID (from kvplan bench-plan, with --manifest) or "
                             f"--metadata {METADATA_PREFIX}dp=.. {METADATA_PREFIX}tp=.. {METADATA_PREFIX}pp=.. "
                             f"{METADATA_PREFIX}input_len=.. {METADATA_PREFIX}output_len=.. "
                             f"{METADATA_PREFIX}range_ratio=..")
    if run is None and METADATA_PREFIX + "tp" not in record:
        # A CSV row names its columns without the prefix.
        record = {**record, **{METADATA_PREFIX + key: value for key, value in record.items()}}

    completed = _count(path, record, "completed", required=False)
    failed = _number(path, record, "failed", required=False)
    num_prompts = _count(path, record, "num_prompts")
    if (failed or 0) > 0 or (completed is not None and completed < num_prompts):
        raise _invalid(path, f"{completed} of {num_prompts} requests completed ({failed or 0:g} failed), so the "
                             "metrics do not describe the planned workload; fix the failures and rerun")

    plan = _result_plan(path, plan, record, plans if plans is not None else {})
    bench = _workload(path, record, run)
    deployment = _deployment(path, plan, record, run)
    variant = bench_plan_variant(plan, bench)
    label = run_id if isinstance(run_id, str) else f"{os.path.basename(path)}#{index + 1}"
    return Observation(label, variant, deployment, _measured(path, record, bench.arrival_mode()), source=path)


def _step_observation(path: str, index: int, plan: Plan, row: dict[str, Any]) -> StepObservation:
    from kvplan.costmodel.calibration import StepObservation

    tp = _count(path, row, "tp")
    pp = _count(path, row, "pp")
    decodes = _number(path, row, "decode_requests")
    context = _number(path, row, "context_tokens")
    prefill = _number(path, row, "prefill_tokens", required=False) or 0.0
    step = _number(path, row, "step_time_ms")
    for name, value in (("decode_requests", decodes), ("context_tokens", context), ("prefill_tokens", prefill)):
        if not math.isfinite(value) or value < 0:
            raise _invalid(path, f"row {index + 1}: {name} must be a non-negative number, but got {value}")
    if decodes + prefill <= 0:
        raise _invalid(path, f"row {index + 1}: a step needs decode_requests or prefill_tokens above 0")
    if not math.isfinite(step) or step <= 0:
        raise _invalid(path, f"row {index + 1}: step_time_ms must be a positive number, but got {step}")
    if tp * pp > plan.node.gpus_per_node * plan.num_nodes:
        raise _invalid(path, f"row {index + 1}: tp x pp = {tp * pp} exceeds the plan's GPUs")
    label = f"{os.path.basename(path)}#{index + 1}"
    return StepObservation(label, plan, tp, pp, decodes, context, prefill, step)


def load_observations(plan: Plan, paths: list[str], manifest: str | None) -> list[Observation | StepObservation]:
    runs = _manifest_runs(manifest)
    plans: dict[str, Plan] = {}
    observations: list[Observation | StepObservation] = []
    for path in paths:
        records = read_result_records(path)
        is_steps = path.lower().endswith(".csv") and "step_time_ms" in records[0]
        for index, record in enumerate(records):
            if is_steps:
                observations.append(_step_observation(path, index, plan, record))
            else:
                observations.append(observations_from_record(path, index, plan, record, runs, plans))
    labels = [observation.label for observation in observations]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        from kvplan.spec.errors import KvplanError

        raise KvplanError(f"results {', '.join(duplicates)} appear more than once; pass each result file once")
    return observations


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def _quantity(value: float, unit: str) -> str:
    # 12 significant digits: exact for the catalog's values, and far below any measurement's precision.
    return f"{float(value):.12g}{unit}"


def node_document(plan: Plan, fitted: dict[str, float], name: str) -> dict[str, Any]:
    """Return a complete Node spec of the plan's node with the fitted constants."""
    node = plan.node
    document: dict[str, Any] = {
        "apiVersion": "kvplan/v1",
        "kind": "Node",
        "name": name,
        "gpu": node.gpu_name,
        "gpus_per_node": node.gpus_per_node,
        "gpu_memory": f"{int(node.gpu_memory_bytes)}B" if float(node.gpu_memory_bytes).is_integer()
        else _quantity(node.gpu_memory_bytes, "B"),
        "hbm_bandwidth": _quantity(node.hbm_bandwidth_bytes_per_s, "B/s"),
        "peak_flops": {dtype: _quantity(rate / 1e12, "TFLOP/s") for dtype, rate in node.peak_flops_per_s.items()},
        "nvlink_bandwidth": _quantity(node.nvlink_bandwidth_bytes_per_s, "B/s"),
        "nvlink_latency": _quantity(fitted["nvlink_latency"], "s"),
        "internode_bandwidth": _quantity(node.internode_bandwidth_bytes_per_s, "B/s"),
        "internode_latency": _quantity(node.internode_latency_s, "s"),
        "efficiency": {
            "hbm_bandwidth": round(fitted["hbm_bandwidth"], 6),
            "compute": round(fitted["compute"], 6),
            "fp8_compute": round(fitted["fp8_compute"], 6),
            "allreduce_bandwidth": node.allreduce_bandwidth_efficiency,
        },
    }
    if node.price_per_gpu_hour is not None:
        document["price_per_gpu_hour"] = node.price_per_gpu_hour
    return document


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %" if math.isfinite(value) else "n/a"


def _error_lines(before, after) -> list[str]:
    after_by_metric = {error.metric: error for error in after}
    lines = []
    for error in before:
        fitted = after_by_metric[error.metric]
        lines.append(f"  {error.metric:<18} {_percent(error.mean_abs_relative_error):>9} -> "
                     f"{_percent(fitted.mean_abs_relative_error):>9}  ({error.count} result(s))")
    return lines


def comment_block(plan: Plan, result: CalibrationResult, observations, paths: list[str], date: str) -> list[str]:
    from kvplan.costmodel.calibration import CONSTANTS

    lines = [f"Written by kvplan calibrate on {date} for plan {plan.name} ({plan.source}).",
             f"Base node: {plan.node.name}. Result files: {', '.join(paths)}."]
    lines.append("Results used in the fit:")
    held = set(result.holdout_labels)
    for observation in observations:
        role = "held out" if observation.label in held else "fitted"
        lines.append(f"  {observation.label} ({role}): {_describe_observation(observation)}")
    lines.append("Constants (before -> after):")
    for constant in CONSTANTS:
        status = ("fitted" if constant.name in result.fitted_names
                  else f"held: {result.undetermined.get(constant.name, 'not in --fit')}")
        if constant.name in result.at_bound:
            status += f", {result.at_bound[constant.name]}"
        lines.append(f"  {constant.section}.{constant.name}: {result.initial[constant.name]:.6g} -> "
                     f"{result.fitted[constant.name]:.6g} ({status})")
    lines.extend(_confounded_lines(result))
    lines.append("Error per metric, mean |predicted / measured - 1|, before -> after, fitted results:")
    lines.extend(_error_lines(result.train_before, result.train_after))
    if result.holdout_labels:
        lines.append("Same on the held-out results:")
        lines.extend(_error_lines(result.holdout_before, result.holdout_after))
    return lines


def _confounded_lines(result: CalibrationResult) -> list[str]:
    lines = []
    fitted = len(result.fitted_names)
    if result.determined_directions < fitted:
        lines.append(f"Warning: the results determine only {result.determined_directions} independent "
                     f"combination(s) of the {fitted} fitted constants, so some stayed near their starting "
                     "values; fit fewer constants with --fit or add results")
    return lines + [f"Warning: the results fix only a combination of {a} and {b} (correlation {correlation:+.3f}); "
            "add results that separate them (other tp degrees, batch sizes or prompt lengths) before "
            "trusting either value alone." for a, b, correlation in result.confounded]


def _describe_observation(observation) -> str:
    from kvplan.costmodel.calibration import StepObservation

    if isinstance(observation, StepObservation):
        return (f"step tp={observation.tp} pp={observation.pp} decode_requests={observation.decode_requests:g} "
                f"context_tokens={observation.context_tokens:g} prefill_tokens={observation.prefill_tokens:g}")
    deployment = observation.deployment
    workload = observation.plan.workload
    if workload.arrival_mode == "batch":
        arrivals = f"{workload.requests} requests at once"
    elif workload.arrival_mode == "rate":
        arrivals = f"{workload.arrival_rate_per_s:g} requests/s"
    else:
        arrivals = f"{workload.concurrency} clients"
    return (f"dp={deployment.dp} tp={deployment.tp} pp={deployment.pp} max_num_seqs={deployment.max_num_seqs}, "
            f"prompt {workload.prompt_tokens.description}, output {workload.output_tokens.description}, {arrivals}")


def render_node_yaml(document: dict[str, Any], comments: list[str], engine: dict[str, str]) -> str:
    import yaml

    if engine:
        lines = comments + ["Fitted engine constants, which belong under the plan's engine section:"]
        lines += [f"  engine.{key}: {value}" for key, value in engine.items()]
    else:
        lines = comments + ["No engine constant was fitted."]
    header = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        header.extend(textwrap.wrap(line, width=100, subsequent_indent=indent, break_on_hyphens=False) or [""])
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(document, sort_keys=False,
                                                                      default_flow_style=False)


def render_plan_yaml(plan_path: str, node_path: str, engine: dict[str, str], name: str) -> str:
    import yaml

    from kvplan.spec.errors import KvplanError

    try:
        with open(plan_path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise KvplanError(f"failed to read the plan {plan_path}: {error}") from None
    data["name"] = name
    hardware = dict(data.get("hardware") or {})
    hardware["node"] = os.path.relpath(node_path, os.path.dirname(os.path.abspath(plan_path)))
    data["hardware"] = hardware
    if engine:
        data["engine"] = {**(data.get("engine") or {}), **engine}
    header = f"# {name}: {os.path.basename(plan_path)} with the node and engine constants of kvplan calibrate.\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _report_json(result: CalibrationResult, written: dict[str, str]) -> str:
    document = dataclasses.asdict(result)
    document["written"] = written
    return json.dumps(document, indent=2, default=float) + "\n"


def _report_table(result: CalibrationResult, written: dict[str, str]) -> str:
    from tabulate import tabulate

    from kvplan.costmodel.calibration import CONSTANTS

    rows = []
    for constant in CONSTANTS:
        status = "fitted" if constant.name in result.fitted_names else \
            f"held ({result.undetermined.get(constant.name, 'not in --fit')})"
        if constant.name in result.at_bound:
            status += f", {result.at_bound[constant.name]}"
        rows.append([f"{constant.section}.{constant.name}", f"{result.initial[constant.name]:.6g}",
                     f"{result.fitted[constant.name]:.6g}", constant.unit, status])
    out = [tabulate(rows, headers=["constant", "before", "after", "unit", "status"]), ""]
    error_rows = []
    holdout_before = {e.metric: e for e in result.holdout_before}
    holdout_after = {e.metric: e for e in result.holdout_after}
    after = {e.metric: e for e in result.train_after}
    metrics = [e.metric for e in result.train_before] + [m for m in holdout_before if m not in after]
    train_before = {e.metric: e for e in result.train_before}
    for metric in metrics:
        row = [metric]
        for table in (train_before, after, holdout_before, holdout_after):
            error = table.get(metric)
            row.append(_percent(error.mean_abs_relative_error) if error else "")
        error_rows.append(row)
    headers = ["metric", "fit: before", "fit: after"]
    if result.holdout_labels:
        headers += ["held out: before", "held out: after"]
        out.append(f"Fitted on {len(result.train_labels)} result(s), held out {len(result.holdout_labels)}: "
                   f"{', '.join(result.holdout_labels)}")
    else:
        error_rows = [row[:3] for row in error_rows]
        out.append(f"Fitted on {len(result.train_labels)} result(s)")
    out.append("Error per metric, mean |predicted / measured - 1|:")
    out.append(tabulate(error_rows, headers=headers))
    out.append("")
    out.extend(_confounded_lines(result))
    out.append(f"Levenberg-Marquardt: {result.iterations} iteration(s), "
               f"{'converged' if result.converged else 'stopped at the iteration limit'}")
    for kind, path in written.items():
        out.append(f"Wrote {kind}: {path}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# Command-line entry point
# ---------------------------------------------------------------------------------------


def _fit_names(text: str) -> list[str]:
    from kvplan.cli import UsageError

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONSTANT_NAMES]
    if unknown or not names:
        raise UsageError(f"--fit names unknown constant(s) {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(CONSTANT_NAMES)}")
    return names


def run(args: argparse.Namespace) -> int:
    from kvplan.atomic import write_text_atomic
    from kvplan.cli import UsageError
    from kvplan.costmodel.calibration import fit_constants, initial_constants
    from kvplan.spec import load_plan
    from kvplan.spec.errors import KvplanError

    if not 0.0 <= args.holdout < 1.0:
        raise UsageError(f"--holdout must be in [0, 1), but got {args.holdout}")
    fit = _fit_names(args.fit)
    plan_dir = os.path.dirname(os.path.abspath(args.plan))
    if args.plan_output is not None and os.path.dirname(os.path.abspath(args.plan_output)) != plan_dir:
        raise UsageError(f"--plan-output must be in the plan's folder {plan_dir}, so that the plan's relative "
                         f"paths still resolve, but got {args.plan_output}")

    plan = load_plan(args.plan)
    observations = load_observations(plan, args.results, args.manifest)
    result = fit_constants(observations, initial_constants(plan), fit=fit, holdout=args.holdout, seed=args.seed)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    node_name = f"{plan.node.name}-calibrated"
    output = args.output or f"{node_name}.yaml"
    # Only fitted engine constants are written, so a plan keeps its own values otherwise.
    engine = {name: _quantity(result.fitted[name], "s") for name in ("cpu_overhead_per_step",)
              if name in result.fitted_names}
    comments = comment_block(plan, result, observations, list(args.results), date)
    written = {"node spec": output}
    try:
        write_text_atomic(output, render_node_yaml(node_document(plan, result.fitted, node_name), comments, engine))
        if args.plan_output is not None:
            text = render_plan_yaml(args.plan, output, engine, f"{plan.name}-calibrated")
            write_text_atomic(args.plan_output, text)
            written["plan"] = args.plan_output
    except OSError as error:
        raise KvplanError(f"failed to write the calibrated spec: {error}") from None

    report = _report_json if args.format == "json" else _report_table
    sys.stdout.write(report(result, written))
    return 0
