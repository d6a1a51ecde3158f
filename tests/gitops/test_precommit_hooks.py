"""Tests of .pre-commit-hooks.yaml and of pre-commit running the hooks on examples/gitops.

The run uses examples/gitops/.pre-commit-config.yaml, whose hooks are the same commands
with ``language: system``: pre-commit then runs the kvplan installed next to this Python
instead of building an environment with JAX and Optuna from the package registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gitops_support import GITOPS_DIR, REPO_ROOT

pytest.importorskip("pre_commit", reason="pre-commit is part of the test extra: pip install '.[test]'")

HOOKS_FILE = REPO_ROOT / ".pre-commit-hooks.yaml"
EXAMPLE_CONFIG = GITOPS_DIR / ".pre-commit-config.yaml"
HOOK_IDS = ["kvplan-validate", "kvplan-check"]
# Keys a hook definition in a local config must copy from .pre-commit-hooks.yaml to run
# the same command on the same files.
SHARED_KEYS = ("name", "entry", "pass_filenames", "files")


def manifest_hooks() -> dict[str, dict]:
    hooks = yaml.safe_load(HOOKS_FILE.read_text(encoding="utf-8"))
    return {hook["id"]: hook for hook in hooks}


def example_local_hooks() -> dict[str, dict]:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    local = [repo for repo in config["repos"] if repo["repo"] == "local"]
    assert len(local) == 1, f"{EXAMPLE_CONFIG} should have one repo: local entry"
    return {hook["id"]: hook for hook in local[0]["hooks"]}


def pre_commit(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pre_commit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_hooks_manifest_defines_both_hooks() -> None:
    hooks = manifest_hooks()

    assert list(hooks) == HOOK_IDS
    assert hooks["kvplan-validate"]["entry"] == "kvplan validate"
    assert hooks["kvplan-check"]["entry"] == "kvplan check"
    for hook in hooks.values():
        assert hook["language"] == "python"
        assert hook["pass_filenames"] is False
        assert hook["args"] == ["."]
        assert hook["name"]
        assert hook["description"]


def test_hooks_manifest_accepted_by_pre_commit() -> None:
    run = pre_commit("validate-manifest", str(HOOKS_FILE), cwd=REPO_ROOT)

    assert run.returncode == 0, run.stdout + run.stderr


def test_example_config_accepted_by_pre_commit() -> None:
    run = pre_commit("validate-config", str(EXAMPLE_CONFIG), cwd=REPO_ROOT)

    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("hook_id", HOOK_IDS)
def test_example_config_copies_manifest(hook_id: str) -> None:
    manifest = manifest_hooks()[hook_id]
    local = example_local_hooks()[hook_id]

    assert local["language"] == "system"
    for key in SHARED_KEYS:
        assert local[key] == manifest[key], key
    assert local["args"][: len(manifest["args"])] == manifest["args"]


@pytest.fixture(scope="module")
def pre_commit_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """Run ``pre-commit run --all-files`` in a new git repository holding a copy of examples/gitops."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    kvplan_script = Path(sys.executable).parent / "kvplan"
    assert kvplan_script.is_file(), f"{kvplan_script} not found; install kvplan into this environment"

    work_dir = tmp_path_factory.mktemp("gitops")
    repository = work_dir / "specs"
    shutil.copytree(GITOPS_DIR, repository)
    env = {
        **os.environ,
        "PATH": f"{kvplan_script.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PRE_COMMIT_HOME": str(work_dir / "pre-commit-home"),
    }
    subprocess.run([git, "init", "--quiet"], cwd=repository, env=env, check=True)
    subprocess.run([git, "add", "--all"], cwd=repository, env=env, check=True)
    return pre_commit("run", "--all-files", "--color", "never", cwd=repository, env=env)


def test_pre_commit_fails_on_broken_specs(pre_commit_run) -> None:
    assert pre_commit_run.returncode == 1, pre_commit_run.stdout + pre_commit_run.stderr


def test_pre_commit_validate_lists_line_numbered_errors(pre_commit_run) -> None:
    output = pre_commit_run.stdout
    # The hook validates ".", so file names start with "./".
    error_lines = [line for line in output.splitlines() if line.startswith("./") and ": $." in line]

    locations = [line.split(": $.")[0] for line in error_lines]
    assert locations == [
        "./broken/70b-on-one-h100.yaml:6:8",
        "./broken/deployed-over-budget.yaml:11:1",
        "./broken/missing-model.yaml:6:8",
        "./broken/sla-p95.yaml:12:5",
        "./broken/sla-p95.yaml:14:10",
        "./broken/workload-v2.yaml:3:13",
        # kvplan check reports the plan it cannot load as well.
        "./broken/deployed-over-budget.yaml:11:1",
    ], output
    assert "kvplan: 6 problem(s) in 5 file(s)" in output


def test_pre_commit_check_passes_good_and_fails_bad(pre_commit_run) -> None:
    output = pre_commit_run.stdout
    chat_block = output.split("Plan chat-8b:")[1]
    overprovisioned_block = output.split("Plan chat-8b-overprovisioned:")[1].split("Plan chat-8b:")[0]

    assert "\nCheck passed: the deployed deployment fits, meets the SLA" in chat_block
    assert "\nCheck failed: the deployed dp=2 tp=2 pp=1 " in overprovisioned_block
    assert "kvplan: 1 of 2 plan(s) failed the check" in output
