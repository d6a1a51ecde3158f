"""The closed-form cost model against the per-request reference scheduler.

Both sides use the same plan, the same KV pool and the same step-time function
(``hardware.round_time``), so a disagreement is in the scheduling arithmetic. The
reference is averaged over ``cases.SEEDS``.
"""

from __future__ import annotations

import numpy as np
import pytest

from .cases import CASES, METRICS, PREEMPTION_RELATIVE_TOLERANCE, RELATIVE_TOLERANCE, compare
from .scheduler import EngineLimits, StepWork, Workload, simulate

# Disagreements measured and not yet fixed, as (case, metric): the measured values and
# the cause found, as measured with `python -m tests.reference.report`. Each is a strict
# xfail, so a fix shows up as a failure until the entry is removed.
KNOWN_DISAGREEMENTS: dict[tuple[str, str], str] = {}

CASES_BY_NAME = {case.name: case for case in CASES}


def _parameters():
    parameters = []
    for case in CASES:
        for metric in METRICS:
            if metric == "makespan_s" and case.mode != "batch":
                continue
            reason = KNOWN_DISAGREEMENTS.get((case.name, metric))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            parameters.append(pytest.param(case.name, metric, id=f"{case.name}-{metric}", marks=marks))
    return parameters


@pytest.mark.parametrize(("case_name", "metric"), _parameters())
def test_fast_model_matches_reference(case_name, metric):
    comparison = compare(CASES_BY_NAME[case_name])
    fast = comparison.fast[metric]
    reference = comparison.reference[metric]
    tolerance = PREEMPTION_RELATIVE_TOLERANCE if metric == "preemptions" else RELATIVE_TOLERANCE

    assert fast is not None
    assert comparison.agrees(metric), (
        f"{metric}: cost model {fast:.4g}, reference {reference:.4g}, allowed relative error {tolerance}"
    )


def test_preemption_cases_preempt():
    # The cases named for preemption must preempt in the reference, or the checks above
    # would compare two zeros.
    for name in ("cohort-overflow", "preempt", "preempt-deep", "preempt-long", "dp2-preempt", "closed-loop"):
        assert compare(CASES_BY_NAME[name]).reference["preemptions"] > 0, name


# --- The reference scheduler's own rules, on hand-made cases ---------------------------


def _constant_step(work: StepWork) -> float:
    return 1.0


def _run(prompts, outputs, blocks, max_num_seqs=100, budget=1000, block_size=4, replicas=1):
    limits = EngineLimits(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, kv_blocks=blocks,
                          block_size=block_size)
    workload = Workload(np.array(prompts), np.array(outputs), "batch")
    return simulate(workload, limits, replicas, _constant_step)


def test_reference_one_request_one_step_per_token():
    result = _run([8], [5], blocks=10)

    request = result.requests[0]
    assert request.first_token_s == 1.0  # the prefill step samples the first token
    assert request.finish_s == 5.0
    assert result.preemptions == 0


def test_reference_chunked_prefill_uses_budget():
    # A 10-token prompt under a 4-token budget takes three steps before its first token.
    result = _run([10], [2], blocks=10, budget=4)

    assert result.requests[0].first_token_s == 3.0


def test_reference_max_num_seqs_queues_requests():
    result = _run([4, 4, 4], [3, 3, 3], blocks=100, max_num_seqs=2)

    first_tokens = [request.first_token_s for request in result.requests]
    assert first_tokens == [1.0, 1.0, 4.0]


def test_reference_preempts_newest_and_recomputes():
    # Two requests of 4-token prompts in 3 blocks of 4 tokens: the second one is admitted
    # (prompts take 2 blocks), then the first one's growth needs a third block, then a
    # fourth, which only preempting the newest request frees.
    result = _run([4, 4], [6, 6], blocks=3)

    first, second = result.requests
    assert first.preemptions == 0
    assert second.preemptions >= 1
    assert first.finish_s < second.finish_s
    assert result.peak_kv_usage == 1.0


def test_reference_routes_to_least_loaded_replica():
    result = _run([4] * 4, [2] * 4, blocks=100, max_num_seqs=1, replicas=2)

    # With one running slot per replica, requests alternate between the replicas and the
    # last two start after the first two finish.
    first_tokens = sorted(request.first_token_s for request in result.requests)
    assert first_tokens == [1.0, 1.0, 3.0, 3.0]
