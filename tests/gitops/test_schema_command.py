"""Tests of ``kvplan schema`` and of the exported schemas committed under schemas/."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from gitops_support import GITOPS_DIR, REPO_ROOT

from kvplan.cli import main
from kvplan.commands.schema import KINDS, exported_schema, render_schema, schema_file_name
from kvplan.spec.validation import load_schema, validate_document

SCHEMAS_DIR = REPO_ROOT / "schemas"
REGENERATE = "run `kvplan schema --output schemas` in the repository root and commit the result"


def all_refs(value) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [ref for item in value.values() for ref in all_refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in all_refs(item)]
    return []


@pytest.mark.parametrize("kind", KINDS)
def test_committed_schema_matches_package(kind: str) -> None:
    path = SCHEMAS_DIR / schema_file_name(kind)

    assert path.is_file(), f"{path} is missing; {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render_schema(kind), f"{path} is out of date; {REGENERATE}"


def test_committed_schemas_have_no_extra_files() -> None:
    expected = {schema_file_name(kind) for kind in KINDS}

    assert {path.name for path in SCHEMAS_DIR.iterdir()} == expected


@pytest.mark.parametrize("kind", KINDS)
def test_exported_schema_is_self_contained(kind: str) -> None:
    schema = exported_schema(kind)
    packaged = load_schema(schema_file_name(kind))

    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == packaged["$id"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    refs = all_refs(schema)
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref


def spec_documents() -> list[tuple[str, Path]]:
    documents = []
    for path in sorted((REPO_ROOT / "examples").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("apiVersion") == "kvplan/v1" and data.get("kind") in KINDS:
            documents.append((data["kind"], path))
    return documents


@pytest.mark.parametrize(("kind", "path"), spec_documents(), ids=lambda value: getattr(value, "name", value))
def test_exported_schema_agrees_with_package(kind: str, path: Path) -> None:
    # A validator without format checks, like an editor's. No example has a problem that
    # only the packaged unit formats catch, so both must reach the same verdict.
    validator = jsonschema.Draft202012Validator(exported_schema(kind))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))

    exported_valid = not list(validator.iter_errors(data))
    if "base" in data:
        # kvplan validates such a document after merging its base, so an editor that
        # checks the file alone must accept the keys it leaves to the base.
        assert exported_valid
    else:
        packaged_valid = not validate_document(data, kind)
        assert exported_valid == packaged_valid


def test_exported_plan_schema_rejects_misspelled_key() -> None:
    validator = jsonschema.Draft202012Validator(exported_schema("Plan"))
    data = yaml.safe_load((GITOPS_DIR / "plans" / "chat-8b.yaml").read_text(encoding="utf-8"))
    data["deployed"]["max_num_seq"] = data["deployed"].pop("max_num_seqs")

    assert [tuple(error.absolute_path) for error in validator.iter_errors(data)] == [("deployed",)]


# --- the command -------------------------------------------------------------------------


def test_schema_prints_one_kind(capsys) -> None:
    assert main(["schema", "plan"]) == 0
    captured = capsys.readouterr()

    assert captured.out == render_schema("Plan")
    assert json.loads(captured.out)["title"] == "kvplan Plan spec"
    assert captured.err == ""


def test_schema_output_writes_all_kinds(capsys, tmp_path: Path) -> None:
    output = tmp_path / "out" / "schemas"

    assert main(["schema", "--output", str(output)]) == 0

    assert sorted(path.name for path in output.iterdir()) == ["model.json", "node.json", "plan.json", "workload.json"]
    assert (output / "node.json").read_text(encoding="utf-8") == render_schema("Node")
    assert capsys.readouterr().err == f"kvplan: wrote 4 schema file(s) to {output}\n"


def test_schema_output_one_kind(tmp_path: Path) -> None:
    assert main(["schema", "Workload", "-o", str(tmp_path)]) == 0

    assert [path.name for path in tmp_path.iterdir()] == ["workload.json"]


def test_schema_output_into_file_exit_1(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")

    assert main(["schema", "--output", str(blocker)]) == 1
    assert f"kvplan schema: cannot write the schemas to {blocker}:" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    ([], "name a KIND to print its schema, or give --output DIR to write all four"),
    (["Cluster"], "argument KIND: invalid KIND 'Cluster'; choose one of Model, Node, Workload, Plan"),
])
def test_schema_usage_error_exit_2(capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["schema", *args])

    assert raised.value.code == 2
    assert message in capsys.readouterr().err
