"""Print the figures of a bench/run.py result file as Markdown tables for docs/benchmarks.md.

    python bench/report.py [bench/results/latest.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "latest.json"


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    document = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT).read_text())
    machine = document["machine"]
    print(f"Command: `{document['command']}`, started {document['started']}, finished {document['finished']}.")
    print(f"Machine: {machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB, "
          f"{machine['platform']}, Python {machine['python']}, {machine['packages']}.\n")
    benchmarks = document["benchmarks"]
    print(_table(["benchmark", "wall s", "peak RSS MiB", "exit"],
                 [[name, f"{entry['wall_s']:.0f}", entry["peak_rss_mib"], entry["returncode"]]
                  for name, entry in benchmarks.items()]))

    if "results" in benchmarks.get("throughput", {}):
        result = benchmarks["throughput"]["results"]
        loop = result["loop"]
        print(f"\nLoop: {loop['configs']} configurations one at a time, {loop['configs_per_s']:,.0f}/s.\n")
        print(_table(["batch rows", "rows per call", "configurations/s (best)", "median", "x loop"],
                     [[f"{b['batch_rows']:,}", f"{b['rows_per_call']:,}", f"{b['configs_per_s']:,.0f}",
                       f"{b['configs_per_s_median']:,.0f}", f"{b['speedup_over_loop']:.1f}"]
                      for b in result["batches"]]))
        print()
        print(_table(["rows", "trace + lower s", "XLA compile s"],
                     [[c["rows"], f"{c['trace_and_lower_s']:.2f}", f"{c['compile_s']:.2f}"]
                      for c in result["compile"]]))

    if "results" in benchmarks.get("time_to_answer", {}):
        result = benchmarks["time_to_answer"]["results"]
        print()
        print(_table(["command", "median s", "min s", "max s", "peak RSS MiB"],
                     [[s["command"], f"{s['wall_s']['median']:.2f}", f"{s['wall_s']['min']:.2f}",
                       f"{s['wall_s']['max']:.2f}", s["peak_rss_mib"]] for s in result["startup"]]))
        print()
        rows = []
        for plan in result["plans"]:
            cold, warm = plan["cold_phases"], plan["warm_phases"]
            rows.append([Path(plan["plan"]).stem, f"{plan['cold_wall_s']:.2f}", f"{plan['warm_wall_s']['median']:.2f}",
                         " / ".join(f"{cold.get(k, float('nan')):.2f}" for k in ("import_s", "spec_s", "compile_s", "search_s")),
                         " / ".join(f"{warm.get(k, float('nan')):.2f}" for k in ("import_s", "spec_s", "compile_s", "search_s")),
                         plan["cold_peak_rss_mib"]])
        print(_table(["plan", "cold s", "warm s (median)", "cold: import / spec / compile / search s",
                      "warm: import / spec / compile / search s", "peak RSS MiB"], rows))

    if "results" in benchmarks.get("search_quality", {}):
        result = benchmarks["search_quality"]["results"]
        print()
        rows = []
        for plan in result["plans"]:
            first = plan["first_budget_within_1_percent"]
            default = next(b for b in plan["budgets"] if b["trials"] == 200)
            rows.append([Path(plan["plan"]).stem, plan["space_size"], f"{plan['exhaustive_s']:.2f}",
                         first["trials"] if first else "never", f"{first['seconds']:.2f}" if first else "-",
                         first["evaluated"] if first else "-", f"{default['seconds_median']:.2f}",
                         f"{default['max_gap'] * 100:.2f} %"])
        print(_table(["plan", "space", "exhaustive s", "trials to 1 %", "seconds", "evaluated",
                      "default (200 trials) s", "default gap"], rows))

    if "results" in benchmarks.get("tools", {}):
        result = benchmarks["tools"]["results"]
        kvplan = result["kvplan"]
        print(f"\nkvplan: cold {kvplan['cold_wall_s']:.2f} s, warm median {kvplan['warm_wall_s']['median']:.2f} s, "
              f"best {kvplan['best']}")
        for run in result["aiconfigurator"].get("runs", []):
            print(f"aiconfigurator {run['model']}: exit {run['returncode']}, {run['wall_s']:.2f} s, "
                  f"{run['peak_rss_mib']} MiB, {run['recommendation'] or run['error']}")
        llm = result["llm_analysis"].get("run", {})
        print(f"llm-analysis: {llm.get('seconds_per_call', float('nan')) * 1e3:.2f} ms per call, "
              f"{llm.get('calls')} calls, process {llm.get('wall_s', float('nan')):.2f} s, best {llm.get('best')}")

    if "results" in benchmarks.get("scaling", {}):
        result = benchmarks["scaling"]["results"]
        print()
        print(_table(["space size", "exhaustive s", "deployments/s", "process s", "peak RSS MiB"],
                     [[f"{s['space_size']:,}", f"{s['exhaustive_s']:.2f}", f"{s['deployments_per_s']:,.0f}",
                       f"{s['process_wall_s']:.1f}", s["process_peak_rss_mib"]]
                      for s in result["spaces"] if "space_size" in s]))
        print()
        print(_table(["bins", "compile s", "configurations/s (1,024 rows)", "default search s", "peak RSS MiB"],
                     [[b["bins"], f"{b['compile_s']:.2f}", f"{b['configs_per_s']:,.0f}",
                       f"{b['default_search_s']:.2f}", b["process_peak_rss_mib"]]
                      for b in result["bins"] if "bins" in b]))


if __name__ == "__main__":
    main()
