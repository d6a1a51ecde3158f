"""The reference rule: files a spec names stay inside the spec's Git work tree unless
KVPLAN_SPEC_ROOTS allows more (kvplan.spec.files, docs/robustness.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import MODEL_8B, WORKLOAD, assert_clean_failure, plan_text

OUTSIDE_WORKLOAD = """\
apiVersion: kvplan/v1
kind: Workload
name: outside
prompt_tokens: {distribution: fixed, value: 100}
output_tokens: {distribution: fixed, value: 200}
requests: 10
"""


def outside_message(reference: str, real_path: Path, tree: Path) -> str:
    return (
        f"{reference!r} resolves to {real_path}, outside the folders that specs may reference ({tree}); move the"
        " file into one of them, or add its folder to KVPLAN_SPEC_ROOTS to allow it"
    )


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Return a folder next to the work tree, holding a valid workload spec and a lengths file."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "workload.yaml").write_text(OUTSIDE_WORKLOAD, encoding="utf-8")
    (folder / "lengths.csv").write_text("output_tokens\n100\n200\n", encoding="utf-8")
    return folder


def tree_plan(work_tree: Path, **parts: str) -> Path:
    """Write a plan into work_tree/plans that names the tree's copy of the 8B model."""
    plan = work_tree / "plans" / "plan.yaml"
    plan.parent.mkdir(exist_ok=True)
    plan.write_text(plan_text(model="../models/deepseek-r1-distill-llama-8b.yaml", **parts), encoding="utf-8")
    return plan


def test_dot_dot_escape_rejected(cli, work_tree: Path, outside: Path) -> None:
    plan = tree_plan(work_tree, workload="workload: ../../outside/workload.yaml\n")

    result = cli("optimize", plan)

    assert_clean_failure(result)
    message = outside_message("../../outside/workload.yaml", outside / "workload.yaml", work_tree)
    assert f"{plan}:7:11: $.workload: workload file {message}" in result.stderr


def test_absolute_path_outside_rejected(cli, work_tree: Path, outside: Path) -> None:
    reference = str(outside / "workload.yaml")
    plan = tree_plan(work_tree, workload=f"workload: {reference}\n")

    result = cli("validate", plan)

    assert_clean_failure(result)
    assert f"{plan}:7:11: $.workload: workload file {outside_message(reference, Path(reference), work_tree)}" in result.stdout


def test_symbolic_link_escape_rejected(cli, work_tree: Path, outside: Path) -> None:
    os.symlink(outside / "workload.yaml", work_tree / "plans-workload.yaml")
    plan = tree_plan(work_tree, workload="workload: ../plans-workload.yaml\n")

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:7:11: $.workload: workload file '../plans-workload.yaml' leads through a symbolic link to"
            f" {outside / 'workload.yaml'}, outside the folders that specs may reference ({work_tree})") in result.stderr


def test_config_outside_rejected(cli, work_tree: Path, outside: Path) -> None:
    model = work_tree / "models" / "outside-config.yaml"
    model.write_text(f"apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: {outside / 'config.json'}\n",
                     encoding="utf-8")

    result = cli("validate", model)

    assert_clean_failure(result)
    message = outside_message(str(outside / "config.json"), outside / "config.json", work_tree)
    assert f"{model}:4:9: $.config: config file {message}" in result.stdout


def test_lengths_file_outside_rejected(cli, work_tree: Path, outside: Path) -> None:
    workload = WORKLOAD.replace(
        "{distribution: fixed, value: 200}",
        "{distribution: file, path: ../../outside/lengths.csv, field: output_tokens}",
    )
    plan = tree_plan(work_tree, workload=workload)

    result = cli("optimize", plan)

    assert_clean_failure(result)
    message = outside_message("../../outside/lengths.csv", outside / "lengths.csv", work_tree)
    assert f"{plan}:10:45: $.workload.output_tokens.path: lengths file {message}" in result.stderr


def test_base_outside_rejected(cli, work_tree: Path, outside: Path) -> None:
    workload = work_tree / "workload.yaml"
    workload.write_text("apiVersion: kvplan/v1\nkind: Workload\nbase: ../outside/workload.yaml\nname: w\n",
                        encoding="utf-8")

    result = cli("validate", workload)

    assert_clean_failure(result)
    message = outside_message("../outside/workload.yaml", outside / "workload.yaml", work_tree)
    assert f"{workload}:3:7: $.base: base file {message}" in result.stdout


def test_missing_outside_file_not_probed(cli, work_tree: Path, outside: Path) -> None:
    # The message is the same whether the file exists, so a spec cannot probe for files.
    plan = tree_plan(work_tree, workload="workload: ../../outside/absent.yaml\n")

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert outside_message("../../outside/absent.yaml", outside / "absent.yaml", work_tree) in result.stderr
    assert "not found" not in result.stderr


def test_dot_dot_inside_tree_allowed(cli, work_tree: Path) -> None:
    (work_tree / "workloads").mkdir()
    (work_tree / "workloads" / "w.yaml").write_text(OUTSIDE_WORKLOAD, encoding="utf-8")
    plan = tree_plan(work_tree, workload="workload: ../plans/../workloads/w.yaml\n")

    result = cli("validate", plan)

    assert result.code == 0, result.output
    assert result.stdout == "ok: 1 spec file(s) valid in 1 path(s)\n"


def test_symbolic_link_inside_tree_allowed(cli, work_tree: Path) -> None:
    (work_tree / "workloads").mkdir()
    (work_tree / "workloads" / "w.yaml").write_text(OUTSIDE_WORKLOAD, encoding="utf-8")
    os.symlink(work_tree / "workloads" / "w.yaml", work_tree / "plans-link.yaml")
    plan = tree_plan(work_tree, workload="workload: ../plans-link.yaml\n")

    result = cli("validate", plan)

    assert result.code == 0, result.output


def test_roots_variable_allows_folder(cli, work_tree: Path, outside: Path, monkeypatch) -> None:
    monkeypatch.setenv("KVPLAN_SPEC_ROOTS", f"{outside}{os.pathsep}")
    plan = tree_plan(work_tree, workload="workload: ../../outside/workload.yaml\n")

    result = cli("validate", plan)

    assert result.code == 0, result.output


def test_roots_variable_names_each_root(cli, work_tree: Path, outside: Path, tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("KVPLAN_SPEC_ROOTS", str(other))
    plan = tree_plan(work_tree, workload="workload: ../../outside/workload.yaml\n")

    result = cli("validate", plan)

    assert_clean_failure(result)
    assert f"outside the folders that specs may reference ({work_tree}, {other})" in result.stdout


def test_outside_work_tree_unrestricted(cli, write, outside: Path) -> None:
    # tmp_path contains no .git, so kvplan cannot tell where the project ends.
    plan = write("plans/plan.yaml", plan_text(model=MODEL_8B, workload="workload: ../outside/workload.yaml\n"))

    result = cli("validate", plan)

    assert result.code == 0, result.output


def test_folder_search_skips_escaping_link(cli, work_tree: Path, outside: Path) -> None:
    specs = work_tree / "specs"
    specs.mkdir()
    os.symlink(outside / "workload.yaml", specs / "linked.yaml")

    result = cli("validate", specs)

    assert_clean_failure(result)
    assert (f"{specs / 'linked.yaml'}: $: spec file {str(specs / 'linked.yaml')!r} leads through a symbolic link"
            f" to {outside / 'workload.yaml'}") in result.stdout
    assert "name the file itself to check it" in result.stdout


def test_named_link_outside_tree_is_read(cli, work_tree: Path, outside: Path) -> None:
    # Naming a file on the command line is explicit, so a link given there is followed.
    os.symlink(outside / "workload.yaml", work_tree / "linked.yaml")

    result = cli("validate", work_tree / "linked.yaml")

    assert result.code == 0, result.output
