"""Run every kvplan benchmark and write bench/results/latest.json.

    python bench/run.py            # all benchmarks, about 10 minutes on 2 cores
    python bench/run.py --quick    # fewer sizes and repeats, about 4 minutes
    python bench/run.py --only throughput --only scaling

Each benchmark runs as its own process, so the peak resident memory recorded beside it
(from ``wait4``) is that benchmark's. docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BENCHMARKS = ("throughput", "time_to_answer", "search_quality", "tools", "scaling")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--only", action="append", choices=BENCHMARKS,
                        help="run only this benchmark (repeat for several)")
    parser.add_argument("--output", default=str(common.RESULTS_DIR / "latest.json"),
                        help="JSON file to write (default: bench/results/latest.json)")
    args = parser.parse_args()

    selected = args.only or list(BENCHMARKS)
    document = {
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": common.machine(),
        "benchmarks": {},
    }
    failed = []
    with tempfile.TemporaryDirectory(prefix="kvplan-bench-") as scratch:
        for name in selected:
            output = Path(scratch) / f"{name}.json"
            command = [sys.executable, str(common.BENCH_DIR / f"{name}.py"), "--output", str(output)]
            if args.quick:
                command.append("--quick")
            print(f"== {name}", flush=True)
            run = common.run_measured(command, env=common.clean_environment(), timeout=1800)
            sys.stdout.write(run["stdout"])
            entry = {"wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"], "returncode": run["returncode"]}
            if run["returncode"] == 0 and output.exists():
                entry["results"] = json.loads(output.read_text())
            else:
                entry["error"] = run["stderr"][-3000:]
                failed.append(name)
                print(f"{name} failed:\n{run['stderr'][-3000:]}", file=sys.stderr)
            document["benchmarks"][name] = entry
    document["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common.write_json(args.output, document)
    print(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
