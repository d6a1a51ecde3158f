"""``kvplan bench-plan``: commands, benchmark workload and manifest."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest

import kvplan
from kvplan.cli import main
from kvplan.commands.bench_plan import (
    MAX_RANGE_RATIO,
    BenchWorkload,
    bench_argv,
    bench_range_ratio,
    bench_workload,
    random_dataset_lengths,
    workload_spec,
)
from kvplan.commands.launch import build_launch
from kvplan.spec.types import Deployment

from .conftest import SYNTHETIC_PLAN

FLAGS_FILE = Path(__file__).with_name("vllm_bench_serve_flags.txt")
DEPLOYMENT = Deployment(dp=2, tp=2, pp=1, max_num_seqs=1048576, max_num_batched_tokens=8192,
                        gpu_memory_utilization=0.92)


def read_flag_table() -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    for line in FLAGS_FILE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("--"):
            continue
        fields = line.split()
        assert len(fields) in (2, 3), f"malformed line in {FLAGS_FILE.name}: {line!r}"
        flags[fields[0]] = set(fields[2].split("|")) if len(fields) == 3 else set()
    return flags


VLLM_BENCH_FLAGS = read_flag_table()


def option_values(argv: list[str]) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for index, word in enumerate(argv):
        if word.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else "--"
            options[word] = True if following.startswith("--") else following
    return options


@pytest.mark.parametrize("bench", [
    BenchWorkload(105, 5557, 0.99, 2000, None, None),
    BenchWorkload(200, 500, 0.5, 640, None, 64),
    BenchWorkload(200, 500, 0.5, 1000, 2.5, None),
])
def test_bench_argv_uses_listed_flags(bench):
    argv = bench_argv("run-1", "org/model", DEPLOYMENT, bench, "results")

    assert argv[:3] == ["vllm", "bench", "serve"]
    options = option_values(argv)
    for flag, value in options.items():
        assert flag in VLLM_BENCH_FLAGS, f"{flag} is not in {FLAGS_FILE.name}"
        words = VLLM_BENCH_FLAGS[flag]
        if words:
            assert value in words, f"{flag} {value} is not an allowed word"


def test_bench_argv_carries_workload_and_metadata():
    bench = BenchWorkload(200, 500, 0.5, 1000, 2.5, None)

    argv = bench_argv("run-7", "org/model", DEPLOYMENT, bench, "out")

    options = option_values(argv)
    assert options["--random-input-len"] == "200"
    assert options["--random-output-len"] == "500"
    assert options["--random-range-ratio"] == "0.5"
    assert options["--num-prompts"] == "1000"
    assert options["--request-rate"] == "2.5"
    assert "--max-concurrency" not in options
    assert options["--ignore-eos"] is True
    assert options["--save-result"] is True
    assert options["--result-filename"] == "run-7.json"
    metadata = argv[argv.index("--metadata") + 1:]
    assert "kvplan_run=run-7" in metadata
    # Exact integers, not 1.04858e+06.
    assert "kvplan_max_num_seqs=1048576" in metadata
    assert "kvplan_gpu_memory_utilization=0.92" in metadata
    assert "kvplan_range_ratio=0.5" in metadata


def test_batch_concurrency_and_rate_workloads():
    plan = kvplan.load_plan(SYNTHETIC_PLAN)

    batch = bench_workload(plan, 10.0, None)
    assert (batch.num_prompts, batch.request_rate, batch.max_concurrency) == (200, None, None)
    assert batch.arrival_mode() == "batch"

    concurrency_plan = plan.__class__(**{**plan.__dict__, "workload": workload_spec(
        BenchWorkload(200, 500, 0.5, 100, None, 32))})
    concurrency = bench_workload(concurrency_plan, 10.0, None)
    assert concurrency.max_concurrency == 32
    assert concurrency.num_prompts == 320

    rate_plan = plan.__class__(**{**plan.__dict__, "workload": workload_spec(
        BenchWorkload(200, 500, 0.5, 100, 4.0, None))})
    rate = bench_workload(rate_plan, 30.0, None)
    assert rate.request_rate == 4.0
    # 4 requests/s x 30 s in flight, 10 times over.
    assert rate.num_prompts == 1200
    assert bench_workload(rate_plan, 30.0, 77).num_prompts == 77


def test_range_ratio_stays_within_maxima():
    plan = kvplan.load_plan(SYNTHETIC_PLAN)

    ratio, approximation = bench_range_ratio(plan)
    bench = bench_workload(plan, None, None)

    assert 0.0 <= ratio <= MAX_RANGE_RATIO
    assert random_dataset_lengths(bench.output_len, ratio)[1] <= plan.workload.output_tokens.max_tokens
    assert random_dataset_lengths(bench.input_len, ratio)[1] <= plan.workload.prompt_tokens.max_tokens
    assert "uniformly" in approximation


def test_workload_spec_matches_random_dataset_draws():
    spec = workload_spec(BenchWorkload(100, 1000, 0.5, 10, None, None))

    # vLLM draws integers from [50, 150] and [500, 1500]: means 100 and 1000.
    prompt_mean = math.fsum(v * p for v, p in zip(spec.prompt_tokens.values, spec.prompt_tokens.probabilities))
    output_mean = math.fsum(v * p for v, p in zip(spec.output_tokens.values, spec.output_tokens.probabilities))
    assert prompt_mean == pytest.approx(100.0)
    assert output_mean == pytest.approx(1000.0)
    assert spec.output_tokens.max_tokens == 1500
    assert spec.requests == 10


def test_bench_plan_writes_script_and_manifest(capsys, tmp_path):
    out_dir = tmp_path / "bench"

    code = main(["bench-plan", str(SYNTHETIC_PLAN), "--top", "3", "--output-dir", str(out_dir)])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    script = (out_dir / "run-benchmarks.sh").read_text(encoding="utf-8")
    plan = kvplan.load_plan(SYNTHETIC_PLAN)
    assert manifest["kind"] == "kvplan-bench-manifest"
    # The plan allows two layouts (tp 1 and tp 2), so --top 3 gives two runs.
    assert [run["run_id"] for run in manifest["runs"]] == ["run-1", "run-2"]
    for run in manifest["runs"]:
        deployment = Deployment(**run["deployment"])
        assert run["serve"][0]["argv"] == build_launch(plan, deployment).nodes[0].argv
        options = option_values(run["bench"]["argv"])
        assert options["--num-prompts"] == "200"
        assert options["--request-rate"] == "inf"
        assert options["--ignore-eos"] is True
        predicted = run["predicted"]
        assert predicted["duration"] > 0
        assert predicted["p99_e2el_ms"] <= predicted["duration"] * 1000.0 * 1.0001
        assert predicted["mean_ttft_ms"] < predicted["mean_e2el_ms"]
        assert shlex.join(run["bench"]["argv"]) in script
    assert script.count("vllm serve ") == 2
    assert re.search(r"until curl -sf http://127.0.0.1:8000/health", script)


def test_bench_plan_prints_manifest_json(capsys):
    code = main(["bench-plan", str(SYNTHETIC_PLAN), "--top", "1", "--format", "json"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = json.loads(captured.out)
    assert len(manifest["runs"]) == 1


@pytest.mark.parametrize("args", [["--top", "0"], ["--num-prompts", "0"], ["--trials", "0"]])
def test_bench_plan_rejects_bad_options(capsys, args):
    code = main(["bench-plan", str(SYNTHETIC_PLAN), *args])

    assert code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_calibrate_matches_results_through_manifest(capsys, tmp_path):
    from kvplan.commands.bench_plan import BenchWorkload, bench_plan_variant
    from kvplan.costmodel.calibration import predicted_metrics

    from .conftest import TRUE_CONSTANTS

    out_dir = tmp_path / "bench"
    assert main(["bench-plan", str(SYNTHETIC_PLAN), "--output-dir", str(out_dir)]) == 0
    capsys.readouterr()
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    plan = kvplan.load_plan(SYNTHETIC_PLAN)
    results = []
    for run in manifest["runs"]:
        workload = {key: value for key, value in run["workload"].items() if key != "arrival_mode"}
        bench = BenchWorkload(**workload)
        measured = predicted_metrics(bench_plan_variant(plan, bench), Deployment(**run["deployment"]),
                                     TRUE_CONSTANTS)
        # Only the run id: the deployment and workload must come from the manifest.
        document = {"num_prompts": bench.num_prompts, "request_rate": "inf", "max_concurrency": None,
                    "completed": bench.num_prompts, "failed": 0, "kvplan_run": run["run_id"], **measured}
        path = tmp_path / f"{run['run_id']}.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        results.append(str(path))

    code = main(["calibrate", str(SYNTHETIC_PLAN), "--manifest", str(out_dir / "manifest.json"),
                 "--results", *results, "--fit", "hbm_bandwidth", "--output", str(tmp_path / "node.yaml"),
                 "--format", "json"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert sorted(report["train_labels"]) == ["run-1", "run-2"]
    before = {error["metric"]: error["mean_abs_relative_error"] for error in report["train_before"]}
    after = {error["metric"]: error["mean_abs_relative_error"] for error in report["train_after"]}
    assert after["mean_e2el_ms"] < before["mean_e2el_ms"]
    assert report["fitted"]["hbm_bandwidth"] < report["initial"]["hbm_bandwidth"]
