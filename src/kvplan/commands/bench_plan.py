"""``kvplan bench-plan``: benchmark commands that check the top deployments of a plan.

For each of the best deployments it prints the ``vllm serve`` command (built by
``kvplan launch``) and a ``vllm bench serve`` command whose synthetic workload follows
the plan's, and it records kvplan's predictions for that benchmark in a manifest that
``kvplan calibrate`` reads back. tests/calibration/vllm_bench_serve_flags.txt lists the
vLLM sources each benchmark flag was checked against.

The benchmark uses vLLM's ``random`` dataset, which draws each request's prompt and
output length uniformly from [L (1 - r), L (1 + r)] with one range ratio r for both
(vllm/benchmarks/datasets/random.py). It cannot reproduce a lognormal or a histogram,
so bench-plan keeps the plan's mean lengths, picks r to match the spread of the output
lengths as far as r < 1 allows, and predicts the metrics for the uniform lengths that
vLLM will draw, not for the plan's distributions.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvplan.optimizer.search import RankedDeployment
    from kvplan.spec.types import Deployment, LengthDistribution, Plan, WorkloadSpec

FORMATS = ("shell", "json")
DEFAULT_TOP = 3

# The manifest's "kind" and version. The version changes when a field's meaning changes.
MANIFEST_KIND = "kvplan-bench-manifest"
MANIFEST_SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SCRIPT_FILE = "run-benchmarks.sh"

# vLLM's random dataset requires a range ratio in [0, 1).
MAX_RANGE_RATIO = 0.99
# Requests per client (concurrency mode) or per mean request lifetime (rate mode) in
# the benchmark: a steady-state prediction ignores the ramp-up and the drain, which
# then take about 1/10 of the run.
STEADY_STATE_REQUESTS_PER_SLOT = 10
MIN_STEADY_STATE_PROMPTS = 100

# Percentiles the benchmark reports: the SLA statistics kvplan predicts (p50, p90, p99).
METRIC_PERCENTILES = "50,90,99"
PERCENTILE_METRICS = "ttft,tpot,itl,e2el"

# vllm serve listens on port 8000 by default and returns 200 on GET /health once it is ready,
# and vllm bench serve sends to 127.0.0.1:8000 by default.
HEALTH_URL = "http://127.0.0.1:8000/health"
# Seconds the script waits for a server to become ready before it gives up. Loading the
# weights of a large model from a network disk can take several minutes.
READY_TIMEOUT_S = 1800

# Keys that bench-plan adds to each result file with ``vllm bench serve --metadata``,
# so that a result records which deployment and workload it measured.
METADATA_PREFIX = "kvplan_"
DEPLOYMENT_KEYS = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization")
WORKLOAD_KEYS = ("input_len", "output_len", "range_ratio")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench-plan", help="write vllm bench serve commands that check the plan's top deployments",
        description="For each of the top deployments of kvplan optimize (best per layout), print the "
                    "vllm serve command and a vllm bench serve command with the plan's workload, and "
                    "record kvplan's predicted metrics in a manifest for kvplan calibrate.",
    )
    parser.add_argument("plan", metavar="PLAN", help="path of a Plan spec")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP,
                        help=f"number of feasible deployments to benchmark (default: {DEFAULT_TOP})")
    parser.add_argument("--output-dir", metavar="DIR", default=None,
                        help=f"write {SCRIPT_FILE} and {MANIFEST_FILE} into DIR (created if missing) "
                             "instead of printing to stdout")
    parser.add_argument("--format", choices=FORMATS, default="shell",
                        help="what to print without --output-dir: shell (the commands) or json (the "
                             "manifest). Default: shell")
    parser.add_argument("--num-prompts", type=int, default=None, metavar="N",
                        help="requests per benchmark in rate and concurrency mode (default: "
                             f"{STEADY_STATE_REQUESTS_PER_SLOT} per client or per mean request lifetime); "
                             "in batch mode the plan's request count is used")
    parser.add_argument("--result-dir", default="results", metavar="DIR",
                        help="folder the benchmarks write their result files to (default: results)")
    parser.add_argument("--trials", type=int, default=None,
                        help="Optuna trials of the search (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search (default: 0)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="evaluate every point of the search space")
    parser.set_defaults(handler=run)


# ---------------------------------------------------------------------------------------
# Benchmark workload
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchWorkload:
    """The synthetic workload of one ``vllm bench serve`` run with the random dataset."""

    input_len: int
    output_len: int
    range_ratio: float
    num_prompts: int
    # None means inf: every request is sent at time 0.
    request_rate: float | None
    max_concurrency: int | None

    def arrival_mode(self) -> str:
        if self.max_concurrency is not None:
            return "concurrency"
        if self.request_rate is not None:
            return "rate"
        return "batch"


def _mean_and_cv(distribution: LengthDistribution) -> tuple[float, float]:
    mean = math.fsum(v * p for v, p in zip(distribution.values, distribution.probabilities))
    second = math.fsum(v * v * p for v, p in zip(distribution.values, distribution.probabilities))
    return mean, math.sqrt(max(second - mean * mean, 0.0)) / mean


def random_dataset_lengths(length: int, range_ratio: float) -> tuple[int, int]:
    """Return the smallest and largest length vLLM's random dataset draws.

    vllm/benchmarks/datasets/random.py samples integers uniformly from
    [floor(L (1 - r)), ceil(L (1 + r))], with at least 1 token.
    """
    low = max(math.floor(length * (1.0 - range_ratio)), 1)
    high = max(math.ceil(length * (1.0 + range_ratio)), 1)
    return low, high


def bench_range_ratio(plan: Plan) -> tuple[float, str]:
    """Choose the random dataset's range ratio for ``plan``, and describe the approximation.

    A uniform length on [L (1 - r), L (1 + r)] has a coefficient of variation of
    r / sqrt(3), so r = sqrt(3) x the output lengths' coefficient of variation keeps
    their spread, and with it the mean context of a running request, which sets how
    many requests the KV cache holds. r is capped below 1 and so that the longest
    drawn prompt and output stay within the plan's maxima (the server's
    --max-model-len).
    """
    workload = plan.workload
    prompt_mean, prompt_cv = _mean_and_cv(workload.prompt_tokens)
    output_mean, output_cv = _mean_and_cv(workload.output_tokens)
    wanted = math.sqrt(3.0) * output_cv
    ratio = min(wanted, MAX_RANGE_RATIO)
    for mean, maximum in ((prompt_mean, workload.prompt_tokens.max_tokens),
                          (output_mean, workload.output_tokens.max_tokens)):
        if mean > 0:
            ratio = min(ratio, max(maximum / mean - 1.0, 0.0))
    ratio = math.floor(ratio * 100.0) / 100.0
    notes = [
        f"vLLM's random dataset draws prompt and output lengths uniformly within +/-{ratio:g} of "
        f"{round(prompt_mean)} and {round(output_mean)} tokens (the plan's means)",
    ]
    if ratio < wanted - 0.01:
        notes.append(
            f"the plan's output lengths vary more (coefficient of variation {output_cv:.2f}) than a "
            f"uniform range can ({ratio / math.sqrt(3.0):.2f}), so the benchmark has fewer very long "
            "outputs and a shorter mean running context than the plan"
        )
    if abs(math.sqrt(3.0) * prompt_cv - ratio) > 0.05:
        notes.append(
            f"prompt lengths use the same ratio, so their coefficient of variation is "
            f"{ratio / math.sqrt(3.0):.2f} instead of the plan's {prompt_cv:.2f}"
        )
    notes.append("the predictions below are for these uniform lengths, not for the plan's distributions")
    return ratio, "; ".join(notes)


def bench_workload(plan: Plan, predicted_e2e_s: float | None, num_prompts: int | None) -> BenchWorkload:
    """Return the benchmark workload that follows ``plan``'s workload."""
    workload = plan.workload
    ratio, _ = bench_range_ratio(plan)
    input_len = max(round(_mean_and_cv(workload.prompt_tokens)[0]), 1)
    output_len = max(round(_mean_and_cv(workload.output_tokens)[0]), 1)
    if workload.arrival_mode == "batch":
        return BenchWorkload(input_len, output_len, ratio, int(workload.requests or 1), None, None)
    if workload.arrival_mode == "concurrency":
        clients = int(workload.concurrency or 1)
        prompts = num_prompts or max(STEADY_STATE_REQUESTS_PER_SLOT * clients, MIN_STEADY_STATE_PROMPTS)
        return BenchWorkload(input_len, output_len, ratio, prompts, None, clients)
    rate = float(workload.arrival_rate_per_s or 0.0)
    in_flight = rate * (predicted_e2e_s or 0.0)
    prompts = num_prompts or max(math.ceil(STEADY_STATE_REQUESTS_PER_SLOT * in_flight), MIN_STEADY_STATE_PROMPTS)
    return BenchWorkload(input_len, output_len, ratio, prompts, rate, None)


def workload_spec(bench: BenchWorkload, name: str = "vllm-bench-random") -> WorkloadSpec:
    """Return the kvplan Workload of a benchmark: the uniform lengths vLLM draws, and its arrivals."""
    from kvplan.spec.distributions import build_length_distribution
    from kvplan.spec.types import WorkloadSpec

    def uniform(length: int) -> LengthDistribution:
        low, high = random_dataset_lengths(length, bench.range_ratio)
        return build_length_distribution({"distribution": "uniform", "min": low, "max": high}, base_dir=".")

    mode = bench.arrival_mode()
    return WorkloadSpec(
        name=name,
        prompt_tokens=uniform(bench.input_len),
        output_tokens=uniform(bench.output_len),
        arrival_mode=mode,  # type: ignore[arg-type]
        requests=bench.num_prompts if mode == "batch" else None,
        arrival_rate_per_s=bench.request_rate if mode == "rate" else None,
        concurrency=bench.max_concurrency if mode == "concurrency" else None,
    )


def bench_plan_variant(plan: Plan, bench: BenchWorkload) -> Plan:
    """Return ``plan`` with its workload replaced by the benchmark's."""
    return dataclasses.replace(plan, workload=workload_spec(bench, f"{plan.workload.name}-vllm-bench"))


# ---------------------------------------------------------------------------------------
# Commands and manifest
# ---------------------------------------------------------------------------------------


def _number(value: float) -> str:
    """Format a count or a rate exactly: ``8192``, ``0.9``, never ``1.04858e+06``."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def bench_argv(run_id: str, model: str, deployment: Deployment, bench: BenchWorkload, result_dir: str) -> list[str]:
    """Return the ``vllm bench serve`` argv of one run."""
    argv = [
        "vllm", "bench", "serve",
        "--model", model,
        "--dataset-name", "random",
        "--random-input-len", str(bench.input_len),
        "--random-output-len", str(bench.output_len),
        "--random-range-ratio", _number(bench.range_ratio),
        "--num-prompts", str(bench.num_prompts),
        "--request-rate", "inf" if bench.request_rate is None else _number(bench.request_rate),
    ]
    if bench.max_concurrency is not None:
        argv += ["--max-concurrency", str(bench.max_concurrency)]
    argv += [
        # Output lengths must hold, so the server may not stop at an end-of-sequence token.
        "--ignore-eos",
        "--percentile-metrics", PERCENTILE_METRICS,
        "--metric-percentiles", METRIC_PERCENTILES,
        "--seed", "0",
        "--save-result",
        "--result-dir", result_dir,
        "--result-filename", f"{run_id}.json",
        "--metadata",
        f"{METADATA_PREFIX}run={run_id}",
    ]
    for key in DEPLOYMENT_KEYS:
        argv.append(f"{METADATA_PREFIX}{key}={_number(getattr(deployment, key))}")
    for key in WORKLOAD_KEYS:
        argv.append(f"{METADATA_PREFIX}{key}={_number(getattr(bench, key))}")
    return argv


def _selected(plan: Plan, args: argparse.Namespace) -> list[RankedDeployment]:
    from kvplan.optimizer.search import optimize
    from kvplan.spec.errors import KvplanError

    result = optimize(plan, trials=args.trials, seed=args.seed, exhaustive=args.exhaustive).best_per_layout()
    feasible = [ranked for ranked in result.results if ranked.evaluation.feasible]
    if not feasible:
        raise KvplanError(f"plan {plan.name} has no feasible deployment to benchmark; run kvplan optimize "
                          "for the reasons")
    return feasible[: args.top]


def build_manifest(plan: Plan, selected: list[RankedDeployment], args: argparse.Namespace) -> dict[str, Any]:
    """Return the manifest: each run's deployment, commands, workload and predicted metrics."""
    from kvplan.commands.launch import build_launch
    from kvplan.costmodel.calibration import initial_constants, predicted_metrics

    _, approximation = bench_range_ratio(plan)
    runs = []
    for position, ranked in enumerate(selected, start=1):
        deployment = ranked.evaluation.config
        run_id = f"run-{position}"
        e2e = (ranked.evaluation.metrics.get("e2e_s") or {}).get("mean")
        bench = bench_workload(plan, e2e, args.num_prompts)
        variant = bench_plan_variant(plan, bench)
        launch = build_launch(plan, deployment)
        predicted = predicted_metrics(variant, deployment)
        runs.append({
            "run_id": run_id,
            "rank": ranked.rank,
            "deployment": deployment.to_dict(),
            "sla_met_for_plan": ranked.sla_met,
            "serve": [{"node_rank": node.node_rank, "role": node.role, "env": node.env, "argv": node.argv}
                      for node in launch.nodes],
            "bench": {
                "argv": bench_argv(run_id, launch.model, deployment, bench, args.result_dir),
                "result_file": os.path.join(args.result_dir, f"{run_id}.json"),
            },
            "workload": {**dataclasses.asdict(bench), "arrival_mode": bench.arrival_mode()},
            "predicted": predicted,
            "warnings": list(launch.warnings),
        })
    return {
        "kind": MANIFEST_KIND,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "plan": {"name": plan.name, "source": plan.source},
        "constants": initial_constants(plan),
        "approximation": approximation,
        "predicted_units": {"output_throughput": "tokens/s", "duration": "s", "*_ms": "ms"},
        "runs": runs,
    }


def render_script(manifest: dict[str, Any]) -> str:
    lines = [
        "#!/bin/sh",
        f"# Benchmarks of plan {manifest['plan']['name']} written by kvplan bench-plan.",
        "# For each run: start the server, wait until it is ready, run the benchmark, stop the server.",
        f"# Workload: {manifest['approximation']}.",
        "# Afterwards: kvplan calibrate PLAN --manifest manifest.json --results RESULT_DIR/*.json",
        "set -e",
    ]
    for run in manifest["runs"]:
        deployment = run["deployment"]
        lines.append("")
        lines.append(f"# {run['run_id']}: rank {run['rank']}, "
                     + " ".join(f"{key}={_number(value)}" for key, value in deployment.items()))
        predicted = run["predicted"]
        summary = ", ".join(f"{name} {predicted[name]:.4g}" for name in
                            ("output_throughput", "duration", "mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms")
                            if name in predicted)
        lines.append(f"# kvplan predicts: {summary}")
        for warning in run["warnings"]:
            lines.append(f"# warning: {warning}")
        serve = run["serve"]
        bench = " ".join(shlex.quote(word) for word in run["bench"]["argv"])
        if len(serve) == 1:
            node = serve[0]
            env = "".join(f"{name}={shlex.quote(value)} " for name, value in node["env"].items())
            lines.append(env + " ".join(shlex.quote(word) for word in node["argv"]) + " &")
            lines.append("server=$!")
            lines.append("waited=0")
            lines.append(f"until curl -sf {HEALTH_URL} >/dev/null; do")
            lines.append(f'  if ! kill -0 "$server" 2>/dev/null || [ "$waited" -ge {READY_TIMEOUT_S} ]; then')
            lines.append(f'    echo "{run["run_id"]}: the server did not become ready" >&2; '
                         'kill "$server" 2>/dev/null; exit 1')
            lines.append("  fi")
            lines.append("  sleep 10; waited=$((waited + 10))")
            lines.append("done")
            lines.append(bench + ' || { kill "$server"; wait "$server" || true; exit 1; }')
            lines.append('kill "$server"; wait "$server" || true')
            continue
        lines.append("# This deployment spans several nodes: start each server by hand, then run the benchmark.")
        for node in serve:
            env = "".join(f"{name}={shlex.quote(value)} " for name, value in node["env"].items())
            lines.append(f"# Node {node['node_rank']}: " + env + " ".join(shlex.quote(word) for word in node["argv"]))
        lines.append(f"# {bench}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from kvplan.atomic import write_text_atomic
    from kvplan.cli import UsageError
    from kvplan.spec import load_plan
    from kvplan.spec.errors import KvplanError

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, but got {args.top}")
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, but got {args.trials}")
    if args.num_prompts is not None and args.num_prompts < 1:
        raise UsageError(f"--num-prompts must be at least 1, but got {args.num_prompts}")
    plan = load_plan(args.plan)
    selected = _selected(plan, args)
    manifest = build_manifest(plan, selected, args)
    manifest_text = json.dumps(manifest, indent=2) + "\n"
    script = render_script(manifest)
    if args.output_dir is None:
        sys.stdout.write(manifest_text if args.format == "json" else script)
        return 0
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        write_text_atomic(os.path.join(args.output_dir, MANIFEST_FILE), manifest_text)
        write_text_atomic(os.path.join(args.output_dir, SCRIPT_FILE), script)
    except OSError as error:
        raise KvplanError(f"failed to write into --output-dir {args.output_dir}: {error}") from None
    print(f"kvplan bench-plan: wrote {len(manifest['runs'])} run(s) to "
          f"{os.path.join(args.output_dir, SCRIPT_FILE)} and {os.path.join(args.output_dir, MANIFEST_FILE)}",
          file=sys.stderr)
    return 0
