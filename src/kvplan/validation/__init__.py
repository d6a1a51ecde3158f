"""Compare kvplan's predictions with measured vLLM behaviour.

``cases.yaml`` beside this file holds the measurements and what a faithful model must
reproduce. :func:`run_cases` evaluates each case with the public API on the example
plans, and :func:`render_markdown` writes the comparison table of
``docs/validation.md``. Regenerate it with ``python -m kvplan.validation --output
docs/validation.md`` from the repository root.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import yaml

CASES_PATH = Path(__file__).with_name("cases.yaml")

# Ratios to the fastest configuration must lie within this fraction of the measured one.
RATIO_TOLERANCE = 0.30
# End-to-end latency of the short CI benchmark must lie within this fraction.
VALUE_TOLERANCE = 0.25
# Minimum speed-up of TP 8 over PP 8 for the dense 405B model.
MIN_TP_OVER_PP = 2.0
# Bounds on TPOT at the largest max_num_seqs over TPOT at the smallest.
TPOT_RATIO_BOUNDS = (2.5, 10.0)
# Preemptions, as a share of requests, below which the smallest max_num_seqs counts as
# calm and above which the largest counts as thrashing.
CALM_PREEMPTION_SHARE = 0.01
THRASH_PREEMPTION_SHARE = 0.10
# Trend checks ignore changes smaller than this fraction: past the point where the KV
# pool, not max_num_seqs, caps admission, the model's values stay flat up to float noise.
TREND_TOLERANCE = 0.01

# Known gaps of the model, each with its reason as far as it is understood.
KNOWN_GAPS = (
    "paper-32b-small-tp-wins: DP 8 loses to DP 4 x TP 2 by 1.33x in the model and by 1.77x on "
    "the measured node; the check passes, but at the low end of its band. A per-request "
    "simulation of vLLM's scheduling rules with the model's own step times also gave 1.33x (one draw "
    "of 2,000 requests), so the remaining gap is not in the scheduling arithmetic. "
    "What else slows eight independent engines on one node (host CPU shared by eight "
    "schedulers, for one) is not modelled.",
    "paper-8b-concurrency-sweep: mean TTFT at max_num_seqs 10,000 is 86 s in the model and "
    "136 s in the per-request simulation (one draw of the requests). The model admits about 8,000 "
    "requests in the first fill, while in the simulation the pool fills before the fill ends and "
    "fewer get their first token early. The measured 2.7 s is below both; the source does not say "
    "how its TTFT was taken.",
    "Absolute makespans of the characterization are not comparable across models: each "
    "model wrote its own answers, so only ratios between configurations of one model "
    "are checked.",
)

PLAN_FILES = {
    "deepseek-r1-distill-llama-8b": "h200-reasoning/llama-8b-1xh200.yaml",
    "deepseek-r1-distill-qwen-32b": "h200-reasoning/qwen-32b-8xh200.yaml",
    "deepseek-r1-distill-llama-70b": "h200-reasoning/llama-70b-8xh200.yaml",
    "llama-3.1-405b": "h200-reasoning/llama-405b-8xh200.yaml",
}


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison of a prediction with a measurement or an expectation."""

    quantity: str
    measured: str
    predicted: str
    expectation: str
    passed: bool | None  # None: reported, not asserted


@dataclasses.dataclass(frozen=True)
class CaseResult:
    case_id: str
    source: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed is not False for check in self.checks)


def load_cases() -> list[dict[str, Any]]:
    with open(CASES_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)["cases"]


def _evaluate(plan, configs):
    from kvplan.optimizer.search import evaluate

    return [ranked.evaluation for ranked in sorted(evaluate(plan, configs).results,
                                                     key=lambda r: configs.index(_config_of(r)))]


def _config_of(ranked) -> dict[str, int]:
    config = ranked.evaluation.config
    return {key: getattr(config, key) for key in ("dp", "tp", "pp")}


def _check_arch(case: dict[str, Any], examples: Path) -> list[Check]:
    from kvplan.costmodel.architecture import active_parameter_count, kv_bytes_per_token, parameter_count
    from kvplan.spec import load_model

    checks = []
    for field, function in (("parameters", parameter_count), ("active_parameters", active_parameter_count),
                            ("kv_bytes_per_token_bf16", kv_bytes_per_token)):
        for model_name, measured in case[field].items():
            architecture = load_model(examples / "models" / f"{model_name}.yaml").architecture
            predicted = function(architecture)
            checks.append(Check(f"{field} {model_name}", f"{measured:,}", f"{predicted:,}", "exact",
                                predicted == measured))
    return checks


def _check_ranking_32b(case: dict[str, Any], examples: Path) -> list[Check]:
    from kvplan.spec import load_plan

    plan = load_plan(examples / PLAN_FILES[case["model"]])
    rows = case["measured_makespan_s"]
    configs = [{"dp": row["dp"], "tp": row["tp"], "pp": row["pp"]} for row in rows]
    evaluations = _evaluate(plan, configs)
    predicted = [evaluation.metrics.get("makespan_s") for evaluation in evaluations]
    measured = [row["value"] for row in rows]

    checks = []
    measured_order = sorted(range(len(rows)), key=lambda i: measured[i])
    predicted_order = sorted(range(len(rows)), key=lambda i: predicted[i] if predicted[i] else float("inf"))
    label = [f"DP{r['dp']}xTP{r['tp']}xPP{r['pp']}" for r in rows]
    checks.append(Check(
        "ranking", " < ".join(label[i] for i in measured_order),
        " < ".join(label[i] for i in predicted_order), "same order", measured_order == predicted_order,
    ))
    fastest_measured = min(measured)
    fastest_predicted = min(p for p in predicted if p)
    for i, row in enumerate(rows):
        measured_ratio = measured[i] / fastest_measured
        predicted_ratio = predicted[i] / fastest_predicted if predicted[i] else float("inf")
        within = abs(predicted_ratio / measured_ratio - 1.0) <= RATIO_TOLERANCE
        checks.append(Check(
            f"makespan {label[i]}", f"{measured[i]:,.0f} s (ratio {measured_ratio:.2f})",
            f"{predicted[i]:,.0f} s (ratio {predicted_ratio:.2f})",
            f"ratio within {RATIO_TOLERANCE:.0%}", within,
        ))
    return checks


def _check_405b(case: dict[str, Any], examples: Path) -> list[Check]:
    from kvplan.spec import load_plan

    plan = load_plan(examples / PLAN_FILES[case["model"]])
    rows = case["measured_makespan_s"]
    configs = [{"dp": row["dp"], "tp": row["tp"], "pp": row["pp"]} for row in rows]
    tp8, pp8 = _evaluate(plan, configs)
    measured_ratio = rows[1]["value"] / rows[0]["value"]
    predicted_ratio = pp8.metrics["makespan_s"] / tp8.metrics["makespan_s"]
    checks = [Check("makespan PP8 / TP8", f"{measured_ratio:.1f}", f"{predicted_ratio:.1f}",
                    f">= {MIN_TP_OVER_PP:g}", predicted_ratio >= MIN_TP_OVER_PP)]

    too_small = [{"dp": 2, "tp": 4, "pp": 1}, {"dp": 1, "tp": 4, "pp": 1}, {"dp": 1, "tp": 2, "pp": 2},
                 {"dp": 1, "tp": 1, "pp": 1}]
    for config, evaluation in zip(too_small, _evaluate(plan, too_small)):
        reason = evaluation.infeasible_reason or ""
        checks.append(Check(
            f"DP{config['dp']}xTP{config['tp']}xPP{config['pp']}", "weights do not fit",
            reason.split(":")[0] if reason else "feasible", "infeasible, weights do not fit",
            not evaluation.feasible and reason.startswith("weights do not fit"),
        ))
    return checks


def _check_sweep_8b(case: dict[str, Any], examples: Path) -> list[Check]:
    from kvplan.spec import load_plan

    plan = load_plan(examples / PLAN_FILES[case["model"]])
    sweep = case["max_num_seqs"]
    configs = [{"dp": 1, "tp": 1, "pp": 1, "max_num_seqs": seqs} for seqs in sweep]
    from kvplan.optimizer.search import evaluate

    by_seqs = {r.evaluation.config.max_num_seqs: r.evaluation.metrics for r in evaluate(plan, configs).results}
    ttft = [by_seqs[s]["ttft_s"]["mean"] for s in sweep]
    tpot = [by_seqs[s]["tpot_s"]["mean"] for s in sweep]
    e2e = [by_seqs[s]["e2e_s"]["mean"] for s in sweep]
    requests = plan.workload.requests
    low, high = sweep[0], sweep[-1]
    tpot_ratio = by_seqs[high]["tpot_s"]["mean"] / by_seqs[low]["tpot_s"]["mean"]

    def series(values, unit="s"):
        return ", ".join(f"{v:.3g}" for v in values) + f" {unit}"

    measured = case["measured"]
    return [
        Check("TTFT mean by max_num_seqs", measured["ttft"], series(ttft),
              f"non-increasing (within {TREND_TOLERANCE:.0%})",
              all(b <= a * (1 + TREND_TOLERANCE) for a, b in zip(ttft, ttft[1:]))),
        Check("TPOT mean by max_num_seqs", f"{measured['tpot_s_at_1000']} s to {measured['tpot_s_at_10000']} s",
              series(tpot), f"non-decreasing (within {TREND_TOLERANCE:.0%})",
              all(b >= a * (1 - TREND_TOLERANCE) for a, b in zip(tpot, tpot[1:]))),
        Check(f"TPOT({high}) / TPOT({low})",
              f"{measured['tpot_s_at_10000'] / measured['tpot_s_at_1000']:.1f}", f"{tpot_ratio:.1f}",
              f"between {TPOT_RATIO_BOUNDS[0]:g} and {TPOT_RATIO_BOUNDS[1]:g}",
              TPOT_RATIO_BOUNDS[0] <= tpot_ratio <= TPOT_RATIO_BOUNDS[1]),
        Check(f"preemptions at {low}", "KV use stable", f"{by_seqs[low]['preemptions']:,.0f}",
              f"< {CALM_PREEMPTION_SHARE:.0%} of {requests:,} requests",
              by_seqs[low]["preemptions"] < CALM_PREEMPTION_SHARE * requests),
        Check(f"preemptions at {high}", "frequent", f"{by_seqs[high]['preemptions']:,.0f}",
              f"> {THRASH_PREEMPTION_SHARE:.0%} of {requests:,} requests",
              by_seqs[high]["preemptions"] > THRASH_PREEMPTION_SHARE * requests),
        Check(f"KV usage at {high}", "100 %", f"{by_seqs[high]['peak_kv_usage']:.0%}", "100 %",
              by_seqs[high]["peak_kv_usage"] >= 0.999),
        Check("mean e2e lowest at", "2000", str(sweep[e2e.index(min(e2e))]), "reported, not asserted", None),
    ]


def _check_ci_short(case: dict[str, Any], examples: Path) -> list[Check]:
    from kvplan.optimizer.search import evaluate
    from kvplan.spec import load_plan_from_dict

    checks = []
    for row in case["measured_e2e_s"]:
        document = {
            "apiVersion": "kvplan/v1",
            "kind": "Plan",
            "name": f"ci-{row['model']}",
            "model": f"models/{row['model']}.yaml",
            "hardware": {"node": "h200-sxm-8", "nodes": 1},
            "workload": {
                "name": "ci-short",
                "prompt_tokens": {"distribution": "fixed", "value": 32},
                "output_tokens": {"distribution": "fixed", "value": 128},
                "requests": 8,
            },
            "objective": "makespan",
        }
        plan = load_plan_from_dict(document, base_dir=examples)
        metrics = evaluate(plan, [{"tp": row["tp"]}]).results[0].evaluation.metrics
        predicted = metrics["e2e_s"]["mean"]
        error = predicted / row["value"] - 1.0
        checks.append(Check(
            f"e2e mean {row['model']} TP{row['tp']}", f"{row['value']:.3f} s", f"{predicted:.3f} s ({error:+.0%})",
            f"within {VALUE_TOLERANCE:.0%}", abs(error) <= VALUE_TOLERANCE,
        ))
    return checks


_RUNNERS = {
    "arch-exact": _check_arch,
    "paper-32b-small-tp-wins": _check_ranking_32b,
    "paper-405b-tp-over-pp": _check_405b,
    "paper-8b-concurrency-sweep": _check_sweep_8b,
    "vllm-ci-h200-short": _check_ci_short,
}


def run_cases(examples: str | os.PathLike[str] = "examples") -> list[CaseResult]:
    """Evaluate every case on the example specs under ``examples``."""
    examples = Path(examples)
    results = []
    for case in load_cases():
        runner = _RUNNERS[case["id"]]
        results.append(CaseResult(case["id"], case["source"], tuple(runner(case, examples))))
    return results


def render_markdown(results: list[CaseResult]) -> str:
    passed = sum(result.passed for result in results)
    lines = [
        "# Validation",
        "",
        "kvplan's predictions beside measured vLLM behaviour, one row per check. Generated",
        "by `python -m kvplan.validation --output docs/validation.md` from the repository",
        "root; the measurements and their sources are in `src/kvplan/validation/cases.yaml`.",
        "",
        f"{passed} of {len(results)} cases pass.",
        "",
        "| case | quantity | measured | predicted | expected | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        for check in result.checks:
            verdict = {True: "pass", False: "**fail**", None: "reported"}[check.passed]
            lines.append(f"| {result.case_id} | {check.quantity} | {check.measured} | {check.predicted} | "
                         f"{check.expectation} | {verdict} |")
    lines += ["", "## Where the model is still off", ""]
    lines += [f"- {gap}" for gap in KNOWN_GAPS]
    return "\n".join(lines) + "\n"


def results_as_json(results: list[CaseResult]) -> str:
    return json.dumps([dataclasses.asdict(result) | {"passed": result.passed} for result in results], indent=2)
