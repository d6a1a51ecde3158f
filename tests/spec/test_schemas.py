"""Tests of the packaged JSON Schema files."""

from __future__ import annotations

import jsonschema
import pytest

from kvplan.spec.validation import load_schema, validate_document

SCHEMA_FILES = ["common.json", "model.json", "node.json", "workload.json", "plan.json"]


@pytest.mark.parametrize("file_name", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12(file_name: str) -> None:
    schema = load_schema(file_name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://kvplan.dev/schemas/v1/{file_name}"


@pytest.mark.parametrize(
    ("kind", "document"),
    [
        ("Model", {"apiVersion": "kvplan/v1", "kind": "Model", "name": "m", "config": "c.json"}),
        (
            "Workload",
            {
                "apiVersion": "kvplan/v1",
                "kind": "Workload",
                "name": "w",
                "prompt_tokens": {"distribution": "uniform", "min": 1, "max": 9},
                "output_tokens": {
                    "distribution": "histogram",
                    "bins": [{"value": 3, "weight": 1}, {"low": 4, "high": 9, "weight": 2.5}],
                    "max": 8,
                },
                "arrival_rate": "2/s",
            },
        ),
        (
            "Plan",
            {
                "apiVersion": "kvplan/v1",
                "kind": "Plan",
                "name": "p",
                "model": "m.yaml",
                "hardware": {"node": {"base": "h200-sxm-8"}, "nodes": 2},
                "workload": "w.yaml",
                "search": {"max_num_seqs": 64, "gpu_memory_utilization": [0.8, 0.9]},
            },
        ),
    ],
)
def test_schema_accepts_valid_document(kind: str, document: dict) -> None:
    assert validate_document(document, kind) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("80GB", None),
        ("80", "'80' has no unit; add a unit, for example 80GB (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
        (80, "80 has no unit; add a unit, for example 80GB (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
        ("80 gigs", "unknown unit 'gigs' in size '80 gigs'; use one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"),
    ],
)
def test_schema_checks_units_with_parser_message(value, message: str | None) -> None:
    document = {"apiVersion": "kvplan/v1", "kind": "Node", "base": "h200-sxm-8", "gpu_memory": value}
    problems = [problem for problem in validate_document(document, "Node") if problem.path == ("gpu_memory",)]
    assert [problem.message for problem in problems] == ([] if message is None else [message])


def test_schema_wrong_type_reported_once() -> None:
    document = {"apiVersion": "kvplan/v1", "kind": "Plan", "name": "p", "model": "m", "hardware": {"node": "n"},
                "workload": "w", "search": {"max_num_batched_tokens": 512.5}}
    problems = validate_document(document, "Plan")
    assert [(problem.path, problem.message) for problem in problems] == [
        (("search", "max_num_batched_tokens"), "must be an integer, a list or a mapping, but got 512.5")
    ]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_schema_rejects_non_finite_number(value: float) -> None:
    document = {
        "apiVersion": "kvplan/v1",
        "kind": "Workload",
        "name": "w",
        "prompt_tokens": {"distribution": "lognormal", "median": 95, "sigma": value, "max": 4096},
        "output_tokens": {"distribution": "fixed", "value": 10},
        "requests": 1,
    }
    problems = validate_document(document, "Workload")
    assert [(problem.path, problem.message) for problem in problems] == [
        (("prompt_tokens", "sigma"), f"must be a finite number, but got {value}")
    ]
