"""Which sampler and batch size the search should use by default, by measurement.

    python bench/sampler.py --output bench/results/sampler.json
    python bench/sampler.py --quick --output FILE
    python bench/sampler.py --part batch --output bench/results/sampler-batch.json
    python bench/sampler.py --report bench/results/sampler.json   # Markdown tables

Single objective: for each examples/h200-reasoning plan, and a "wide" variant of it
with 10 times as many engine settings, the trials each search method needs before its
best SLA-meeting deployment is within 1 % of the exhaustive optimum of the plan's
objective. Each trial budget runs as a new search, for several seeds, and a seed's
count is the first budget that reaches 1 %. Methods: the default search (Optuna TPE in
batches of 25, then the local polish), TPE with batches of 10 and 50, Optuna's random
sampler with the polish, and TPE and random sampling without the polish.

Multi-objective: for the same plans with the objectives output tokens/s per GPU and TTFT
p99, the share of the exhaustive Pareto front that TPE, NSGA-II and random sampling find
at each budget, without and with the polish, and the deployments they evaluate.

The methods other than the default are made by replacing the sampler factory, the batch
size and the polish of kvplan.optimizer.search for the duration of one search.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TOLERANCE = 0.01
BUDGETS = (5, 10, 25, 50, 100, 200)
SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
# Engine settings the wide variants search, on top of each plan's max_num_seqs list.
WIDE_OVERRIDES = {
    "search.max_num_batched_tokens": [2048, 4096, 8192, 16384, 32768],
    "search.gpu_memory_utilization": [0.8, 0.85, 0.9, 0.95],
}
# name: (sampler, batch size, polish)
SINGLE_METHODS = {
    "default (TPE, batch 25, polish)": ("tpe", 25, True),
    "TPE, batch 10, polish": ("tpe", 10, True),
    "TPE, batch 50, polish": ("tpe", 50, True),
    "random, polish": ("random", 25, True),
    "TPE alone, batch 25": ("tpe", 25, False),
    "random alone": ("random", 25, False),
}
PARETO_OBJECTIVES = ("output_tokens_per_s_per_gpu", "ttft_p99")
PARETO_SAMPLERS = ("tpe", "nsga2", "random")
PARETO_BUDGETS = (25, 50, 100, 200)
# Batch sizes compared at the default budget of 200 trials, where they change the cost.
BATCH_SIZES = (10, 25, 50, 100)
DEFAULT_BUDGET = 200
PARTS = ("single", "pareto", "batch")


@contextlib.contextmanager
def search_method(sampler: str, batch_size: int, polish: bool) -> Iterator[None]:
    """Make kvplan.optimize use ``sampler``, ``batch_size`` and the polish or not."""
    import optuna

    from kvplan.optimizer import search

    for name in ("_sampler", "TRIALS_PER_BATCH", "_polish"):
        if not hasattr(search, name):
            raise SystemExit(f"kvplan.optimizer.search has no {name}; update bench/sampler.py to the search code")
    saved = (search._sampler, search.TRIALS_PER_BATCH, search._polish)

    def make_sampler(seed: int, trials: int) -> optuna.samplers.BaseSampler:
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(batch_size, trials))

    search._sampler = make_sampler
    search.TRIALS_PER_BATCH = batch_size
    if not polish:
        search._polish = lambda *args, **kwargs: None
    try:
        yield
    finally:
        search._sampler, search.TRIALS_PER_BATCH, search._polish = saved


def _gap(direction: str, value: float | None, optimum: float) -> float:
    if value is None or not math.isfinite(value):
        return math.inf
    if direction == "minimize":
        return (value - optimum) / abs(optimum)
    return (optimum - value) / abs(optimum)


def _plans() -> list[tuple[str, Any]]:
    import kvplan

    plans = []
    for path in common.EXAMPLE_PLANS:
        plans.append((path.stem, kvplan.load_plan(path)))
        plans.append((f"{path.stem} (wide)", kvplan.load_plan_with_overrides(path, WIDE_OVERRIDES)))
    return plans


def measure_single(name: str, plan, seeds) -> dict[str, Any]:
    import kvplan
    from kvplan.optimizer.search import OBJECTIVES

    direction, _ = OBJECTIVES[plan.objective]
    kvplan.optimize(plan, trials=1)  # compiles the model outside the timings
    start = time.perf_counter()
    exhaustive = kvplan.optimize(plan, exhaustive=True)
    exhaustive_s = time.perf_counter() - start
    optimum = exhaustive.best.objective_value
    methods = {}
    for method, (sampler, batch_size, polish) in SINGLE_METHODS.items():
        runs = []
        for seed in seeds:
            reached = None
            with search_method(sampler, batch_size, polish):
                for trials in BUDGETS:
                    start = time.perf_counter()
                    result = kvplan.optimize(plan, trials=trials, seed=seed)
                    seconds = time.perf_counter() - start
                    value = result.best.objective_value if result.best else None
                    if _gap(direction, value, optimum) <= TOLERANCE:
                        reached = {"trials": trials, "evaluated": result.evaluated, "seconds": seconds}
                        break
            runs.append({"seed": seed, "reached": reached})
        trials_needed = [run["reached"]["trials"] if run["reached"] else math.inf for run in runs]
        evaluated = [run["reached"]["evaluated"] for run in runs if run["reached"]]
        methods[method] = {
            "trials_median": statistics.median(trials_needed),
            "trials_max": max(trials_needed),
            "evaluated_max": max(evaluated) if len(evaluated) == len(runs) else None,
            "runs": runs,
        }
        shown = "never" if math.isinf(max(trials_needed)) else f"{max(trials_needed)}"
        print(f"  {method}: trials to 1 % (max over seeds) {shown}", flush=True)
    return {"plan": name, "objective": plan.objective, "space_size": exhaustive.space_size,
            "exhaustive_s": exhaustive_s, "optimum": optimum, "methods": methods}


def measure_pareto(name: str, plan, seeds) -> dict[str, Any] | None:
    from kvplan.optimizer.pareto import optimize_pareto
    from kvplan.spec.errors import KvplanError

    try:
        exact = optimize_pareto(plan, PARETO_OBJECTIVES, exhaustive=True)
    except KvplanError as error:
        print(f"  Pareto: skipped ({error})", flush=True)
        return None
    exact_front = {point.evaluation.config for point in exact.front}
    samplers = {}
    for sampler in PARETO_SAMPLERS:
        for polish in (False, True):
            budgets = []
            for trials in PARETO_BUDGETS:
                recalls, evaluated, extra = [], [], []
                for seed in seeds:
                    result = optimize_pareto(plan, PARETO_OBJECTIVES, trials=trials, seed=seed, sampler=sampler,
                                             polish=polish)
                    found = {point.evaluation.config for point in result.front}
                    recalls.append(len(found & exact_front) / len(exact_front))
                    evaluated.append(result.evaluated)
                    extra.append(len(found - exact_front))
                budgets.append({"trials": trials, "recall_min": min(recalls),
                                "recall_mean": statistics.mean(recalls), "evaluated_max": max(evaluated),
                                "not_on_exact_front_max": max(extra)})
            key = f"{sampler}{' + polish' if polish else ''}"
            samplers[key] = budgets
            summary = ", ".join(f"{b['trials']}: {b['recall_mean']:.2f}" for b in budgets)
            print(f"  Pareto {key}: mean front recall by trials {summary}", flush=True)
    return {"plan": name, "space_size": exact.space_size, "front_size": len(exact_front), "samplers": samplers}


def _trials_cell(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:g}"


def report(path: str) -> None:
    """Print the Markdown tables of docs/benchmarks.md from a result file."""
    import json

    document = json.loads(Path(path).read_text())
    machine = document["machine"]
    print(f"Command: `{document['command']}`. Machine: {machine['cpu_model']}, {machine['cpus']} CPUs, "
          f"Python {machine['python']}, {machine['packages']}. Seeds {document['seeds']}.\n")
    if document["single_objective"]:
        _report_single(document["single_objective"])
    if document["pareto"]:
        _report_pareto(document["pareto"])
    if document.get("batch"):
        _report_batch(document["batch"])


def _report_single(plans: list[dict[str, Any]]) -> None:
    methods = list(SINGLE_METHODS)
    print("| plan | space | " + " | ".join(methods) + " | evaluated by the default |")
    print("|" + " --- |" * (len(methods) + 3))
    for plan in plans:
        cells = [_trials_cell(plan["methods"][method]["trials_max"]) for method in methods]
        evaluated = plan["methods"][methods[0]]["evaluated_max"]
        print(f"| {plan['plan']} | {plan['space_size']:,} | " + " | ".join(cells) + f" | {evaluated} |")
    print()


def _report_pareto(plans: list[dict[str, Any]]) -> None:
    samplers = list(plans[0]["samplers"])
    print("| plan | space | front | " + " | ".join(samplers) + " |")
    print("|" + " --- |" * (len(samplers) + 3))
    for plan in plans:
        cells = []
        for key in samplers:
            budgets = plan["samplers"][key]
            whole = next((b for b in budgets if b["recall_min"] == 1.0), None)
            last = budgets[-1]
            first = "-" if whole is None else str(whole["trials"])
            cells.append(f"{last['recall_mean']:.2f} / {first} / {last['evaluated_max']}")
        print(f"| {plan['plan']} | {plan['space_size']:,} | {plan['front_size']} | " + " | ".join(cells) + " |")
    print()


def _report_batch(plans: list[dict[str, Any]]) -> None:
    sizes = list(plans[0]["batch_sizes"])
    print("| plan | " + " | ".join(f"batch {size}" for size in sizes) + " |")
    print("|" + " --- |" * (len(sizes) + 1))
    for plan in plans:
        cells = []
        for size in sizes:
            entry = plan["batch_sizes"][size]
            cells.append(f"{entry['seconds_median']:.2f} s / {entry['evaluated_max']} / {entry['gap_max']:.1%}")
        print(f"| {plan['plan']} | " + " | ".join(cells) + " |")
    print()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        report(sys.argv[2])
        return
    parts = PARTS
    if "--part" in sys.argv:
        index = sys.argv.index("--part")
        parts = (sys.argv[index + 1],)
        del sys.argv[index:index + 2]
        if parts[0] not in PARTS:
            raise SystemExit(f"--part must be one of {', '.join(PARTS)}, but got {parts[0]!r}")
    args = common.parse_output_argument()
    seeds = QUICK_SEEDS if args.quick else SEEDS
    single, pareto, batch = [], [], []
    for name, plan in _plans():
        print(f"{name}:", flush=True)
        if "single" in parts:
            single.append(measure_single(name, plan, seeds))
        if "pareto" in parts:
            measured = measure_pareto(name, plan, seeds)
            if measured is not None:
                pareto.append(measured)
        if "batch" in parts:
            batch.append(measure_batch(name, plan, seeds))
    common.write_json(args.output, {
        "command": " ".join(["python", "bench/sampler.py", *sys.argv[1:]]),
        "machine": common.machine(),
        "tolerance": TOLERANCE,
        "budgets": list(BUDGETS),
        "seeds": list(seeds),
        "wide_overrides": WIDE_OVERRIDES,
        "single_objective": single,
        "pareto_objectives": list(PARETO_OBJECTIVES),
        "pareto": pareto,
        "default_budget": DEFAULT_BUDGET,
        "batch": batch,
    })


if __name__ == "__main__":
    main()
