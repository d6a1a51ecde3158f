"""Search quality per unit of time: for each examples/h200-reasoning plan, the trials
and seconds the default search (Optuna TPE plus the local polish) needs to come within
1 % of the exhaustive optimum of the plan's objective.

Each trial budget runs as a new search of that many trials, for several seeds; a
budget counts as reaching the optimum when every seed's best deployment is within 1 %.
Times exclude compilation: each plan's model is compiled before the clock starts.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TRIAL_BUDGETS = (5, 10, 25, 50, 100, 200)
SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
TOLERANCE = 0.01


def _gap(direction: str, value: float | None, optimum: float) -> float:
    """Relative shortfall of ``value`` against ``optimum``; inf when nothing met the SLA."""
    if value is None or not math.isfinite(value):
        return math.inf
    if direction == "minimize":
        return (value - optimum) / abs(optimum)
    return (optimum - value) / abs(optimum)


def main() -> None:
    args = common.parse_output_argument()
    import kvplan
    from kvplan.optimizer.search import OBJECTIVES

    seeds = QUICK_SEEDS if args.quick else SEEDS
    plans = []
    for path in common.EXAMPLE_PLANS:
        plan = kvplan.load_plan(path)
        direction, _ = OBJECTIVES[plan.objective]
        kvplan.optimize(plan, trials=1)  # compiles the model outside the timings

        start = time.perf_counter()
        exhaustive = kvplan.optimize(plan, exhaustive=True)
        exhaustive_s = time.perf_counter() - start
        optimum = exhaustive.best.objective_value if exhaustive.best else None

        budgets = []
        reached = None
        for trials in TRIAL_BUDGETS:
            runs = []
            for seed in seeds:
                start = time.perf_counter()
                result = kvplan.optimize(plan, trials=trials, seed=seed)
                seconds = time.perf_counter() - start
                value = result.best.objective_value if result.best else None
                runs.append({"seed": seed, "seconds": seconds, "evaluated": result.evaluated,
                             "gap": _gap(direction, value, optimum) if optimum is not None else None})
            within = optimum is not None and all(run["gap"] <= TOLERANCE for run in runs)
            budget = {
                "trials": trials,
                "within_1_percent": within,
                "max_gap": max(run["gap"] for run in runs) if optimum is not None else None,
                "seconds_median": sorted(run["seconds"] for run in runs)[len(runs) // 2],
                "evaluated_max": max(run["evaluated"] for run in runs),
                "runs": runs,
            }
            budgets.append(budget)
            if within and reached is None:
                reached = budget

        plans.append({
            "plan": str(path.relative_to(common.REPO_ROOT)),
            "objective": plan.objective,
            "space_size": exhaustive.space_size,
            "exhaustive_s": exhaustive_s,
            "optimum": optimum,
            "first_budget_within_1_percent": None if reached is None else {
                "trials": reached["trials"], "seconds": reached["seconds_median"],
                "evaluated": reached["evaluated_max"]},
            "budgets": budgets,
        })
        summary = "never" if reached is None else f"{reached['trials']} trials, {reached['seconds_median']:.2f} s"
        print(f"{path.stem}: space {exhaustive.space_size}, exhaustive {exhaustive_s:.2f} s, "
              f"within 1 %: {summary}", flush=True)

    common.write_json(args.output, {"seeds": list(seeds), "tolerance": TOLERANCE, "plans": plans,
                                    "peak_rss_mib": common.peak_rss_mib()})


if __name__ == "__main__":
    main()
