"""Tests of the validation that GitOps needs: cross-field rules, folder search and the example repository."""

from __future__ import annotations

from pathlib import Path

from gitops_support import GITOPS_DIR, MODEL_8B, MODEL_70B

from kvplan.spec import load_plan, validate_paths
from kvplan.spec.loader import find_spec_files, validate_files

WORKLOAD = """\
workload:
  name: w
  prompt_tokens: {distribution: fixed, value: 100}
  output_tokens: {distribution: fixed, value: 100}
  requests: 10
"""


def plan_text(model: Path, node: str, extra: str = "") -> str:
    return (
        "apiVersion: kvplan/v1\n"
        "kind: Plan\n"
        "name: p\n"
        f"model: {model}\n"
        "hardware:\n"
        f"  node: {node}\n"
        f"{WORKLOAD}{extra}"
    )


def issue_rows(issues) -> list[tuple[int | None, int | None, str]]:
    return [(issue.line, issue.column, issue.path) for issue in issues]


# --- model fits the node ---------------------------------------------------------------


def test_model_too_large_for_budget_reported_at_model(write) -> None:
    path = write("p.yaml", plan_text(MODEL_70B, "h100-sxm-8", "search:\n  gpu_budget: 1\n"))

    issues = validate_paths([path])

    assert issue_rows(issues) == [(4, 8, "$.model")]
    message = issues[0].message
    assert message.startswith("model 'deepseek-r1-distill-llama-70b' does not fit node 'h100-sxm-8':")
    assert "141.1 GB per GPU even at tp 1 x pp 1" in message
    assert "gpu_memory_utilization 0.9 leaves 77.0 GB" in message


def test_model_fits_when_budget_allows_split(write) -> None:
    path = write("p.yaml", plan_text(MODEL_70B, "h100-sxm-8", "search:\n  gpu_budget: 2\n"))

    assert validate_paths([path]) == []


def test_model_fit_uses_search_tp_values(write) -> None:
    extra = "search:\n  gpu_budget: 8\n  tp: [1]\n  pp: [1]\n"
    path = write("p.yaml", plan_text(MODEL_70B, "h100-sxm-8", extra))

    issues = validate_paths([path])

    assert issue_rows(issues) == [(4, 8, "$.model")]
    assert "within gpu_budget 8 and the search's dp, tp and pp values" in issues[0].message


def test_model_fit_uses_largest_utilization(write) -> None:
    # 8B weights take 16.1 GB of the 18 GB at 0.9 of a 20 GB GPU, but not of 0.7 of it.
    node = "{base: h100-sxm-8, name: small, gpus_per_node: 1, gpu_memory: 20GB}"
    fits = write("fits.yaml", plan_text(MODEL_8B, node, "search:\n  gpu_memory_utilization: [0.7, 0.9]\n"))
    too_small = write("small.yaml", plan_text(MODEL_8B, node, "engine:\n  gpu_memory_utilization: 0.7\n"))

    assert validate_paths([fits]) == []
    assert issue_rows(validate_paths([too_small])) == [(4, 8, "$.model")]


# --- deployed ---------------------------------------------------------------------------


def test_deployed_fills_settings_from_engine(write) -> None:
    extra = "engine:\n  max_num_seqs: 300\ndeployed:\n  dp: 2\n  tp: 4\n  pp: 1\n"
    plan = load_plan(write("p.yaml", plan_text(MODEL_8B, "h200-sxm-8", extra)))

    assert plan.deployed is not None
    assert plan.deployed.to_dict() == {
        "dp": 2, "tp": 4, "pp": 1, "max_num_seqs": 300, "max_num_batched_tokens": 8192,
        "gpu_memory_utilization": 0.9,
    }


def test_plan_without_deployed_has_none(write) -> None:
    plan = load_plan(write("p.yaml", plan_text(MODEL_8B, "h200-sxm-8")))

    assert plan.deployed is None


def test_deployed_over_budget_reported_at_key(write) -> None:
    extra = "search:\n  gpu_budget: 4\ndeployed: {dp: 2, tp: 2, pp: 2}\n"
    issues = validate_paths([write("p.yaml", plan_text(MODEL_8B, "h200-sxm-8", extra))])

    assert issue_rows(issues) == [(14, 1, "$.deployed")]
    assert issues[0].message.startswith("the deployed dp 2 x tp 2 x pp 2 uses 8 GPUs, more than gpu_budget 4;")


def test_deployed_schema_errors(write) -> None:
    extra = "deployed: {dp: 1, tp: 0, max_num_seq: 64}\n"
    issues = validate_paths([write("p.yaml", plan_text(MODEL_8B, "h200-sxm-8", extra))])

    assert [(issue.path, issue.message) for issue in issues] == [
        ("$.deployed", "missing required key 'pp'"),
        ("$.deployed.tp", "must be at least 1, but got 0"),
        ("$.deployed.max_num_seq", "unknown key 'max_num_seq'; did you mean 'max_num_seqs'?"),
    ]


# --- folder search -----------------------------------------------------------------------


def test_folder_reports_wrong_api_version_of_our_kind(write, tmp_path: Path) -> None:
    wrong = write("a.yaml", "apiVersion: kvplan/v2\nkind: Node\nbase: h200-sxm-8\nname: n\n")
    misspelled = write("b.yaml", "apiVersion: kvpaln/v1\nkind: Node\nbase: h200-sxm-8\nname: n\n")
    missing = write("c.yaml", "kind: Node\nbase: h200-sxm-8\nname: n\n")

    issues = validate_paths([tmp_path])

    assert [(issue.file, issue.line, issue.path) for issue in issues] == [
        (str(wrong), 1, "$.apiVersion"),
        (str(misspelled), 1, "$.apiVersion"),
        (str(missing), 1, "$"),
    ]
    assert issues[0].message == "must be 'kvplan/v1', but got 'kvplan/v2'"
    assert issues[2].message == "missing required key 'apiVersion'"


def test_folder_skips_other_api_with_our_kind(write, tmp_path: Path) -> None:
    write("k8s-node.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: gpu-0}\n")
    write("kserve.yaml", "apiVersion: serving.kserve.io/v1beta1\nkind: Model\n")

    assert find_spec_files([tmp_path]) == ([], [])


def test_validate_files_lists_files_checked(write, tmp_path: Path) -> None:
    node = write("nodes/n.yaml", "apiVersion: kvplan/v1\nkind: Node\nbase: h200-sxm-8\nname: n\n")
    write("ci.yaml", "on: push\n")

    report = validate_files([tmp_path, MODEL_8B])

    assert report.files == (str(node), str(MODEL_8B))
    assert report.issues == ()
    assert report.valid


# --- the example spec repository ------------------------------------------------------


def test_gitops_example_errors_only_in_broken_files() -> None:
    report = validate_files([GITOPS_DIR])
    rows = [
        (Path(issue.file).relative_to(GITOPS_DIR).as_posix(), issue.line, issue.column, issue.path)
        for issue in report.issues
    ]

    assert rows == [
        ("broken/70b-on-one-h100.yaml", 6, 8, "$.model"),
        ("broken/deployed-over-budget.yaml", 11, 1, "$.deployed"),
        ("broken/missing-model.yaml", 6, 8, "$.model"),
        ("broken/sla-p95.yaml", 12, 5, "$.sla.ttft.p95"),
        ("broken/sla-p95.yaml", 14, 10, "$.sla.tpot.p50"),
        ("broken/workload-v2.yaml", 3, 13, "$.apiVersion"),
    ]
    assert "model file '../models/llama-3-8b.yaml' not found" in report.issues[2].message
    assert sorted(Path(file).relative_to(GITOPS_DIR).as_posix() for file in report.files) == [
        "broken/70b-on-one-h100.yaml",
        "broken/deployed-over-budget.yaml",
        "broken/missing-model.yaml",
        "broken/overprovisioned.yaml",
        "broken/sla-p95.yaml",
        "broken/workload-v2.yaml",
        "models/deepseek-r1-distill-llama-70b.yaml",
        "models/deepseek-r1-distill-llama-8b.yaml",
        "nodes/h200-sxm-8-priced.yaml",
        "plans/chat-8b.yaml",
        "workloads/chat.yaml",
    ]


def test_gitops_example_valid_folders_pass() -> None:
    folders = [GITOPS_DIR / name for name in ("models", "nodes", "workloads", "plans")]

    assert validate_paths(folders) == []
