"""Tests of ``kvplan check`` on the example spec repository and on plans with a changed deployment.

Every plan here is the 8B chat plan of examples/gitops, so the JAX cost model compiles
once for the whole module.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest
from gitops_support import CHAT_PLAN, GITOPS_DIR, OVERPROVISIONED_PLAN, chat_plan_with

import kvplan
from kvplan.cli import main
from kvplan.commands.check import check_plan, parse_regret
from kvplan.spec.types import DeployedConfig


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def chat_plan() -> kvplan.Plan:
    return kvplan.load_plan(CHAT_PLAN)


@pytest.fixture(scope="module")
def chat_best(chat_plan: kvplan.Plan) -> kvplan.RankedDeployment:
    best = kvplan.optimize(chat_plan, exhaustive=True).best
    assert best is not None, "no deployment of the example chat plan meets its SLA"
    return best


# --- --max-regret --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("10%", 0.1), ("0.1", 0.1), ("2.5 %", 0.025), ("0", 0.0),
                                                 ("0%", 0.0), ("1", 1.0), ("150%", 1.5)])
def test_parse_regret_accepts(text: str, expected: float) -> None:
    assert parse_regret(text) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "message"), [
    ("10", "margin '10' is ambiguous; write 10% for a percentage or a fraction of at most 1"),
    ("-5%", "the margin must be 0 or more, but got '-5%'"),
    ("nan", "the margin must be 0 or more, but got 'nan'"),
    ("ten", "invalid margin 'ten'; write a percentage such as 10% or a fraction such as 0.1"),
])
def test_parse_regret_rejects(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        parse_regret(text)
    assert str(raised.value) == message


def test_check_invalid_regret_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["check", str(CHAT_PLAN), "--max-regret", "10"])

    assert raised.value.code == 2
    assert "margin '10' is ambiguous" in capsys.readouterr().err


# --- verdicts --------------------------------------------------------------------------------


def test_check_passes_example_deployment(capsys) -> None:
    code, out, err = run_check(capsys, str(CHAT_PLAN), "--max-regret", "10%")

    assert code == 0, err
    assert out.startswith("Plan chat-8b: ")
    assert "\nDeployed: #" in out
    assert "\nCheck passed: the deployed deployment fits, meets the SLA" in out
    assert err == ""


def test_check_passes_optimum_at_zero_regret(chat_plan, chat_best) -> None:
    optimum = DeployedConfig(**chat_best.evaluation.config.to_dict())

    outcome = check_plan(dataclasses.replace(chat_plan, deployed=optimum), max_regret=0.0, exhaustive=True)

    assert outcome.passed, outcome.reasons
    assert outcome.regret == 0.0
    assert outcome.best is outcome.deployed


def test_check_fails_overprovisioned_deployment(capsys) -> None:
    code, out, err = run_check(capsys, str(OVERPROVISIONED_PLAN), "--max-regret", "10%", "--exhaustive")

    assert code == 1
    assert "\nCheck failed: the deployed dp=2 tp=2 pp=1 " in out
    assert " worse than the best deployment found, dp=1 tp=1 pp=1" in out
    assert " on the objective (cost " in out
    assert out.rstrip().endswith("--max-regret allows 10%")
    assert f"kvplan check: {OVERPROVISIONED_PLAN}: plan chat-8b-overprovisioned: the deployed dp=2" in err
    assert err.endswith("kvplan: 1 of 1 plan(s) failed the check\n")


def test_check_without_max_regret_reports_gap_only(chat_plan) -> None:
    overprovisioned = kvplan.load_plan(OVERPROVISIONED_PLAN)

    outcome = check_plan(overprovisioned, exhaustive=True)

    assert outcome.passed
    assert outcome.regret == pytest.approx(3.0, rel=0.05)
    assert outcome.max_regret is None


def test_check_fails_deployment_missing_sla(chat_plan) -> None:
    # 16 running requests cannot keep up with 15 requests per second of this workload.
    starved = DeployedConfig(dp=1, tp=1, pp=1, max_num_seqs=16, max_num_batched_tokens=8192,
                             gpu_memory_utilization=0.9)

    outcome = check_plan(dataclasses.replace(chat_plan, deployed=starved), max_regret=0.1, exhaustive=True)

    assert not outcome.passed
    assert outcome.regret is None
    assert len(outcome.reasons) == 1
    assert outcome.reasons[0].startswith(
        "the deployed dp=1 tp=1 pp=1 max_num_seqs=16 max_num_batched_tokens=8192 gpu_memory_utilization=0.9"
        " misses the SLA: cannot keep up with 15 requests/s"
    )


def test_check_fails_deployment_that_does_not_fit(chat_plan) -> None:
    # A tenth of the GPU memory is less than the 16 GB of weights.
    cramped = DeployedConfig(dp=1, tp=1, pp=1, max_num_seqs=256, max_num_batched_tokens=8192,
                             gpu_memory_utilization=0.1)

    outcome = check_plan(dataclasses.replace(chat_plan, deployed=cramped), max_regret=0.1, exhaustive=True)

    assert not outcome.passed
    assert outcome.deployed.evaluation.feasible is False
    assert " is infeasible: weights do not fit: " in outcome.reasons[0]


def test_check_ranks_deployed_first_among_ties(chat_plan) -> None:
    # On the chat plan the cost depends on the GPUs only, so max_num_seqs 128 and 256
    # on one GPU tie exactly. The deployed one (256) must rank first between them.
    outcome = check_plan(chat_plan, max_regret=0.1, exhaustive=True)
    tied = [ranked for ranked in outcome.result.results
            if ranked.objective_value == outcome.deployed.objective_value]

    assert outcome.deployed.evaluation.config.max_num_seqs == 256
    assert outcome.deployed.rank == 1
    assert outcome.best is outcome.deployed
    assert outcome.regret == 0.0
    assert tied[0] is outcome.deployed


def test_check_deployment_outside_search_space_is_ranked(chat_plan) -> None:
    # max_num_seqs 384 is not a candidate of the plan's search, so check evaluates it apart.
    outside = DeployedConfig(dp=1, tp=1, pp=1, max_num_seqs=384, max_num_batched_tokens=8192,
                             gpu_memory_utilization=0.9)

    outcome = check_plan(dataclasses.replace(chat_plan, deployed=outside), max_regret=0.1, exhaustive=True)

    assert outcome.passed, outcome.reasons
    assert outcome.deployed.evaluation.config.max_num_seqs == 384
    assert 1 <= outcome.deployed.rank <= outcome.result.evaluated + 1


# --- formats -------------------------------------------------------------------------------


def test_check_json_document(capsys) -> None:
    code, out, _ = run_check(capsys, str(CHAT_PLAN), str(OVERPROVISIONED_PLAN), "--max-regret", "0.1",
                             "--format", "json", "--exhaustive")
    document = json.loads(out)

    assert code == 1
    assert document["schema_version"] == 1
    assert document["passed"] is False
    assert document["errors"] == []
    checks = {entry["plan"]["name"]: entry["check"] for entry in document["plans"]}
    assert set(checks) == {"chat-8b", "chat-8b-overprovisioned"}
    assert checks["chat-8b"]["passed"] is True
    assert checks["chat-8b"]["reasons"] == []
    assert checks["chat-8b"]["max_regret"] == 0.1
    assert checks["chat-8b"]["deployed"]["config"]["max_num_seqs"] == 256
    assert checks["chat-8b-overprovisioned"]["passed"] is False
    assert checks["chat-8b-overprovisioned"]["regret"] > 0.1
    assert checks["chat-8b-overprovisioned"]["best"]["config"]["dp"] == 1


def test_check_csv_rows(capsys) -> None:
    code, out, _ = run_check(capsys, str(OVERPROVISIONED_PLAN), "--format", "csv", "--exhaustive")
    rows = list(csv.DictReader(io.StringIO(out)))

    assert code == 0
    assert [(row["plan"], row["role"]) for row in rows] == [
        ("chat-8b-overprovisioned", "deployed"),
        ("chat-8b-overprovisioned", "best"),
    ]
    assert [row["dp"] + row["tp"] for row in rows] == ["22", "11"]
    assert all(row["check_passed"] == "True" for row in rows)
    assert rows[0]["max_regret"] == ""


def test_check_markdown_table(capsys) -> None:
    code, out, _ = run_check(capsys, str(CHAT_PLAN), "--format", "markdown", "--exhaustive")

    assert code == 0
    assert "\n| #   | dp   |" in out
    assert "\nCheck passed: " in out


# --- inputs --------------------------------------------------------------------------------


def test_check_folder_skips_plans_without_deployed(capsys, write) -> None:
    plan = write("plans/deployed.yaml", chat_plan_with("deployed: {dp: 1, tp: 1, pp: 1, max_num_seqs: 256}\n"))
    write("plans/what-if.yaml", chat_plan_with(None))

    code, out, err = run_check(capsys, str(plan.parent), "--format", "json", "--exhaustive")

    assert code == 0, err
    assert [entry["plan"]["source"] for entry in json.loads(out)["plans"]] == [str(plan)]


def test_check_named_plan_without_deployed_exit_1(capsys, write) -> None:
    plan = write("what-if.yaml", chat_plan_with(None))

    code, out, err = run_check(capsys, str(plan))

    assert code == 1
    assert out == ""
    assert f"{plan}: $: the plan has no deployed section; add the deployment that runs now" in err


def test_check_folder_without_deployed_plans_exit_1(capsys) -> None:
    code, _, err = run_check(capsys, str(GITOPS_DIR / "models"))

    assert code == 1
    assert f"{GITOPS_DIR / 'models'}: $: no Plan spec with a deployed section found" in err


def test_check_folder_with_broken_plan_fails(capsys, tmp_path) -> None:
    broken = tmp_path / "plans"
    broken.mkdir()
    (broken / "broken.yaml").write_text("apiVersion: kvplan/v1\nkind: Plan\nname: x\nsearch: {gpu_budget: [4\n")

    code, _, err = run_check(capsys, str(broken))

    assert code == 1
    assert "broken.yaml:5:1: $: invalid YAML" in err


def test_check_reports_invalid_plans_and_checks_the_rest(capsys) -> None:
    code, out, err = run_check(capsys, str(GITOPS_DIR / "broken"), str(CHAT_PLAN), "--max-regret", "10%",
                                 "--exhaustive")

    assert code == 1
    assert "\nCheck passed: " in out
    assert "\nCheck failed: " in out
    assert f"{GITOPS_DIR / 'broken' / 'deployed-over-budget.yaml'}:11:1: $.deployed: the deployed dp 4" in err
    assert "kvplan: 1 problem(s) in 1 file(s)\n" in err
    assert "kvplan: 1 of 2 plan(s) failed the check\n" in err


def test_check_missing_path_exit_1(capsys, tmp_path: Path) -> None:
    code, _, err = run_check(capsys, str(tmp_path / "absent.yaml"))

    assert code == 1
    assert f"{tmp_path / 'absent.yaml'}: $: file or folder not found" in err
