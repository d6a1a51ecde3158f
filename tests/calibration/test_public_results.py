"""Calibration from result files built from published vLLM measurements (see data/README.md)."""

from __future__ import annotations

import json

import pytest
import yaml

import kvplan
from kvplan.cli import main

from .conftest import DATA_DIR, PLAN_DIR

CI_RESULTS = (DATA_DIR / "vllm-ci-h200-8b-tp1.json", DATA_DIR / "vllm-ci-h200-70b-tp4.json")
CI_PLAN = PLAN_DIR / "vllm-ci-8b.yaml"


def calibrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(["calibrate", *args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ci_results_are_in_vllm_layout():
    for path in CI_RESULTS:
        document = json.loads(path.read_text(encoding="utf-8"))
        for key in ("num_prompts", "request_rate", "max_concurrency", "completed", "mean_e2el_ms"):
            assert key in document, f"{path.name} lacks {key}"
        assert document["request_rate"] == "inf"
        assert document["completed"] == document["num_prompts"] == 8


def test_ci_results_fit_hbm_fraction(capsys, tmp_path):
    output = tmp_path / "node.yaml"

    code, out, err = calibrate(capsys, str(CI_PLAN), "--results", *map(str, CI_RESULTS),
                               "--fit", "hbm_bandwidth", "--output", str(output), "--format", "json")

    assert code == 0, err
    report = json.loads(out)
    before = {error["metric"]: error["mean_abs_relative_error"] for error in report["train_before"]}
    after = {error["metric"]: error["mean_abs_relative_error"] for error in report["train_after"]}
    assert set(before) == {"mean_e2el_ms"}
    assert after["mean_e2el_ms"] < before["mean_e2el_ms"]
    assert 0.5 < report["fitted"]["hbm_bandwidth"] <= 1.0
    assert report["fitted_names"] == ["hbm_bandwidth"]
    assert sorted(report["train_labels"]) == ["vllm-ci-h200-70b-tp4", "vllm-ci-h200-8b-tp1"]

    text = output.read_text(encoding="utf-8")
    assert "vllm-ci-h200-8b-tp1 (fitted): dp=1 tp=1" in text
    assert "vllm-ci-h200-70b-tp4 (fitted): dp=1 tp=4" in text
    node = yaml.safe_load(text)
    assert node["efficiency"]["hbm_bandwidth"] == pytest.approx(report["fitted"]["hbm_bandwidth"], rel=1e-5)


def test_ci_results_with_every_constant_warn_of_missing_data(capsys, tmp_path):
    code, out, err = calibrate(capsys, str(CI_PLAN), "--results", *map(str, CI_RESULTS),
                               "--output", str(tmp_path / "node.yaml"))

    assert code == 0, err
    # Two measured means cannot determine four constants.
    assert "the results determine only 2 independent combination(s) of the 4 fitted constants" in out


def test_ci_node_plan_loads_and_optimizes(capsys, tmp_path):
    node_path = tmp_path / "ci-node.yaml"
    code, _, err = calibrate(capsys, str(CI_PLAN), "--results", *map(str, CI_RESULTS),
                             "--fit", "hbm_bandwidth", "--output", str(node_path))
    assert code == 0, err
    plan_data = yaml.safe_load(CI_PLAN.read_text(encoding="utf-8"))
    plan_data["model"] = str((CI_PLAN.parent / plan_data["model"]).resolve())
    plan_data["hardware"] = {"node": str(node_path)}
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan_data), encoding="utf-8")

    plan = kvplan.load_plan(plan_path)
    result = kvplan.optimize(plan, exhaustive=True)

    assert plan.node.name == "h200-sxm-8-calibrated"
    assert result.best is not None
