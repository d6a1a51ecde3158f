"""YAML loading that keeps the line and column of every node.

PyYAML's safe loader composes a node tree that carries source marks, and the data is
constructed from that tree. A walk over the same tree then maps each JSON path (a tuple
of mapping keys and list indices) to where its value and key start.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

JsonPath = tuple[Any, ...]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Position:
    """1-based location of a value, and of its key when the value sits in a mapping."""

    line: int
    column: int
    key_line: int | None = None
    key_column: int | None = None


@dataclasses.dataclass(frozen=True)
class YamlDocument:
    data: Any
    positions: dict[JsonPath, Position]
    # Paths of keys that appear twice in one mapping, at the second occurrence.
    duplicate_keys: tuple[tuple[JsonPath, Position], ...]


class YamlSyntaxProblem(Exception):
    """The text is not valid YAML, or uses a YAML feature the specs do not support."""

    def __init__(self, message: str, line: int | None, column: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def format_path(path: JsonPath) -> str:
    """Format a path as a JSONPath string such as ``$.search.tp[1]``."""
    parts = ["$"]
    for element in path:
        if isinstance(element, int) and not isinstance(element, bool):
            parts.append(f"[{element}]")
        elif isinstance(element, str) and _IDENTIFIER.match(element):
            parts.append(f".{element}")
        else:
            parts.append(f"[{str(element)!r}]")
    return "".join(parts)


def load_yaml(text: str) -> YamlDocument:
    """Parse one YAML document with the safe loader and record node positions.

    Raises YamlSyntaxProblem for invalid YAML, several documents in one file, or
    an alias that makes the data recursive.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(None, {}, ())
        duplicates: list[tuple[JsonPath, Position]] = []
        _find_duplicate_keys(loader, node, (), duplicates, set())
        data = loader.construct_document(node)
        positions: dict[JsonPath, Position] = {}
        _record_positions(loader, node, (), _mark_position(node.start_mark), positions, set())
        return YamlDocument(data, positions, tuple(duplicates))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        message = error.problem or str(error)
        if error.context:
            message = f"{error.context}, {message}"
        if mark is None:
            raise YamlSyntaxProblem(f"invalid YAML: {message}", None, None) from None
        raise YamlSyntaxProblem(f"invalid YAML: {message}", mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as error:
        raise YamlSyntaxProblem(f"invalid YAML: {error}", None, None) from None
    finally:
        loader.dispose()


def _mark_position(mark: yaml.Mark, key_mark: yaml.Mark | None = None) -> Position:
    if key_mark is None:
        return Position(mark.line + 1, mark.column + 1)
    return Position(mark.line + 1, mark.column + 1, key_mark.line + 1, key_mark.column + 1)


def _key_identity(node: yaml.Node) -> tuple[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        return (node.tag, node.value)
    return (node.tag, id(node))


def _find_duplicate_keys(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: JsonPath,
    found: list[tuple[JsonPath, Position]],
    active: set[int],
) -> None:
    # Runs before construction, which merges "<<" keys into the mapping; a key that
    # overrides a merged one is therefore not reported.
    if id(node) in active:
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[tuple[str, Any]] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            identity = _key_identity(key_node)
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            if identity in seen:
                found.append((path + (key,), _mark_position(value_node.start_mark, key_node.start_mark)))
            seen.add(identity)
            _find_duplicate_keys(loader, value_node, path + (key,), found, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicate_keys(loader, item, path + (index,), found, active)
    active.discard(id(node))


def _record_positions(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: JsonPath,
    position: Position,
    positions: dict[JsonPath, Position],
    active: set[int],
) -> None:
    if id(node) in active:
        raise YamlSyntaxProblem(
            "invalid YAML: an alias refers to a node that contains it, which makes the data recursive",
            position.line,
            position.column,
        )
    # A later occurrence of a path overwrites an earlier one, because PyYAML keeps the
    # last value of a duplicate key and a key written next to a "<<" merge wins over it.
    positions[path] = position
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue
            child = _mark_position(value_node.start_mark, key_node.start_mark)
            _record_positions(loader, value_node, path + (key,), child, positions, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_positions(loader, item, path + (index,), _mark_position(item.start_mark), positions, active)
    active.discard(id(node))
