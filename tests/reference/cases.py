"""Small plans on which the closed-form cost model is compared with the reference scheduler.

Each case is DeepSeek-R1-Distill-Llama-8B on one H200 with a KV pool set by
``engine.kv_cache_tokens``, small enough that the reference simulates every request in
well under a second. The reference uses the plan's discretized length distributions and
the cost model's own step-time function, and is averaged over several seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from .scheduler import EngineLimits, Workload, draw_lengths, round_time_function, simulate

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

SEEDS = (0, 1, 2, 3)

# Metrics compared; "makespan_s" exists in batch mode only, and preemptions are counted
# over the whole run in batch mode and per second otherwise.
METRICS = ("makespan_s", "ttft_mean_s", "tpot_mean_s", "preemptions")

# Largest relative error of the cost model against the reference.
RELATIVE_TOLERANCE = 0.15
# Preemption counts agree within this relative error or this many events. The absolute
# allowance counts events over a whole batch run, so it does not apply in rate and
# concurrency mode, where preemptions are counted per second.
PREEMPTION_RELATIVE_TOLERANCE = 0.25
PREEMPTION_ABSOLUTE_TOLERANCE = 20

# In rate and concurrency mode the reference measures steady state: requests that arrive
# before this share of all requests is sent, or after the last clients stop, are dropped.
WARMUP_SHARE = 0.2


@dataclasses.dataclass(frozen=True)
class Case:
    """One comparison: a workload, a KV pool and a deployment."""

    name: str
    description: str
    kv_cache_tokens: int
    requests: int
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    dp: int = 1
    mode: str = "batch"
    arrival_rate_per_s: float = 0.0
    concurrency: int = 0
    prompt_median: int = 100
    output_median: int = 400
    output_sigma: float = 0.6
    output_max: int = 2000

    def plan_dict(self) -> dict:
        workload = {
            "name": f"reference-{self.name}",
            "prompt_tokens": {"distribution": "lognormal", "median": self.prompt_median, "sigma": 0.45,
                              "max": 4 * self.prompt_median},
            "output_tokens": {"distribution": "lognormal", "median": self.output_median,
                              "sigma": self.output_sigma, "max": self.output_max},
        }
        if self.mode == "batch":
            workload["requests"] = self.requests * self.dp
        elif self.mode == "rate":
            workload["arrival_rate"] = f"{self.arrival_rate_per_s * self.dp}/s"
        else:
            workload["concurrency"] = self.concurrency * self.dp
        return {
            "apiVersion": "kvplan/v1",
            "kind": "Plan",
            "name": f"reference-{self.name}",
            "model": "models/deepseek-r1-distill-llama-8b.yaml",
            "hardware": {"node": "h200-sxm-8"},
            "workload": workload,
            "engine": {"kv_cache_tokens": self.kv_cache_tokens},
            "search": {"gpu_budget": 8},
        }


CASES = (
    Case("cohort", "all requests fit at once; no KV pressure", kv_cache_tokens=200_000, requests=200),
    Case("seqs-bound", "max_num_seqs 64 binds; requests queue, no preemption",
         kv_cache_tokens=60_000, requests=200, max_num_seqs=64),
    Case("cohort-overflow", "all prompts fit, outputs outgrow the pool",
         kv_cache_tokens=20_000, requests=100),
    Case("preempt", "KV binds at about 43 running; outputs sum to 5x the pool",
         kv_cache_tokens=20_000, requests=200),
    Case("preempt-deep", "KV binds at about 35 running; outputs sum to 9x the pool",
         kv_cache_tokens=16_000, requests=300),
    Case("preempt-long", "longer outputs (median 800) in a pool of 12,000 tokens",
         kv_cache_tokens=12_000, requests=120, output_median=800, output_max=3000),
    Case("preempt-steady", "the preempt case with 1,000 requests: a long steady phase",
         kv_cache_tokens=20_000, requests=1000),
    Case("preempt-wide", "the 8B example plan's lengths; KV binds at about 110 running",
         kv_cache_tokens=60_000, requests=1000, prompt_median=95, output_median=600, output_sigma=0.5,
         output_max=4000),
    Case("budget-bound", "a token budget of 96 binds below the running count",
         kv_cache_tokens=200_000, requests=200, max_num_batched_tokens=96),
    Case("dp2-preempt", "two replicas routed by 4 x waiting + running, KV binds in each",
         kv_cache_tokens=16_000, requests=150, dp=2),
    Case("closed-loop", "64 clients per replica, KV binds at about 35 running",
         kv_cache_tokens=16_000, requests=600, mode="concurrency", concurrency=64),
    Case("open-loop", "Poisson arrivals at 6 requests/s, about 18 running, below capacity",
         kv_cache_tokens=60_000, requests=300, mode="rate", arrival_rate_per_s=6.0),
)


def within_tolerance(case: Case, metric: str, fast: float | None, reference: float | None) -> bool:
    """Return whether the cost model's ``fast`` value agrees with the reference's."""
    if fast is None or reference is None:
        return False
    if metric == "preemptions":
        absolute = PREEMPTION_ABSOLUTE_TOLERANCE if case.mode == "batch" else 0.0
        return abs(fast - reference) <= max(PREEMPTION_RELATIVE_TOLERANCE * reference, absolute)
    return abs(fast - reference) <= RELATIVE_TOLERANCE * abs(reference)


@dataclasses.dataclass(frozen=True)
class Comparison:
    case: Case
    fast: dict[str, float | None]
    reference: dict[str, float | None]
    reference_by_seed: list[dict[str, float | None]]

    def ratio(self, metric: str) -> float | None:
        fast = self.fast[metric]
        reference = self.reference[metric]
        if fast is None or reference is None or reference == 0:
            return None
        return fast / reference

    def agrees(self, metric: str) -> bool:
        return within_tolerance(self.case, metric, self.fast[metric], self.reference[metric])


def _plan(case: Case):
    import kvplan

    return kvplan.load_plan_from_dict(case.plan_dict(), base_dir=EXAMPLES_DIR)


def _reference_metrics(case: Case, result) -> dict[str, float | None]:
    requests = sorted(result.requests, key=lambda request: request.arrival_s)
    if case.mode != "batch":
        start = int(len(requests) * WARMUP_SHARE)
        stop = len(requests) - (case.concurrency if case.mode == "concurrency" else 0)
        requests = requests[start:stop]
    ttft = [request.first_token_s - request.arrival_s for request in requests]
    tpot = [(request.finish_s - request.first_token_s) / max(request.output_tokens - 1, 1)
            for request in requests]
    preemptions: float = float(result.preemptions)
    makespan: float | None = result.makespan_s
    if case.mode != "batch":
        # Preemptions per second over the measured window, counted on its requests.
        window = max(request.finish_s for request in requests) - requests[0].arrival_s
        preemptions = sum(request.preemptions for request in requests) / window
        makespan = None
    return {
        "makespan_s": makespan,
        "ttft_mean_s": float(np.mean(ttft)),
        "tpot_mean_s": float(np.mean(tpot)),
        "preemptions": preemptions,
        # KV tokens a request held when it was preempted, over the whole run.
        "victim_context_tokens": (result.preempted_tokens / result.preemptions) if result.preemptions else None,
    }


@functools.cache
def compare(case: Case) -> Comparison:
    """Evaluate ``case`` with the cost model and with the reference scheduler."""
    from kvplan.costmodel.evaluate import CostModel
    from kvplan.optimizer.search import _as_deployment

    plan = _plan(case)
    model = CostModel(plan)
    deployment = _as_deployment(plan, {"dp": case.dp, "max_num_seqs": case.max_num_seqs,
                                       "max_num_batched_tokens": case.max_num_batched_tokens})
    evaluation = model.evaluate([deployment])[0]
    if not evaluation.feasible:
        raise ValueError(f"case {case.name} is infeasible: {evaluation.infeasible_reason}")
    metrics = evaluation.metrics
    fast = {
        "makespan_s": metrics["makespan_s"],
        "ttft_mean_s": metrics["ttft_s"]["mean"],
        "tpot_mean_s": metrics["tpot_s"]["mean"],
        "preemptions": metrics["preemptions"],
    }

    inputs = model.inputs
    block_size = int(inputs.block_size)
    limits = EngineLimits(
        max_num_seqs=case.max_num_seqs,
        max_num_batched_tokens=case.max_num_batched_tokens,
        kv_blocks=int(metrics["kv_capacity_tokens"]) // block_size,
        block_size=block_size,
    )
    step_time = round_time_function(model, deployment)
    count = case.requests * case.dp
    by_seed = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        prompts = draw_lengths(inputs.prompt_values, inputs.prompt_probabilities, count, rng)
        outputs = draw_lengths(inputs.output_values, inputs.output_probabilities, count, rng)
        workload = Workload(prompts, outputs, case.mode, case.arrival_rate_per_s * case.dp,
                            case.concurrency * case.dp, seed)
        result = simulate(workload, limits, case.dp, step_time)
        by_seed.append(_reference_metrics(case, result))
    reference = {}
    for metric in (*METRICS, "victim_context_tokens"):
        values = [run[metric] for run in by_seed if run[metric] is not None]
        reference[metric] = float(np.mean(values)) if values else None
    return Comparison(case, fast, reference, by_seed)
