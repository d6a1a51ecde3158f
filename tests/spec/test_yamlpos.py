"""Tests of YAML loading with node positions."""

from __future__ import annotations

import pytest

from kvplan.spec.yamlpos import Position, YamlSyntaxProblem, format_path, load_yaml

TEXT = """\
a: 1
b:
  c: [10, 20]
  d: &shared {e: 3}
f:
  <<: *shared
  g: 4
"""


def test_load_yaml_positions() -> None:
    document = load_yaml(TEXT)
    assert document.data == {"a": 1, "b": {"c": [10, 20], "d": {"e": 3}}, "f": {"e": 3, "g": 4}}
    assert document.positions[()] == Position(1, 1)
    assert document.positions[("a",)] == Position(1, 4, 1, 1)
    assert document.positions[("b",)] == Position(3, 3, 2, 1)
    assert document.positions[("b", "c", 1)] == Position(3, 11)
    assert document.positions[("f", "g")] == Position(7, 6, 7, 3)
    # A merged key points where its value is written.
    assert document.positions[("f", "e")] == Position(4, 18, 4, 15)
    assert document.duplicate_keys == ()


def test_load_yaml_duplicate_key_found() -> None:
    document = load_yaml("a: 1\nb: 2\na: 3\n")
    assert document.data == {"a": 3, "b": 2}
    assert document.duplicate_keys == ((("a",), Position(3, 4, 3, 1)),)
    assert document.positions[("a",)] == Position(3, 4, 3, 1)


def test_load_yaml_merge_override_not_duplicate() -> None:
    document = load_yaml("x: &x {a: 1}\ny:\n  <<: *x\n  a: 2\n")
    assert document.data["y"] == {"a": 2}
    assert document.duplicate_keys == ()
    assert document.positions[("y", "a")] == Position(4, 6, 4, 3)


def test_load_yaml_empty_document() -> None:
    document = load_yaml("# only a comment\n")
    assert document.data is None
    assert document.positions == {}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: [1, 2\nb: 3\n", 2),
        ("a: 1\n b: 2\n", 2),
        ("a: !!python/object:os.system x\n", 1),
        ("a: 1\n---\nb: 2\n", 2),
    ],
)
def test_load_yaml_rejects_invalid(text: str, line: int) -> None:
    with pytest.raises(YamlSyntaxProblem) as excinfo:
        load_yaml(text)
    assert excinfo.value.line == line
    assert excinfo.value.message.startswith("invalid YAML:")


def test_load_yaml_rejects_recursive_alias() -> None:
    with pytest.raises(YamlSyntaxProblem) as excinfo:
        load_yaml("a: &loop\n  b: *loop\n")
    assert "recursive" in excinfo.value.message


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ((), "$"),
        (("search", "tp", 1), "$.search.tp[1]"),
        (("odd key",), "$['odd key']"),
        ((3,), "$[3]"),
        ((True,), "$['True']"),
    ],
)
def test_format_path(path: tuple, expected: str) -> None:
    assert format_path(path) == expected
