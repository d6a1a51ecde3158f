"""Write simulated ``vllm bench serve --save-result`` files for the runs of a bench-plan manifest.

This stands in for the benchmark step when no GPU is at hand: the cost model predicts
each run with the given constants (for example efficiency fractions below the
catalog's), and each result file carries those predictions under the keys vLLM's
benchmark writes, times an optional seeded log-normal noise. The files are simulated,
not measured.

    python tools/simulate_bench_results.py PLAN MANIFEST OUT_DIR \
        --set hbm_bandwidth=0.72 --set cpu_overhead_per_step=0.0012 --noise 0.02
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy as np

from kvplan.atomic import write_text_atomic
from kvplan.commands.bench_plan import BenchWorkload, bench_plan_variant
from kvplan.costmodel.calibration import CONSTANT_NAMES, initial_constants, predicted_metrics
from kvplan.spec import load_plan
from kvplan.spec.types import Deployment


def simulated_result(plan, run: dict, constants: dict[str, float], noise: float, rng) -> dict:
    """Return one result document in the layout of vllm/benchmarks/serve.py."""
    workload = dict(run["workload"])
    workload.pop("arrival_mode", None)
    bench = BenchWorkload(**workload)
    deployment = Deployment(**run["deployment"])
    predicted = predicted_metrics(bench_plan_variant(plan, bench), deployment, constants)
    factors = {name: float(np.exp(rng.normal(0.0, noise))) if noise > 0 else 1.0 for name in predicted}
    result = {
        "date": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai",
        "label": None,
        "model_id": "simulated",
        "num_prompts": bench.num_prompts,
        "request_rate": "inf" if bench.request_rate is None else bench.request_rate,
        "burstiness": 1.0,
        "max_concurrency": bench.max_concurrency,
        "completed": bench.num_prompts,
        "failed": 0,
        "simulated_by": "tools/simulate_bench_results.py",
    }
    argv = run["bench"]["argv"]
    metadata = argv[argv.index("--metadata") + 1:]
    for item in metadata:
        key, _, value = item.partition("=")
        result[key] = value
    for name, value in predicted.items():
        result[name] = value * factors[name]
    if "duration" in result:
        result["request_throughput"] = bench.num_prompts / result["duration"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan")
    parser.add_argument("manifest")
    parser.add_argument("out_dir")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help=f"constant to simulate with, one of {', '.join(CONSTANT_NAMES)}")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="standard deviation of the log-normal noise on each metric (default: 0)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    plan = load_plan(args.plan)
    constants = initial_constants(plan)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in constants:
            parser.error(f"unknown constant {name!r}; choose from {', '.join(CONSTANT_NAMES)}")
        constants[name] = float(value)
    with open(args.manifest, encoding="utf-8") as handle:
        manifest = json.load(handle)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    for run in manifest["runs"]:
        path = os.path.join(args.out_dir, f"{run['run_id']}.json")
        write_text_atomic(path, json.dumps(simulated_result(plan, run, constants, args.noise, rng), indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
