"""The search compiles the cost model once per plan.

Counted with the trace counter of ``evaluate_arrays``, not with a clock: every trace of
the jitted model is followed by an XLA compilation, so one trace means one compile.
"""

from __future__ import annotations

import kvplan
from kvplan.costmodel import evaluate as evaluate_module

# Its exhaustive space (200 deployments) spans several chunks of rows.
PLAN_NAME = "qwen-32b-8xh200"


def test_searches_of_plan_trace_model_once(example_plans):
    plan = example_plans[PLAN_NAME]
    mode = plan.workload.arrival_mode
    evaluate_module.evaluate_arrays.clear_cache()
    before = evaluate_module.TRACE_COUNTS[mode]

    kvplan.optimize(plan, seed=0)
    exhaustive = kvplan.optimize(plan, exhaustive=True)
    kvplan.optimize(plan, seed=1, trials=60)
    kvplan.evaluate(plan, [{"dp": 2, "tp": 4}])

    assert exhaustive.evaluated > 2 * evaluate_module.BATCH_ROWS
    assert evaluate_module.TRACE_COUNTS[mode] - before == 1


def test_evaluate_raw_pads_chunks_to_fixed_rows(example_plans):
    plan = example_plans[PLAN_NAME]
    deployments = kvplan.optimize(plan, exhaustive=True).results
    configs = [ranked.evaluation.config for ranked in deployments]
    model = evaluate_module.CostModel(plan)

    rows = evaluate_module.BATCH_ROWS + 3
    raw = model.evaluate_raw(configs[:rows])
    single = model.evaluate_raw(configs[rows - 1:rows])

    assert raw["makespan_s"].shape == (rows,)
    assert raw["makespan_s"][-1] == single["makespan_s"][0]
