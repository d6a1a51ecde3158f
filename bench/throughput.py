"""Cost model throughput: configurations evaluated per second by the vectorized model
at batch sizes from 1 to 1,000,000, against a Python loop that calls the same jitted
model with one configuration at a time. Compile time is reported separately.

Batches of up to ``SINGLE_CALL_ROWS`` rows are one call of ``evaluate_arrays`` compiled
for exactly that many rows; larger batches are evaluated as consecutive calls of the
``SINGLE_CALL_ROWS``-row executable, since one call over a million rows would hold
tens of GB of intermediate latency grids.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PLAN = common.EXAMPLE_PLAN_DIR / "qwen-32b-8xh200.yaml"
BATCH_SIZES = (1, 10, 100, 1_000, 10_000, 100_000)
QUICK_BATCH_SIZES = (1, 10, 100, 1_000, 10_000)
# At a few thousand configurations per second a million takes minutes, so the
# 1,000,000 batch runs only when KVPLAN_BENCH_MILLION=1 is set.
MILLION = 1_000_000
SINGLE_CALL_ROWS = 1_000
LOOP_CONFIGS = 200
QUICK_LOOP_CONFIGS = 50


def main() -> None:
    args = common.parse_output_argument()
    import jax
    import numpy as np

    import kvplan
    from kvplan.costmodel.evaluate import CostModel, evaluate_arrays
    from kvplan.optimizer.space import build_search_space

    plan = kvplan.load_plan(PLAN)
    space = build_search_space(plan)
    model = CostModel(plan, {layout.tp for layout in space.layouts}, {layout.pp for layout in space.layouts})
    mode = plan.workload.arrival_mode
    deployments = space.deployments()
    batch_sizes = QUICK_BATCH_SIZES if args.quick else BATCH_SIZES
    if os.environ.get("KVPLAN_BENCH_MILLION") == "1":
        batch_sizes = (*batch_sizes, MILLION)

    def batch_of(rows: int):
        repeated = (deployments * (rows // len(deployments) + 1))[:rows]
        return jax.tree_util.tree_map(jax.numpy.asarray, model.config_batch(repeated))

    compiled = {}
    compile_times = {}

    def executable(rows: int):
        if rows not in compiled:
            batch = batch_of(rows)
            start = time.perf_counter()
            lowered = evaluate_arrays.lower(model.inputs, batch, mode=mode)
            traced = time.perf_counter()
            compiled[rows] = lowered.compile()
            compile_times[rows] = {"trace_and_lower_s": traced - start,
                                   "compile_s": time.perf_counter() - traced}
        return compiled[rows]

    # The plain loop: one configuration per call of the model compiled for one row.
    loop_count = QUICK_LOOP_CONFIGS if args.quick else LOOP_CONFIGS
    one_row = executable(1)
    rows_of_one = [
        jax.tree_util.tree_map(jax.numpy.asarray, model.config_batch([deployments[i % len(deployments)]]))
        for i in range(loop_count)
    ]
    jax.block_until_ready(one_row(model.inputs, rows_of_one[0]))
    start = time.perf_counter()
    for config in rows_of_one:
        jax.block_until_ready(one_row(model.inputs, config))
    loop_seconds = time.perf_counter() - start
    loop_rate = loop_count / loop_seconds

    results = []
    for rows in batch_sizes:
        call_rows = min(rows, SINGLE_CALL_ROWS)
        function = executable(call_rows)
        batch = batch_of(call_rows)
        calls = -(-rows // call_rows)
        jax.block_until_ready(function(model.inputs, batch))

        def evaluate_all():
            outputs = None
            for _ in range(calls):
                outputs = function(model.inputs, batch)
                np.asarray(outputs["makespan_s"])
            return outputs

        times = common.time_repeated(evaluate_all, min_runs=3 if rows <= 1_000 else 1,
                                     min_seconds=0.5, max_runs=200)
        best = min(times)
        rate = calls * call_rows / best
        results.append({
            "batch_rows": rows,
            "rows_per_call": call_rows,
            "calls": calls,
            "seconds": common.summarize(times),
            "configs_per_s": rate,
            "configs_per_s_median": calls * call_rows / sorted(times)[len(times) // 2],
            "speedup_over_loop": rate / loop_rate,
        })
        print(f"batch {rows:>9,}: {rate:12,.0f} configurations/s ({rate / loop_rate:7.1f} x the loop)",
              flush=True)

    common.write_json(args.output, {
        "plan": str(PLAN.relative_to(common.REPO_ROOT)),
        "arrival_mode": mode,
        "loop": {"configs": loop_count, "seconds": loop_seconds, "configs_per_s": loop_rate},
        "batches": results,
        "compile": [{"rows": rows, **times} for rows, times in sorted(compile_times.items())],
        "peak_rss_mib": common.peak_rss_mib(),
    })


if __name__ == "__main__":
    main()
