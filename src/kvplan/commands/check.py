"""``kvplan check``: judge the deployment a plan declares as running.

A Plan may declare the deployment that runs now under ``deployed``. ``check`` searches
the plan's space as ``kvplan optimize`` does, predicts the deployed one, and fails when
it does not fit, misses the SLA, or is more than ``--max-regret`` worse than the best
SLA-meeting deployment on the plan's objective. A spec repository runs it on pull
requests that change a model, a node type or an SLA.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Sequence

from kvplan.cli import EXIT_FAILURE, EXIT_OK, FORMATS

if TYPE_CHECKING:
    from kvplan.optimizer.search import RankedDeployment, SearchResult
    from kvplan.spec.errors import SpecIssue
    from kvplan.spec.types import Plan

# A regret this much above --max-regret still passes, so that a deployment equal to the
# best one passes --max-regret 0% despite rounding in the objective values.
REGRET_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """The verdict on one plan's deployed deployment."""

    # The search result whose rows are the best deployment found and the deployed one,
    # with their ranks among every deployment evaluated.
    result: SearchResult
    deployed: RankedDeployment
    # The best SLA-meeting deployment, the deployed one included, or None when none meets it.
    best: RankedDeployment | None
    # How much worse the deployed deployment is than the best one on the objective, as a
    # fraction, or None unless the deployed one meets the SLA.
    regret: float | None
    max_regret: float | None
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        summary = self.result.to_dict()
        return {
            "plan": summary["plan"],
            "objective": summary["objective"],
            "search": summary["search"],
            "check": {
                "passed": self.passed,
                "reasons": list(self.reasons),
                "regret": self.regret,
                "max_regret": self.max_regret,
                "deployed": self.deployed.to_dict(),
                "best": None if self.best is None else self.best.to_dict(),
            },
        }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="check the deployed deployment of plans against the SLA and the best one found",
        description="For each plan, predict the deployment its deployed section declares and "
                    "search the plan's space for the best one. Exit code 1 when a deployed "
                    "deployment does not fit, misses the SLA, or is more than --max-regret "
                    "worse than the best SLA-meeting deployment on the plan's objective.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a Plan spec with a deployed section, or a folder searched recursively "
                             "for such plans (plans without deployed are skipped there)")
    parser.add_argument("--max-regret", type=parse_regret, default=None, metavar="MARGIN",
                        help="fail when the deployed deployment is more than MARGIN worse than the "
                             "best one found, as a percentage (10%%) or a fraction (0.1) of the "
                             "best objective value (default: report the gap without failing on it)")
    parser.add_argument("--trials", type=_positive_int, default=None,
                        help="Optuna trials before the local polish (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="evaluate every point of the search space instead of sampling")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.set_defaults(handler=run)


def parse_regret(text: str) -> float:
    """Parse ``10%`` or ``0.1`` into the fraction 0.1."""
    stripped = text.strip()
    is_percent = stripped.endswith("%")
    number = stripped[:-1].strip() if is_percent else stripped
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid margin {text!r}; write a percentage such as 10% "
                                         "or a fraction such as 0.1") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"the margin must be 0 or more, but got {text!r}")
    if is_percent:
        return value / 100.0
    if value > 1:
        raise argparse.ArgumentTypeError(f"margin {text!r} is ambiguous; write {value:g}% for a "
                                         f"percentage or a fraction of at most 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, but got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from kvplan.spec.errors import SpecIssue

    plans, issues = load_deployed_plans(args.paths)
    if not plans and not issues:
        # Reported as an issue, so --format json still prints a document.
        issues = [SpecIssue(path, None, None, "$", "no Plan spec with a deployed section found; add "
                            "deployed: {dp: ..., tp: ..., pp: ...} to the plan to gate")
                  for path in args.paths]
    # Plans that load are checked even when others do not, so one run reports everything.
    outcomes = [
        check_plan(plan, max_regret=args.max_regret, trials=args.trials, seed=args.seed,
                   exhaustive=args.exhaustive)
        for plan in plans
    ]
    sys.stdout.write(render_outcomes(outcomes, args.format, issues))

    for issue in issues:
        print(issue, file=sys.stderr)
    failed = [outcome for outcome in outcomes if not outcome.passed]
    for outcome in failed:
        plan = outcome.result.plan
        for reason in outcome.reasons:
            print(f"kvplan check: {plan.source}: plan {plan.name}: {reason}", file=sys.stderr)
    if issues:
        files = len({issue.file for issue in issues})
        print(f"kvplan: {len(issues)} problem(s) in {files} file(s)", file=sys.stderr)
    if failed:
        print(f"kvplan: {len(failed)} of {len(outcomes)} plan(s) failed the check", file=sys.stderr)
    return EXIT_FAILURE if issues or failed else EXIT_OK


def load_deployed_plans(paths: Sequence[str]) -> tuple[list[Plan], list[SpecIssue]]:
    """Load the plans to check: each file named, and each Plan with ``deployed`` in a folder.

    Returns the plans that load and every problem found: in the plans and the files they
    reference, a path that does not exist, and a named plan without a deployed section.
    """
    from kvplan.spec import SpecError, load_plan
    from kvplan.spec.errors import SpecIssue
    from kvplan.spec.loader import find_spec_files

    plans: list[Plan] = []
    issues: list[SpecIssue] = []
    for path in paths:
        named_directly = not os.path.isdir(path)
        files, missing = find_spec_files([path])
        issues.extend(missing)
        for file_path in files:
            if not named_directly and not _declares_deployment(file_path):
                continue
            try:
                plan = load_plan(file_path)
            except SpecError as error:
                issues.extend(error.issues)
                continue
            if plan.deployed is None:
                issues.append(SpecIssue(file_path, None, None, "$", "the plan has no deployed section; add the "
                                        "deployment that runs now, for example deployed: {dp: 1, tp: 8, pp: 1}"))
                continue
            plans.append(plan)

    # A file that several plans reference is reported once.
    return plans, list(dict.fromkeys(issues))


def _declares_deployment(path: str) -> bool:
    """Return whether a file found in a folder may be a Plan with a deployed section.

    A file that cannot be read or parsed counts, so that loading it reports the problem:
    a broken plan must fail the gate, not drop out of it.
    """
    from kvplan.spec.session import LoadSession

    try:
        document = LoadSession().read_document(path)
    except (OSError, UnicodeDecodeError):
        return True
    data = None if document is None else document.data
    if not isinstance(data, dict):
        return True
    return data.get("kind") == "Plan" and "deployed" in data


def check_plan(
    plan: Plan,
    *,
    max_regret: float | None = None,
    trials: int | None = None,
    seed: int = 0,
    exhaustive: bool = False,
) -> CheckOutcome:
    """Search ``plan``, predict the deployment it declares under ``deployed`` and judge it.

    Raises ValueError when the plan declares no deployment.
    """
    from kvplan.costmodel.evaluate import Deployment
    from kvplan.optimizer.search import _rank, evaluate, optimize

    if plan.deployed is None:
        raise ValueError(f"plan {plan.name!r} declares no deployed section")
    search = optimize(plan, trials=trials, seed=seed, exhaustive=exhaustive)
    deployment = Deployment(**plan.deployed.to_dict())
    searched = [ranked.evaluation for ranked in search.results]
    deployed_evaluation = next((e for e in searched if e.config == deployment), None)
    if deployed_evaluation is None:
        deployed_evaluation = evaluate(plan, [deployment]).results[0].evaluation
    evaluations = [deployed_evaluation, *(e for e in searched if e is not deployed_evaluation)]

    # Rank the deployed deployment among the searched ones in the order optimize uses,
    # first among deployments that tie with it, so that it is the best one when another
    # deployment is only as good.
    # NOTE: _rank is private to kvplan.optimizer.search. A public ranking function there
    # would let this module stop reaching into it.
    ranking = _rank(plan, evaluations, first_on_ties=deployed_evaluation)
    deployed = next(ranked for ranked in ranking if ranked.evaluation is deployed_evaluation)
    best = next((ranked for ranked in ranking if ranked.evaluation.feasible and ranked.sla_met), None)
    table_rows = (deployed,) if best is None or best is deployed else (best, deployed)
    result = dataclasses.replace(search, results=table_rows)

    regret = None
    if deployed.sla_met and best is not None:
        regret = _regret(plan, deployed, best)
    reasons = _failure_reasons(plan, deployed, best, regret, max_regret)
    return CheckOutcome(result, deployed, best, regret, max_regret, tuple(reasons))


def _regret(plan: Plan, deployed: RankedDeployment, best: RankedDeployment) -> float | None:
    from kvplan.optimizer.search import OBJECTIVES

    direction, _ = OBJECTIVES[plan.objective]
    value, best_value = deployed.objective_value, best.objective_value
    if value is None or best_value is None or best_value == 0:
        return None
    gap = value / best_value - 1.0 if direction == "minimize" else 1.0 - value / best_value
    # The best deployment is ranked first, so a negative gap is rounding or a tie.
    return max(gap, 0.0)


def _failure_reasons(
    plan: Plan,
    deployed: RankedDeployment,
    best: RankedDeployment | None,
    regret: float | None,
    max_regret: float | None,
) -> list[str]:
    evaluation = deployed.evaluation
    if not evaluation.feasible:
        return [f"the deployed {describe_config(deployed)} is infeasible: {evaluation.infeasible_reason}"]
    if not deployed.sla_met:
        reason = f"the deployed {describe_config(deployed)} misses the SLA: {'; '.join(deployed.violations)}"
        if best is None:
            reason += "; no deployment the search found meets it either"
        return [reason]
    if max_regret is not None and regret is not None and regret > max_regret + REGRET_TOLERANCE:
        deployed_text, best_text = _describe_difference(deployed, best)
        return [
            f"the deployed {deployed_text} is {_percent(regret)} worse than the best deployment found,"
            f" {best_text}, on the objective ({_compare_objective(plan, deployed, best)}); --max-regret allows"
            f" {_percent(max_regret, digits=None)}"
        ]
    return []


def describe_config(ranked: RankedDeployment) -> str:
    """Return every setting of a deployment, as ``dp=1 tp=8 pp=1 max_num_seqs=1024 ...``."""
    config = ranked.evaluation.config
    return " ".join(f"{key}={_format_setting(value)}" for key, value in config.to_dict().items())


def _describe_difference(first: RankedDeployment, second: RankedDeployment) -> tuple[str, str]:
    """Describe two deployments by dp, tp, pp and the other settings in which they differ."""
    first_values = first.evaluation.config.to_dict()
    second_values = second.evaluation.config.to_dict()
    keys = [key for key in first_values if key in ("dp", "tp", "pp") or first_values[key] != second_values[key]]
    return (
        " ".join(f"{key}={_format_setting(first_values[key])}" for key in keys),
        " ".join(f"{key}={_format_setting(second_values[key])}" for key in keys),
    )


def _format_setting(value: int | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _compare_objective(plan: Plan, deployed: RankedDeployment, best: RankedDeployment) -> str:
    """Return ``makespan 939 s vs 715 s`` or the like for the plan's objective."""
    from kvplan.formatting import format_count, format_seconds

    value, best_value = deployed.objective_value, best.objective_value
    if plan.objective == "makespan_s":
        return f"makespan {format_seconds(value)} vs {format_seconds(best_value)}"
    if plan.objective == "output_tokens_per_s":
        return f"throughput {format_count(value)} vs {format_count(best_value)} output tokens/s"
    if plan.objective == "output_tokens_per_s_per_gpu":
        return f"throughput per GPU {format_count(value)} vs {format_count(best_value)} output tokens/s"
    return f"cost {value:.3f} vs {best_value:.3f} USD per million output tokens"


def _percent(fraction: float, digits: int | None = 1) -> str:
    if digits is None:
        return f"{fraction * 100:g}%"
    return f"{fraction * 100:.{digits}f}%"


def verdict_lines(outcome: CheckOutcome) -> list[str]:
    """Return the lines that follow the table: which row is deployed, and the verdict."""
    plan = outcome.result.plan
    lines = [f"Deployed: #{outcome.deployed.rank} {describe_config(outcome.deployed)}"]
    if not outcome.passed:
        lines += [f"Check failed: {reason}" for reason in outcome.reasons]
        return lines

    best = outcome.best
    if best is outcome.deployed:
        verdict = "the deployed deployment fits, meets the SLA and is the best one found"
    else:
        verdict = (f"the deployed deployment fits, meets the SLA and is {_percent(outcome.regret or 0.0)} "
                   f"worse than the best one found on the objective "
                   f"({_compare_objective(plan, outcome.deployed, best)})")
    if outcome.max_regret is None:
        verdict += "; no --max-regret is set"
    elif best is not outcome.deployed:
        verdict += f", within --max-regret {_percent(outcome.max_regret, digits=None)}"
    lines.append(f"Check passed: {verdict}")
    return lines


def render_outcomes(
    outcomes: Sequence[CheckOutcome], output_format: str, issues: Sequence[SpecIssue] = ()
) -> str:
    """Render the verdicts in one of the formats of ``kvplan.cli.FORMATS``.

    Only the JSON document lists ``issues``; the other formats leave them to stderr.
    """
    from kvplan.optimizer.search import SCHEMA_VERSION
    from kvplan.output import render_result

    if output_format == "json":
        document = {
            "schema_version": SCHEMA_VERSION,
            "passed": not issues and all(outcome.passed for outcome in outcomes),
            "plans": [outcome.to_dict() for outcome in outcomes],
            "errors": [
                {"file": i.file, "line": i.line, "column": i.column, "path": i.path, "message": i.message}
                for i in issues
            ],
        }
        return json.dumps(document, indent=2) + "\n"
    if output_format == "csv":
        return _render_csv(outcomes)
    blocks = []
    for outcome in outcomes:
        body = render_result(outcome.result, output_format, top=None)
        blocks.append(body + "\n".join(verdict_lines(outcome)) + "\n")
    return "\n".join(blocks)


def _render_csv(outcomes: Sequence[CheckOutcome]) -> str:
    """Render two rows per plan, the deployed deployment and the best one, after check columns."""
    from kvplan.output import render_result

    check_columns = ["plan", "role", "check_passed", "regret", "max_regret", "check_reasons"]
    buffer = io.StringIO()
    writer = None
    for outcome in outcomes:
        roles = [("deployed", outcome.deployed)]
        if outcome.best is not None:
            roles.append(("best", outcome.best))
        rows_result = dataclasses.replace(outcome.result, results=tuple(ranked for _, ranked in roles))
        rows = list(csv.DictReader(io.StringIO(render_result(rows_result, "csv", top=None))))
        for (role, _), row in zip(roles, rows):
            if writer is None:
                writer = csv.DictWriter(buffer, fieldnames=[*check_columns, *row], lineterminator="\n")
                writer.writeheader()
            writer.writerow({
                "plan": outcome.result.plan.name,
                "role": role,
                "check_passed": outcome.passed,
                "regret": "" if outcome.regret is None else outcome.regret,
                "max_regret": "" if outcome.max_regret is None else outcome.max_regret,
                "check_reasons": "; ".join(outcome.reasons),
                **row,
            })
    return buffer.getvalue()
