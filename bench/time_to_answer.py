"""Time to answer: wall time of `kvplan optimize` on each examples/h200-reasoning plan,
cold (a new process with an empty compilation cache) and warm (a new process after a
run of the same plan filled the cache), split into import, spec loading, compilation
and search by bench/phases.py. Also the start-up of `kvplan --help` and
`kvplan validate`, which must not import JAX.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

KVPLAN = str(Path(sys.executable).with_name("kvplan"))
WARM_RUNS = 3
QUICK_WARM_RUNS = 1
STARTUP_RUNS = 5
VALIDATE_PATHS = ("examples/h200-reasoning", "examples/models", "examples/workloads")


def _startup(label: str, command: list[str], runs: int) -> dict:
    """Time a short command over ``runs`` runs after one warm-up run."""
    env = common.clean_environment(KVPLAN_NO_CACHE="1")
    measured = [common.run_measured(command, env=env) for _ in range(runs + 1)][1:]
    return {
        "command": label,
        "wall_s": common.summarize([run["wall_s"] for run in measured]),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in measured),
        "returncode": measured[-1]["returncode"],
        "stdout_tail": measured[-1]["stdout"][-200:],
    }


def _phases(plan: Path, cache_dir: str) -> dict:
    env = common.clean_environment(KVPLAN_CACHE_DIR=cache_dir)
    run = common.run_measured([sys.executable, str(common.BENCH_DIR / "phases.py"), str(plan)], env=env)
    if run["returncode"] != 0:
        return {"error": run["stderr"][-2000:]}
    phases = json.loads(run["stdout"].strip().splitlines()[-1])
    phases["process_wall_s"] = run["wall_s"]
    phases["peak_rss_mib"] = run["peak_rss_mib"]
    return phases


def measure_plan(plan: Path, warm_runs: int) -> dict:
    relative = str(plan.relative_to(common.REPO_ROOT))
    command = [KVPLAN, "optimize", relative]

    cold_dir = common.empty_cache_dir()
    cold = common.run_measured(command, env=common.clean_environment(KVPLAN_CACHE_DIR=cold_dir))
    warm = [common.run_measured(command, env=common.clean_environment(KVPLAN_CACHE_DIR=cold_dir))
            for _ in range(warm_runs)]
    shutil.rmtree(cold_dir, ignore_errors=True)

    phase_dir = common.empty_cache_dir()
    cold_phases = _phases(plan, phase_dir)
    warm_phases = _phases(plan, phase_dir)
    shutil.rmtree(phase_dir, ignore_errors=True)

    return {
        "plan": relative,
        "command": " ".join(["kvplan", "optimize", relative]),
        "returncode": cold["returncode"],
        "cold_wall_s": cold["wall_s"],
        "cold_peak_rss_mib": cold["peak_rss_mib"],
        "warm_wall_s": common.summarize([run["wall_s"] for run in warm]),
        "warm_peak_rss_mib": max(run["peak_rss_mib"] for run in warm),
        "cold_phases": cold_phases,
        "warm_phases": warm_phases,
    }


def main() -> None:
    args = common.parse_output_argument()
    warm_runs = QUICK_WARM_RUNS if args.quick else WARM_RUNS
    startup_runs = 2 if args.quick else STARTUP_RUNS

    validate = ["kvplan", "validate", *VALIDATE_PATHS]
    startup = [
        _startup("kvplan --help", [KVPLAN, "--help"], startup_runs),
        _startup(" ".join(validate), [KVPLAN, *validate[1:]], startup_runs),
        # Which heavy modules the parser and the validator import (printed to stdout).
        _startup("modules imported by the parser and validate",
                 [sys.executable, "-c", "import sys, kvplan.cli as c; c._build_parser(); "
                  "from kvplan.spec import validate_paths; print(sorted(m for m in sys.modules "
                  "if m in ('jax', 'optuna')))"], 1),
    ]
    for entry in startup:
        print(f"{entry['command'][:60]}: median {entry['wall_s']['median']:.2f} s", flush=True)

    plans = []
    for plan in common.EXAMPLE_PLANS:
        result = measure_plan(plan, warm_runs)
        plans.append(result)
        print(f"{plan.stem}: cold {result['cold_wall_s']:.2f} s, warm median "
              f"{result['warm_wall_s']['median']:.2f} s", flush=True)

    common.write_json(args.output, {"startup": startup, "plans": plans,
                                    "peak_rss_mib": max(p["cold_peak_rss_mib"] for p in plans)})


if __name__ == "__main__":
    main()
