"""Print the agreement table of the cost model and the reference scheduler as Markdown.

Run from the repository root::

    python -m tests.reference.report

It evaluates every case in ``tests/reference/cases.py`` with both models (about 30 s
of CPU time) and prints the table that docs/model.md shows. With ``--running-sweep`` it
runs only the reference, in closed loop, at two running counts and on the workload of
vLLM PR 44594, and prints preemptions per request and victim contexts (about a minute).
With ``--examples`` it compares the two on example plans at full scale, deployment by
deployment, with seeds 0 and 1 of the reference (about two minutes).
"""

from __future__ import annotations

import sys

import numpy as np

from .cases import CASES, METRICS, SEEDS, compare
from .scheduler import EngineLimits, Workload, simulate

METRIC_LABELS = {
    "makespan_s": "makespan (s)",
    "ttft_mean_s": "mean TTFT (s)",
    "tpot_mean_s": "mean TPOT (s)",
    "preemptions": "preemptions",
}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) < 1e-9:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def render_markdown() -> str:
    lines = [
        f"Reference: mean of seeds {', '.join(str(seed) for seed in SEEDS)}. Preemptions are counted "
        "over the run in batch mode and per second otherwise. Victim context: KV tokens a request "
        "held when the reference preempted it.",
        "",
        "| case | setting | metric | kvplan | reference | kvplan / reference | agrees |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for case in CASES:
        comparison = compare(case)
        setting = case.description
        for metric in METRICS:
            if metric == "makespan_s" and case.mode != "batch":
                continue
            ratio = comparison.ratio(metric)
            lines.append(
                f"| {case.name} | {setting} | {METRIC_LABELS[metric]} | {_number(comparison.fast[metric])} | "
                f"{_number(comparison.reference[metric])} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                f"{'yes' if comparison.agrees(metric) else 'no'} |"
            )
            setting = ""
        victim = comparison.reference["victim_context_tokens"]
        if victim is not None:
            lines.append(f"| {case.name} | | victim context (tokens) | - | {victim:,.0f} | - | - |")
    return "\n".join(lines) + "\n"


def _closed_loop_preemptions(prompts, outputs, kv_tokens: int, clients: int) -> tuple[float, float]:
    """Return preemptions per request and mean victim context of a closed-loop run.

    Steps take a constant time: with requests arriving only at step ends, the
    scheduling decisions do not depend on step durations. Requests sent before a
    quarter of the run or by the last ``clients`` sends are left out as warm-up and
    drain.
    """
    limits = EngineLimits(max_num_seqs=10_000, max_num_batched_tokens=8192, kv_blocks=kv_tokens // 16,
                          block_size=16)
    workload = Workload(np.asarray(prompts), np.asarray(outputs), "concurrency", concurrency=clients)
    result = simulate(workload, limits, 1, lambda work: 0.01)
    ordered = sorted(result.requests, key=lambda request: request.arrival_s)
    measured = ordered[len(ordered) // 4: len(ordered) - clients]
    per_request = float(np.mean([request.preemptions for request in measured]))
    return per_request, result.preempted_tokens / max(result.preemptions, 1)


def render_running_sweep() -> str:
    """Preemptions per request at two running counts, and the workload of vLLM PR 44594."""
    rng = np.random.default_rng(0)
    lines = ["| workload | KV pool (tokens) | clients | preemptions per request | victim context (tokens) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for kv_tokens, clients, count in ((60_000, 200, 1500), (240_000, 800, 4000)):
        # The 8B example plan's lengths (medians 95 and 600, sigmas 0.45 and 0.5).
        prompts = np.clip(np.round(np.exp(np.log(95) + 0.45 * rng.standard_normal(count))), 1, 400)
        outputs = np.clip(np.round(np.exp(np.log(600) + 0.5 * rng.standard_normal(count))), 1, 4000)
        per_request, victim = _closed_loop_preemptions(prompts, outputs, kv_tokens, clients)
        lines.append(f"| 8B example lengths | {kv_tokens:,} | {clients} | {per_request:.2f} | {victim:,.0f} |")
    # vLLM PR 44594: 1,000-token prompts, 5,000-token outputs, 128 clients, 299,584 tokens.
    per_request, victim = _closed_loop_preemptions(np.full(1500, 1000), np.full(1500, 5000), 299_584, 128)
    lines.append(f"| 1,000 + 5,000 tokens (PR 44594) | 299,584 | 128 | {per_request:.2f} | {victim:,.0f} |")
    return "\n".join(lines) + "\n"


# Example plans and deployments compared at full scale by ``--examples``.
EXAMPLE_DEPLOYMENTS = (
    ("qwen-32b-8xh200", {"tp": 4, "pp": 2, "max_num_seqs": 2048}),
    ("qwen-32b-8xh200", {"dp": 8, "max_num_seqs": 256}),
    ("llama-70b-8xh200", {"dp": 4, "tp": 2, "max_num_seqs": 512}),
    ("llama-405b-8xh200", {"tp": 8, "max_num_seqs": 2048}),
)
EXAMPLE_SEEDS = (0, 1)


def render_examples() -> str:
    """Return a Markdown table of makespan and preemptions of example plans, cost model against reference."""
    import kvplan
    from kvplan.costmodel.evaluate import CostModel
    from kvplan.optimizer.search import _as_deployment

    from .cases import EXAMPLES_DIR
    from .scheduler import draw_lengths, round_time_function

    lines = ["| plan | deployment | makespan (s): kvplan | reference | ratio | preemptions: kvplan | reference | ratio |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, config in EXAMPLE_DEPLOYMENTS:
        plan = kvplan.load_plan(EXAMPLES_DIR / "h200-reasoning" / f"{name}.yaml")
        model = CostModel(plan)
        deployment = _as_deployment(plan, config)
        metrics = model.evaluate([deployment])[0].metrics
        inputs = model.inputs
        block_size = int(inputs.block_size)
        limits = EngineLimits(deployment.max_num_seqs, deployment.max_num_batched_tokens,
                              int(metrics["kv_capacity_tokens"]) // block_size, block_size)
        step_time = round_time_function(model, deployment)
        count = int(inputs.num_requests)
        makespans, preemptions = [], []
        for seed in EXAMPLE_SEEDS:
            rng = np.random.default_rng(seed)
            prompts = draw_lengths(inputs.prompt_values, inputs.prompt_probabilities, count, rng)
            outputs = draw_lengths(inputs.output_values, inputs.output_probabilities, count, rng)
            result = simulate(Workload(prompts, outputs, "batch", seed=seed), limits, deployment.dp, step_time)
            makespans.append(result.makespan_s)
            preemptions.append(result.preemptions)
        makespan, preempted = float(np.mean(makespans)), float(np.mean(preemptions))
        label = " ".join(f"{key}={value}" for key, value in config.items())
        lines.append(
            f"| {name} | {label} | {metrics['makespan_s']:,.0f} | {makespan:,.0f} | "
            f"{metrics['makespan_s'] / makespan:.2f} | {metrics['preemptions']:,.0f} | {preempted:,.0f} | "
            f"{metrics['preemptions'] / preempted:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments == ["--running-sweep"]:
        sys.stdout.write(render_running_sweep())
        return 0
    if arguments == ["--examples"]:
        sys.stdout.write(render_examples())
        return 0
    if arguments:
        sys.stderr.write("usage: python -m tests.reference.report [--running-sweep | --examples]\n")
        return 2
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
