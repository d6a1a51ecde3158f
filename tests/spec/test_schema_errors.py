"""Tests that schema problems are reported in plain words at the right file, line, column and path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvplan.spec import SpecError, SpecIssue, load_model, load_plan, load_workload


def raised_issues(loader: Callable, *args) -> list[SpecIssue]:
    with pytest.raises(SpecError) as excinfo:
        loader(*args)
    return excinfo.value.issues


def issue_at(issues: list[SpecIssue], path: str) -> SpecIssue:
    matches = [issue for issue in issues if issue.path == path]
    assert len(matches) == 1, f"expected one issue at {path}, got {[str(issue) for issue in issues]}"
    return matches[0]


MODEL_WITH_BAD_DTYPE = """\
apiVersion: kvplan/v1
kind: Model
name: m
config: config.json
weight_dtype: bf16
"""


def write_llama_config(write, examples_dir: Path) -> None:
    source = examples_dir / "models" / "hf-configs" / "deepseek-r1-distill-llama-8b.json"
    write("config.json", source.read_text(encoding="utf-8"))


def test_enum_error_location_and_message(write, examples_dir: Path) -> None:
    write_llama_config(write, examples_dir)
    path = write("model.yaml", MODEL_WITH_BAD_DTYPE)
    issues = raised_issues(load_model, path)
    issue = issue_at(issues, "$.weight_dtype")
    assert issue.file == str(path)
    assert (issue.line, issue.column) == (5, 15)
    assert issue.message == "must be one of bfloat16, float16, fp8, but got 'bf16'; did you mean 'bfloat16'?"
    assert len(issues) == 1


def test_issue_string_has_file_line_column_path(write, examples_dir: Path) -> None:
    write_llama_config(write, examples_dir)
    path = write("model.yaml", MODEL_WITH_BAD_DTYPE)
    issues = raised_issues(load_model, path)
    assert str(issues[0]).startswith(f"{path}:5:15: $.weight_dtype: must be one of bfloat16")


def test_spec_error_message_lists_every_issue(write) -> None:
    path = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nweight_dtype: bf16\nextra: 1\n")
    with pytest.raises(SpecError) as excinfo:
        load_model(path)
    lines = str(excinfo.value).splitlines()
    assert len(lines) == len(excinfo.value.issues)
    assert len(lines) == 4


@pytest.mark.parametrize(
    ("text", "path", "line", "column", "message"),
    [
        (
            "apiVersion: kvplan/v1\nkind: Model\nname: m\n",
            "$",
            1,
            1,
            "missing required key 'config'",
        ),
        (
            "apiVersion: kvplan/v2\nkind: Model\nname: m\nconfig: c.json\n",
            "$.apiVersion",
            1,
            13,
            "must be 'kvplan/v1', but got 'kvplan/v2'",
        ),
        (
            "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: c.json\nconfg: d.json\n",
            "$.confg",
            5,
            1,
            "unknown key 'confg'; did you mean 'config'?",
        ),
        (
            "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: c.json\nzzz: 1\n",
            "$.zzz",
            5,
            1,
            "unknown key 'zzz'; allowed keys are apiVersion, kind, base, name, config, weight_dtype, kv_cache_dtype, hf_repo",
        ),
        (
            "apiVersion: kvplan/v1\nkind: Model\nname: ''\nconfig: c.json\n",
            "$.name",
            3,
            7,
            "must not be empty",
        ),
        (
            "apiVersion: kvplan/v1\nkind: Model\nname: [a, b]\nconfig: c.json\n",
            "$.name",
            3,
            7,
            "must be a string, but got a list",
        ),
    ],
)
def test_model_schema_error_reported(write, text: str, path: str, line: int, column: int, message: str) -> None:
    spec_path = write("model.yaml", text)
    issue = issue_at(raised_issues(load_model, spec_path), path)
    assert (issue.line, issue.column) == (line, column)
    assert issue.message == message


WORKLOAD_WITH_ERRORS = """\
apiVersion: kvplan/v1
kind: Workload
name: w
prompt_tokens:
  distribution: lognormel
  median: 95
output_tokens:
  distribution: lognormal
  median: 4500
  sigm: 0.7
  max: 16384
requests: many
"""


def test_workload_errors_all_reported(write) -> None:
    path = write("workload.yaml", WORKLOAD_WITH_ERRORS)
    issues = raised_issues(load_workload, path)
    distribution = issue_at(issues, "$.prompt_tokens.distribution")
    assert (distribution.line, distribution.column) == (5, 17)
    assert distribution.message == (
        "must be one of fixed, lognormal, uniform, histogram, file, but got 'lognormel'; did you mean 'lognormal'?"
    )
    unknown = issue_at(issues, "$.output_tokens.sigm")
    assert (unknown.line, unknown.column) == (10, 3)
    assert unknown.message == "unknown key 'sigm'; did you mean 'sigma'?"
    requests = issue_at(issues, "$.requests")
    assert (requests.line, requests.column) == (12, 11)
    assert requests.message == "must be an integer, but got 'many'"
    missing = [issue for issue in issues if issue.path == "$.output_tokens"]
    assert [issue.message for issue in missing] == ["missing required key 'sigma'"]
    assert (missing[0].line, missing[0].column) == (7, 1)


def test_issues_sorted_by_line(write) -> None:
    path = write("workload.yaml", WORKLOAD_WITH_ERRORS)
    lines = [issue.line for issue in raised_issues(load_workload, path)]
    assert lines == sorted(lines)


@pytest.mark.parametrize(
    ("arrival", "message"),
    [
        ("requests: 10\nconcurrency: 4\n", "set exactly one of requests, arrival_rate or concurrency, but requests and concurrency are both set"),
        ("", "set exactly one of requests, arrival_rate or concurrency; none is set"),
    ],
)
def test_workload_arrival_mode_exactly_one(write, arrival: str, message: str) -> None:
    text = (
        "apiVersion: kvplan/v1\nkind: Workload\nname: w\n"
        "prompt_tokens: {distribution: fixed, value: 10}\n"
        "output_tokens: {distribution: fixed, value: 10}\n" + arrival
    )
    issue = issue_at(raised_issues(load_workload, write("workload.yaml", text)), "$")
    assert issue.message == message
    assert (issue.line, issue.column) == (1, 1)


def test_plan_errors_in_every_section_reported(write, minimal_plan) -> None:
    text = minimal_plan(
        """\
        engine:
          max_num_seq: 512
          gpu_memory_utilization: 1.5
        search:
          tp: [1, 0]
          max_num_batched_tokens: {min: 1024, max: 8192, logg: true}
        sla:
          ttft: {p99: 60}
          tpot: {P99: 100ms}
        objective: fastest
        """
    )
    path = write("plan.yaml", text)
    issues = raised_issues(load_plan, path)
    # The rendered plan has 11 lines before the appended sections.
    expected = {
        "$.engine.max_num_seq": (13, 3, "unknown key 'max_num_seq'; did you mean 'max_num_seqs'?"),
        "$.engine.gpu_memory_utilization": (14, 27, "must be at most 1, but got 1.5"),
        "$.search.tp[1]": (16, 11, "must be at least 1, but got 0"),
        "$.search.max_num_batched_tokens.logg": (17, 50, "unknown key 'logg'; did you mean 'log'?"),
        "$.sla.ttft.p99": (19, 15, "60 has no unit; add a unit, for example 60s (units: ns, us, µs, ms, s, min, h)"),
        "$.sla.tpot.P99": (20, 10, "unknown key 'P99'; did you mean 'p99'?"),
        "$.objective": (
            21,
            12,
            "must be one of makespan, throughput, throughput_per_gpu, cost, but got 'fastest'",
        ),
    }
    for json_path, (line, column, message) in expected.items():
        issue = issue_at(issues, json_path)
        assert (issue.line, issue.column) == (line, column), json_path
        assert issue.message == message
    assert len(issues) == len(expected)


def test_inline_node_bare_number_points_at_value(write, minimal_plan) -> None:
    text = minimal_plan().replace(
        "  node: h200-sxm-8\n", "  node:\n    base: h200-sxm-8\n    gpu_memory: 141\n"
    )
    issues = raised_issues(load_plan, write("plan.yaml", text))
    issue = issue_at(issues, "$.hardware.node.gpu_memory")
    assert (issue.line, issue.column) == (8, 17)
    assert "add a unit, for example 141GB" in issue.message


def test_inline_workload_missing_key_points_at_key(write, minimal_plan) -> None:
    workload = "workload:\n  name: w\n  prompt_tokens: {distribution: fixed, value: 100}\n  requests: 10\n"
    issues = raised_issues(load_plan, write("plan.yaml", minimal_plan(workload=workload)))
    issue = issue_at(issues, "$.workload")
    assert issue.message == "missing required key 'output_tokens'"
    assert (issue.line, issue.column) == (7, 1)


def test_inline_workload_unknown_distribution(write, minimal_plan) -> None:
    workload = (
        "workload:\n"
        "  name: w\n"
        "  prompt_tokens: {distribution: lognorm, median: 95, sigma: 0.45, max: 4096}\n"
        "  output_tokens: {distribution: fixed, value: 200}\n"
        "  requests: 10\n"
    )
    issues = raised_issues(load_plan, write("plan.yaml", minimal_plan(workload=workload)))
    issue = issue_at(issues, "$.workload.prompt_tokens.distribution")
    assert (issue.line, issue.column) == (9, 33)
    assert issue.message.endswith("did you mean 'lognormal'?")


def test_bits_bandwidth_explained(write) -> None:
    text = (
        "apiVersion: kvplan/v1\nkind: Node\nbase: h200-sxm-8\nname: n\n"
        "internode_bandwidth: 400Gb/s\n"
    )
    from kvplan.spec import load_node

    issue = issue_at(raised_issues(load_node, write("node.yaml", text)), "$.internode_bandwidth")
    assert (issue.line, issue.column) == (5, 22)
    assert "'Gb/s' is bits" in issue.message


def test_duplicate_key_reported(write) -> None:
    text = "apiVersion: kvplan/v1\nkind: Model\nname: m\nname: n\nconfig: c.json\n"
    issues = raised_issues(load_model, write("model.yaml", text))
    issue = issue_at(issues, "$.name")
    assert (issue.line, issue.column) == (4, 1)
    assert issue.message.startswith("duplicate key 'name'")


def test_yaml_syntax_error_located(write) -> None:
    text = "apiVersion: kvplan/v1\nkind: Model\nname: [m\nconfig: c.json\n"
    issues = raised_issues(load_model, write("model.yaml", text))
    assert len(issues) == 1
    assert issues[0].message.startswith("invalid YAML:")
    assert issues[0].line == 4
    assert issues[0].path == "$"


def test_empty_file_reported(write) -> None:
    issues = raised_issues(load_model, write("model.yaml", "# nothing here\n"))
    assert [issue.message for issue in issues] == [
        "the file is empty; expected a mapping with apiVersion: kvplan/v1 and kind"
    ]


def test_non_mapping_file_reported(write) -> None:
    issues = raised_issues(load_model, write("model.yaml", "- a\n- b\n"))
    assert issues[0].message == "expected a mapping with apiVersion: kvplan/v1 and kind, but got a list"


def test_wrong_kind_for_loader_reported(write) -> None:
    text = "apiVersion: kvplan/v1\nkind: Workload\nname: w\n"
    issue = issue_at(raised_issues(load_model, write("model.yaml", text)), "$.kind")
    assert issue.message == "expected a Model spec, but kind is 'Workload'"
    assert (issue.line, issue.column) == (2, 7)


def test_missing_top_file_reported(tmp_path: Path) -> None:
    issues = raised_issues(load_plan, tmp_path / "absent.yaml")
    assert [(issue.path, issue.message, issue.line) for issue in issues] == [("$", "file not found", None)]


def test_load_plan_rejects_other_kind(write) -> None:
    text = "apiVersion: kvplan/v1\nkind: Node\nbase: h200-sxm-8\n"
    issues = raised_issues(load_plan, write("node.yaml", text))
    assert [(issue.line, issue.path, issue.message) for issue in issues] == [
        (2, "$.kind", "expected a Plan spec, but kind is 'Node'")
    ]


def test_model_config_checked_despite_other_errors(write) -> None:
    text = "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: absent.json\nweight_dtype: int4\n"
    issues = raised_issues(load_model, write("model.yaml", text))
    assert [issue.path for issue in issues] == ["$.config", "$.weight_dtype"]
