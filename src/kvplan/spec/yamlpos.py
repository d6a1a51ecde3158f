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

# Deepest nesting of mappings and lists a spec may use. Specs need about 6 levels. The
# walks below and JSON Schema validation recurse several frames per level, so Python's
# default limit of 1,000 frames raised RecursionError for a list nested 900 deep.
MAX_NESTING_DEPTH = 32
# Values that aliases may add when expanded, beyond those written in the file. Each
# alias repeats its anchor's whole subtree, so nested aliases grow exponentially: nine
# levels of nine aliases (a "billion laughs" file of 400 bytes) expand to 490 million values.
MAX_ALIAS_EXPANSION = 10_000
# Largest integer a spec may write. Every count kvplan reads has a far smaller limit
# (kvplan.spec.limits). This one keeps conversions to float finite and turns Python's
# error for integers of more than 4,300 digits into a message with a position.
MAX_INTEGER = 2**63


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

    Raises YamlSyntaxProblem for invalid YAML, several documents in one file, an alias
    that makes the data recursive, aliases that expand the data by more than
    MAX_ALIAS_EXPANSION values, nesting deeper than MAX_NESTING_DEPTH levels and integers
    above MAX_INTEGER.
    """
    try:
        loader = _SpecLoader(text)
    except yaml.reader.ReaderError as error:
        # PyYAML checks every character when the loader is created, before it tracks lines.
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        raise YamlSyntaxProblem(
            f"invalid YAML: unacceptable character #x{error.character:04x}: {error.reason}", line, column
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(None, {}, ())
        _check_alias_expansion(node)
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


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on nesting depth and integer size."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlSyntaxProblem(
                    f"invalid YAML: mappings and lists are nested more than {MAX_NESTING_DEPTH} levels deep",
                    mark.line + 1,
                    mark.column + 1,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if node.value.lstrip().startswith("-"):
            message = f"integer {_shortened(node.value)} is too small; integers may be at least -{MAX_INTEGER:,}"
        else:
            message = f"integer {_shortened(node.value)} is too large; integers may be at most {MAX_INTEGER:,}"
        too_large = yaml.constructor.ConstructorError(None, None, message, node.start_mark)
        try:
            value = super().construct_yaml_int(node)
        except ValueError:
            # Python rejects integer strings of more than 4,300 digits.
            raise too_large from None
        if abs(value) > MAX_INTEGER:
            raise too_large
        return value


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def _shortened(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_alias_expansion(root: yaml.Node) -> None:
    """Raise YamlSyntaxProblem when aliases expand the document by more than MAX_ALIAS_EXPANSION nodes.

    Counts each distinct node once and the expanded tree with one memoized walk, so the
    check is linear in the size of the file. A back reference (a recursive alias) counts
    as one node here; _record_positions reports it afterwards.
    """
    expanded: dict[int, int] = {}
    active: set[int] = set()
    # Iterative post-order walk: (node, children already pushed).
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        identity = id(node)
        if children_done:
            active.discard(identity)
            expanded[identity] = 1 + sum(expanded.get(id(child), 1) for child in _children(node))
            continue
        if identity in expanded or identity in active:
            continue
        active.add(identity)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in expanded)
    written = len(expanded)
    if expanded[id(root)] - written > MAX_ALIAS_EXPANSION:
        mark = root.start_mark
        raise YamlSyntaxProblem(
            f"invalid YAML: aliases expand the document to {expanded[id(root)]:,} values from {written:,}"
            f" written ones, more than the {MAX_ALIAS_EXPANSION:,} extra values allowed; write the values"
            " out instead of repeating aliases",
            mark.line + 1,
            mark.column + 1,
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


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
