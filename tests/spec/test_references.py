"""Tests of referenced files: missing files, wrong kinds, base merging and circular bases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kvplan.spec import SpecError, SpecIssue, load_model, load_node, load_plan, load_workload


def raised_issues(loader: Callable, *args) -> list[SpecIssue]:
    with pytest.raises(SpecError) as excinfo:
        loader(*args)
    return excinfo.value.issues


WORKLOAD = """\
apiVersion: kvplan/v1
kind: Workload
name: base-workload
prompt_tokens: {distribution: fixed, value: 100}
output_tokens:
  distribution: lognormal
  median: 500
  sigma: 0.5
  max: 4096
requests: 100
"""


def plan_text(model: str, workload: str, node: str = "h200-sxm-8") -> str:
    return (
        "apiVersion: kvplan/v1\n"
        "kind: Plan\n"
        "name: p\n"
        f"model: {model}\n"
        "hardware:\n"
        f"  node: {node}\n"
        f"workload: {workload}\n"
    )


def test_missing_model_file_at_plan_key(write, tmp_path: Path) -> None:
    write("workload.yaml", WORKLOAD)
    plan = write("plan.yaml", plan_text("models/absent.yaml", "workload.yaml"))
    issues = raised_issues(load_plan, plan)
    assert len(issues) == 1
    issue = issues[0]
    assert issue.file == str(plan)
    assert (issue.line, issue.column, issue.path) == (4, 8, "$.model")
    assert issue.message == f"model file 'models/absent.yaml' not found (looked for {tmp_path / 'models' / 'absent.yaml'})"


def test_missing_workload_file_at_plan_key(write, model_8b_path: Path) -> None:
    plan = write("plan.yaml", plan_text(str(model_8b_path), "absent.yaml"))
    issues = raised_issues(load_plan, plan)
    assert [(issue.line, issue.column, issue.path) for issue in issues] == [(7, 11, "$.workload")]
    assert issues[0].message.startswith("workload file 'absent.yaml' not found")


def test_unknown_node_name_mentions_catalog(write, model_8b_path: Path) -> None:
    write("workload.yaml", WORKLOAD)
    plan = write("plan.yaml", plan_text(str(model_8b_path), "workload.yaml", node="h300-sxm-8"))
    issues = raised_issues(load_plan, plan)
    assert [(issue.line, issue.column, issue.path) for issue in issues] == [(6, 9, "$.hardware.node")]
    assert "it is not a built-in node either (h100-sxm-8, h200-sxm-8)" in issues[0].message


def test_misspelt_node_name_gets_suggestion(write, model_8b_path: Path) -> None:
    write("workload.yaml", WORKLOAD)
    plan = write("plan.yaml", plan_text(str(model_8b_path), "workload.yaml", node="h200-sxm8"))
    issues = raised_issues(load_plan, plan)
    assert issues[0].message.endswith("; did you mean 'h200-sxm-8'?")


def test_node_file_name_gets_no_suggestion(write, model_8b_path: Path) -> None:
    write("workload.yaml", WORKLOAD)
    plan = write("plan.yaml", plan_text(str(model_8b_path), "workload.yaml", node="nodes/custom.yaml"))
    issues = raised_issues(load_plan, plan)
    assert "did you mean" not in issues[0].message


def test_every_missing_reference_reported(write) -> None:
    plan = write("plan.yaml", plan_text("m.yaml", "w.yaml", node="n.yaml"))
    paths = [issue.path for issue in raised_issues(load_plan, plan)]
    assert paths == ["$.model", "$.hardware.node", "$.workload"]


def test_wrong_kind_reference_at_plan_key(write, model_8b_path: Path) -> None:
    write("workload.yaml", WORKLOAD)
    plan = write("plan.yaml", plan_text("workload.yaml", "workload.yaml"))
    issues = raised_issues(load_plan, plan)
    assert [(issue.line, issue.path) for issue in issues] == [(4, "$.model")]
    assert issues[0].message == "'workload.yaml' is a Workload spec, but model must name a Model spec"


def test_missing_config_reported_in_model_file(write, tmp_path: Path) -> None:
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: hf/absent.json\n")
    issues = raised_issues(load_model, model)
    assert [(issue.file, issue.line, issue.column, issue.path) for issue in issues] == [
        (str(model), 4, 9, "$.config")
    ]
    assert issues[0].message == f"config file 'hf/absent.json' not found (looked for {tmp_path / 'hf' / 'absent.json'})"


def test_missing_config_reported_through_plan(write, tmp_path: Path) -> None:
    write("workload.yaml", WORKLOAD)
    model = write("models/m.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: absent.json\n")
    plan = write("plan.yaml", plan_text("models/m.yaml", "workload.yaml"))
    issues = raised_issues(load_plan, plan)
    assert [(issue.file, issue.line, issue.path) for issue in issues] == [(str(model), 4, "$.config")]


def test_unsupported_architecture_reported_at_config(write) -> None:
    write("config.json", json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: config.json\n")
    issues = raised_issues(load_model, model)
    assert [(issue.line, issue.path) for issue in issues] == [(4, "$.config")]
    assert "unsupported architecture 'GPT2LMHeadModel'" in issues[0].message


def test_invalid_config_json_reported(write) -> None:
    write("config.json", "{not json")
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: config.json\n")
    issues = raised_issues(load_model, model)
    assert issues[0].path == "$.config"
    assert "invalid JSON" in issues[0].message


def test_weight_dtype_default_from_quantization(write, examples_dir: Path, tmp_path: Path) -> None:
    shutil.copy(examples_dir / "models" / "hf-configs" / "deepseek-r1.json", tmp_path / "r1.json")
    fp8 = load_model(write("r1.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: r1\nconfig: r1.json\n"))
    assert fp8.weight_dtype == "fp8"
    assert fp8.kv_cache_dtype == "auto"
    shutil.copy(examples_dir / "models" / "hf-configs" / "deepseek-r1-distill-llama-8b.json", tmp_path / "l.json")
    bf16 = load_model(write("l.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: l\nconfig: l.json\n"))
    assert bf16.weight_dtype == "bfloat16"


def test_workload_base_merges_shallowly(write) -> None:
    write("shared/base.yaml", WORKLOAD)
    child = write(
        "child.yaml",
        "apiVersion: kvplan/v1\nkind: Workload\nbase: shared/base.yaml\nname: child\nrequests: 7\n",
    )
    workload = load_workload(child)
    assert workload.name == "child"
    assert workload.requests == 7
    assert workload.arrival_mode == "batch"
    assert workload.prompt_tokens.values == (100.0,)
    assert workload.output_tokens.max_tokens == 4096


def test_base_merge_keeps_arrival_mode(write) -> None:
    # A shallow merge keeps the base's requests, so adding concurrency sets two modes.
    write("base.yaml", WORKLOAD)
    child = write("child.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: base.yaml\nconcurrency: 8\n")
    issues = raised_issues(load_workload, child)
    assert [issue.message for issue in issues] == [
        "set exactly one of requests, arrival_rate or concurrency, but requests and concurrency are both set"
    ]


def test_inline_workload_base_overrides_distribution(write, model_8b_path: Path) -> None:
    write("workloads/base.yaml", WORKLOAD)
    plan = write(
        "plans/plan.yaml",
        plan_text(str(model_8b_path), "")
        + "  base: ../workloads/base.yaml\n"
        + "  output_tokens: {distribution: fixed, value: 300}\n"
        + "  requests: 5000\n",
    )
    loaded = load_plan(plan)
    assert loaded.workload.name == "base-workload"
    assert loaded.workload.requests == 5000
    assert loaded.workload.output_tokens.values == (300.0,)
    assert loaded.workload.prompt_tokens.values == (100.0,)


def test_base_chain_of_three_files(write) -> None:
    write("a.yaml", WORKLOAD)
    write("sub/b.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: ../a.yaml\nrequests: 2\n")
    child = write("c.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: sub/b.yaml\nname: c\n")
    workload = load_workload(child)
    assert (workload.name, workload.requests) == ("c", 2)


def test_base_file_paths_resolved_from_base_file(write, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lengths.csv").write_text("n\n10\n20\n", encoding="utf-8")
    write(
        "data/base.yaml",
        "apiVersion: kvplan/v1\nkind: Workload\nname: b\n"
        "prompt_tokens: {distribution: file, path: lengths.csv, field: n}\n"
        "output_tokens: {distribution: fixed, value: 5}\nrequests: 1\n",
    )
    child = write("child.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: data/base.yaml\nrequests: 3\n")
    workload = load_workload(child)
    assert workload.prompt_tokens.values == (10.0, 20.0)


def test_error_in_base_reported_in_base_file(write, model_8b_path: Path) -> None:
    base = write(
        "base.yaml",
        "apiVersion: kvplan/v1\nkind: Workload\nname: b\n"
        "prompt_tokens: {distribution: lognormal, median: 5000, sigma: 0.5, max: 4096}\n"
        "output_tokens: {distribution: fixed, value: 5}\nrequests: 1\n",
    )
    plan = write("plan.yaml", plan_text(str(model_8b_path), "") + "  base: base.yaml\n  requests: 10\n")
    issues = raised_issues(load_plan, plan)
    assert [(issue.file, issue.line, issue.path) for issue in issues] == [
        (str(base), 4, "$.prompt_tokens.median")
    ]
    assert issues[0].message == "median 5000 is above max 4096; raise max or lower the median"


def test_circular_base_reported(write) -> None:
    first = write("a.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: b.yaml\nname: a\n")
    write("b.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: a.yaml\nname: b\n")
    issues = raised_issues(load_workload, first)
    assert len(issues) == 1
    assert issues[0].path == "$.base"
    assert issues[0].message.startswith("circular base reference: ")
    assert issues[0].message.count("a.yaml") == 2


def test_self_base_reported(write) -> None:
    path = write("a.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: a.yaml\nname: a\n")
    issues = raised_issues(load_workload, path)
    assert [(issue.line, issue.column, issue.path) for issue in issues] == [(3, 7, "$.base")]
    assert issues[0].message.startswith("circular base reference")


def test_base_of_wrong_kind_reported(write) -> None:
    write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: c.json\n")
    path = write("w.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: model.yaml\nname: w\n")
    issues = raised_issues(load_workload, path)
    assert [issue.message for issue in issues] == ["'model.yaml' is a Model spec, but base must name a Workload spec"]


def test_node_base_catalog_override(write) -> None:
    path = write(
        "node.yaml",
        "apiVersion: kvplan/v1\nkind: Node\nbase: h200-sxm-8\nname: priced-h200\nprice_per_gpu_hour: 3.5\n",
    )
    node = load_node(path)
    assert node.name == "priced-h200"
    assert node.price_per_gpu_hour == 3.5
    assert node.gpu_memory_bytes == 143771 * 2**20


def test_node_base_replaces_efficiency_whole(write) -> None:
    path = write(
        "node.yaml",
        "apiVersion: kvplan/v1\nkind: Node\nbase: h200-sxm-8\nefficiency:\n  compute: 0.5\n",
    )
    issues = raised_issues(load_node, path)
    messages = sorted(issue.message for issue in issues)
    assert messages == [
        "missing required key 'allreduce_bandwidth'",
        "missing required key 'fp8_compute'",
        "missing required key 'hbm_bandwidth'",
    ]
    assert all((issue.line, issue.path) == (4, "$.efficiency") for issue in issues)


def test_inline_node_with_file_base(write, model_8b_path: Path) -> None:
    write("nodes/custom.yaml", "apiVersion: kvplan/v1\nkind: Node\nbase: h100-sxm-8\nname: custom\n")
    write("workload.yaml", WORKLOAD)
    plan = write(
        "plan.yaml",
        plan_text(str(model_8b_path), "workload.yaml", node="")
        .replace("  node: \n", "  node:\n    base: nodes/custom.yaml\n    gpus_per_node: 4\n"),
    )
    loaded = load_plan(plan)
    assert loaded.node.name == "custom"
    assert loaded.node.gpus_per_node == 4
    assert loaded.node.gpu_memory_bytes == 81559 * 2**20
    assert loaded.search.gpu_budget == 4


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("gpu_memory: 0GiB", "$.gpu_memory"),
        ("hbm_bandwidth: 0TB/s", "$.hbm_bandwidth"),
        ("peak_flops: {bfloat16: 0TFLOP/s}", "$.peak_flops.bfloat16"),
    ],
)
def test_node_zero_capacity_rejected(write, line: str, path: str) -> None:
    node = write("node.yaml", f"apiVersion: kvplan/v1\nkind: Node\nbase: h200-sxm-8\n{line}\n")
    issues = raised_issues(load_node, node)
    assert [(issue.line, issue.path) for issue in issues] == [(4, path)]
    assert issues[0].message.startswith("must be greater than 0, but got '0")
