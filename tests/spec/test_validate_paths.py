"""Tests of validate_paths on files and folders of mixed spec kinds."""

from __future__ import annotations

from pathlib import Path

from kvplan.spec import validate_paths

VALID_WORKLOAD = """\
apiVersion: kvplan/v1
kind: Workload
name: w
prompt_tokens: {distribution: fixed, value: 10}
output_tokens: {distribution: fixed, value: 10}
concurrency: 4
"""


def test_validate_paths_valid_files_return_nothing(write, model_8b_path: Path) -> None:
    workload = write("w.yaml", VALID_WORKLOAD)
    node = write("n.yaml", "apiVersion: kvplan/v1\nkind: Node\nbase: h100-sxm-8\nname: n\n")
    assert validate_paths([workload, node, model_8b_path]) == []


def test_validate_paths_folder_finds_nested_specs(write, tmp_path: Path) -> None:
    write("a/w.yaml", VALID_WORKLOAD)
    bad = write("a/b/bad.yml", "apiVersion: kvplan/v1\nkind: Workload\nname: w\n")
    issues = validate_paths([tmp_path])
    assert {issue.file for issue in issues} == {str(bad)}
    assert [issue.message for issue in issues] == [
        "missing required key 'prompt_tokens'",
        "missing required key 'output_tokens'",
        "set exactly one of requests, arrival_rate or concurrency; none is set",
    ]


def test_validate_paths_folder_skips_other_yaml(write, tmp_path: Path) -> None:
    write("ci/workflow.yaml", "on: push\njobs: {}\n")
    write("k8s/deploy.yaml", "apiVersion: apps/v1\nkind: Deployment\n")
    write("tags.yaml", "value: !Ref Something\n")
    write(".hidden/bad.yaml", "apiVersion: kvplan/v1\nkind: Model\n")
    write("notes.txt", "apiVersion: kvplan/v1\n")
    assert validate_paths([tmp_path]) == []


def test_validate_paths_folder_reports_unparsable_spec(write, tmp_path: Path) -> None:
    bad = write("broken.yaml", "apiVersion: kvplan/v1\nkind: Workload\nname: [w\n")
    issues = validate_paths([tmp_path])
    assert [issue.file for issue in issues] == [str(bad)]
    assert issues[0].message.startswith("invalid YAML:")


def test_validate_paths_unknown_kind(write) -> None:
    path = write("x.yaml", "apiVersion: kvplan/v1\nkind: Cluster\nname: x\n")
    issues = validate_paths([path])
    assert [(issue.line, issue.column, issue.path, issue.message) for issue in issues] == [
        (2, 7, "$.kind", "must be one of Model, Node, Workload, Plan, but got 'Cluster'")
    ]


def test_validate_paths_missing_kind(write) -> None:
    issues = validate_paths([write("x.yaml", "apiVersion: kvplan/v1\nname: x\n")])
    assert [(issue.path, issue.message) for issue in issues] == [("$", "missing required key 'kind'")]


def test_validate_paths_missing_path(tmp_path: Path) -> None:
    issues = validate_paths([tmp_path / "absent"])
    assert [(issue.file, issue.message) for issue in issues] == [(str(tmp_path / "absent"), "file or folder not found")]


def test_validate_paths_shared_file_reported_once(write, model_8b_path: Path) -> None:
    shared = write(
        "shared.yaml",
        "apiVersion: kvplan/v1\nkind: Workload\nname: w\n"
        "prompt_tokens: {distribution: fixed, value: 0}\n"
        "output_tokens: {distribution: fixed, value: 10}\nrequests: 1\n",
    )
    plan = (
        f"apiVersion: kvplan/v1\nkind: Plan\nname: p\nmodel: {model_8b_path}\n"
        "hardware: {node: h200-sxm-8}\nworkload: shared.yaml\n"
    )
    first = write("p1.yaml", plan)
    second = write("p2.yaml", plan)
    issues = validate_paths([first, second, shared])
    assert [(issue.file, issue.path) for issue in issues] == [(str(shared), "$.prompt_tokens.value")]


def test_validate_paths_reports_every_file(write) -> None:
    first = write("one.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\n")
    second = write("two.yaml", "apiVersion: kvplan/v1\nkind: Node\nbase: h200-sxm-8\ngpu_memory: 80\n")
    issues = validate_paths([first, second])
    assert [(issue.file, issue.path) for issue in issues] == [
        (str(first), "$"),
        (str(second), "$.gpu_memory"),
    ]
