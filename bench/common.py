"""Helpers shared by the benchmark scripts: the machine description, timers, child
processes with their peak memory, and JSON files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
EXAMPLE_PLAN_DIR = REPO_ROOT / "examples" / "h200-reasoning"
EXAMPLE_PLANS = tuple(sorted(EXAMPLE_PLAN_DIR.glob("*.yaml")))
RESULTS_DIR = BENCH_DIR / "results"

# Environment variables that would let a child process reuse compiled models from an
# earlier run; every benchmark sets them itself.
CACHE_VARIABLES = ("KVPLAN_CACHE_DIR", "KVPLAN_NO_CACHE", "JAX_COMPILATION_CACHE_DIR",
                   "JAX_ENABLE_COMPILATION_CACHE")


def machine() -> dict[str, Any]:
    """Describe the machine and software that produced a figure."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    versions = {}
    for package in ("jax", "jaxlib", "numpy", "optuna"):
        try:
            module = __import__(package)
            versions[package] = getattr(module, "__version__", "unknown")
        except ImportError:
            versions[package] = None
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def clean_environment(**overrides: str) -> dict[str, str]:
    """Return this process's environment without the compilation cache settings."""
    environment = {key: value for key, value in os.environ.items() if key not in CACHE_VARIABLES}
    environment.update(overrides)
    return environment


def empty_cache_dir(parent: Path | None = None) -> str:
    """Create an empty folder for a JAX compilation cache and return its path."""
    return tempfile.mkdtemp(prefix="kvplan-bench-cache-", dir=parent)


def run_measured(command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT,
                 timeout: float = 600.0) -> dict[str, Any]:
    """Run ``command``; return its wall time, peak resident memory, exit code and output.

    The peak comes from ``wait4``: the maximum resident set of the child or of any
    process it waited for, so the largest single process of the command's tree.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                timed_out = True
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read()
        stderr = err.read()
    return {
        "command": list(command),
        "timed_out": timed_out,
        "wall_s": wall,
        "returncode": process.returncode,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "stdout": stdout,
        "stderr": stderr[-4000:],
    }


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Return the min, median and max of repeated measurements."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": len(values)}


def time_repeated(function: Callable[[], Any], *, min_runs: int = 3, min_seconds: float = 0.5,
                  max_runs: int = 50) -> list[float]:
    """Call ``function`` until it ran ``min_runs`` times and ``min_seconds`` in all; return each time."""
    times: list[float] = []
    while len(times) < max_runs and (len(times) < min_runs or sum(times) < min_seconds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write_json(path: str | Path, document: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def parse_output_argument(argv: Sequence[str] | None = None):
    """Parse the options every benchmark script takes: --output FILE and --quick."""
    import argparse

    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    parser.add_argument("--output", required=True, help="JSON file to write the results to")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (about a minute)")
    return parser.parse_args(argv)
