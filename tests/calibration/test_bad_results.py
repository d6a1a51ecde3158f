"""Bad result files and options: exit code 1 (or 2 for usage errors) and a message naming the file."""

from __future__ import annotations

import json

import pytest

from kvplan.cli import main

from .conftest import SYNTHETIC_PLAN

GOOD = {
    "num_prompts": 8, "request_rate": "inf", "max_concurrency": None, "completed": 8, "failed": 0,
    "kvplan_dp": "1", "kvplan_tp": "1", "kvplan_pp": "1", "kvplan_input_len": "32", "kvplan_output_len": "128",
    "kvplan_range_ratio": "0", "mean_e2el_ms": 800.0,
}


def calibrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(["calibrate", *args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def changed(**changes) -> str:
    document = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            document.pop(key)
        else:
            document[key] = value
    return json.dumps(document)


BAD_FILES = {
    "not-json.json": ("{not json", "invalid JSON on line 1"),
    "number.json": ("[1, 2]", "expected a JSON object per result"),
    "empty.json": ("", "contains no result"),
    "no-deployment.json": (changed(kvplan_tp=..., kvplan_dp=..., kvplan_pp=...),
                           "does not say which deployment it measured"),
    "failed.json": (changed(completed=6, failed=2), "6 of 8 requests completed"),
    "text-metric.json": (changed(mean_e2el_ms="fast"), "mean_e2el_ms must be a number"),
    "negative-metric.json": (changed(mean_e2el_ms=-3.0), "mean_e2el_ms must be a positive number"),
    "no-metric.json": (changed(mean_e2el_ms=...), "no measured metric"),
    "rate-and-concurrency.json": (changed(request_rate=2.0, max_concurrency=4),
                                  "sets both request_rate and max_concurrency"),
    "bad-tp.json": (changed(kvplan_tp="two"), "kvplan_tp must be a number"),
    "no-rate.json": (changed(request_rate=...), "missing 'request_rate'"),
    "no-input-len.json": (changed(kvplan_input_len=...), "missing 'input_len'"),
    "ratio.json": (changed(kvplan_range_ratio="1.5"), "range_ratio must be in"),
    "over-budget.json": (changed(kvplan_tp="4"), "needs more GPUs than the plan's gpu_budget"),
    "empty.csv": ("tp,pp,decode_requests,context_tokens,step_time_ms\n", "the CSV file has no data rows"),
    "bad-step.csv": ("tp,pp,decode_requests,context_tokens,step_time_ms\n1,1,8,100,-2\n",
                     "step_time_ms must be a positive number"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_result_file_names_file(capsys, tmp_path, name):
    text, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    code, out, err = calibrate(capsys, str(SYNTHETIC_PLAN), "--results", str(path),
                               "--output", str(tmp_path / "node.yaml"))

    assert code == 1
    assert str(path) in err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "node.yaml").exists()


def test_missing_result_file(capsys, tmp_path):
    path = tmp_path / "absent.json"

    code, _, err = calibrate(capsys, str(SYNTHETIC_PLAN), "--results", str(path))

    assert code == 1
    assert str(path) in err
    assert "failed to read the result file" in err


def test_run_missing_from_manifest(capsys, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"kind": "kvplan-bench-manifest", "runs": [
        {"run_id": "run-1", "deployment": {"dp": 1, "tp": 1, "pp": 1},
         "workload": {"input_len": 32, "output_len": 128, "range_ratio": 0}}]}), encoding="utf-8")
    result = tmp_path / "run-9.json"
    result.write_text(changed(kvplan_run="run-9"), encoding="utf-8")

    code, _, err = calibrate(capsys, str(SYNTHETIC_PLAN), "--results", str(result), "--manifest", str(manifest))

    assert code == 1
    assert str(result) in err
    assert "run 'run-9' is not in the manifest" in err


def test_file_that_is_not_a_manifest(capsys, tmp_path):
    manifest = tmp_path / "other.json"
    manifest.write_text(json.dumps({"kind": "something"}), encoding="utf-8")
    result = tmp_path / "result.json"
    result.write_text(changed(), encoding="utf-8")

    code, _, err = calibrate(capsys, str(SYNTHETIC_PLAN), "--results", str(result), "--manifest", str(manifest))

    assert code == 1
    assert str(manifest) in err
    assert "not a kvplan bench-plan manifest" in err


def test_same_result_twice(capsys, tmp_path):
    result = tmp_path / "result.json"
    result.write_text(changed(kvplan_run="run-1"), encoding="utf-8")

    code, _, err = calibrate(capsys, str(SYNTHETIC_PLAN), "--results", str(result), str(result))

    assert code == 1
    assert "appear more than once" in err


@pytest.mark.parametrize("args, message", [
    (["--holdout", "1.5"], "--holdout must be in [0, 1)"),
    (["--fit", "warp_speed"], "--fit names unknown constant(s) warp_speed"),
    (["--plan-output", "/elsewhere/plan.yaml"], "--plan-output must be in the plan's folder"),
])
def test_usage_errors(capsys, tmp_path, args, message):
    result = tmp_path / "result.json"
    result.write_text(changed(), encoding="utf-8")

    code, _, err = calibrate(capsys, str(SYNTHETIC_PLAN), "--results", str(result), *args)

    assert code == 2
    assert message in err


def test_holdout_needs_two_results(capsys, tmp_path):
    result = tmp_path / "result.json"
    result.write_text(changed(), encoding="utf-8")

    code, _, err = calibrate(capsys, str(SYNTHETIC_PLAN), "--results", str(result), "--holdout", "0.3",
                             "--output", str(tmp_path / "node.yaml"))

    assert code == 1
    assert "--holdout needs at least 2 results" in err
