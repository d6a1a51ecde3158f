"""Locations of values in spec documents that may be merged from several files.

A document given inline in a plan, or one that names a ``base``, is a shallow merge of
mappings written in different files. A :class:`SourceMap` records which file set each
top-level key, so a problem anywhere in the merged document is reported at the file,
line and column where the offending value was written.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from kvplan.spec.errors import SpecIssue
from kvplan.spec.yamlpos import JsonPath, Position, format_path


@dataclasses.dataclass(frozen=True)
class Origin:
    """The file a mapping was read from and where the mapping sits in it."""

    # File name as shown in messages, for example "examples/models/llama.yaml".
    source: str
    # Directory that relative paths written in this mapping are resolved against.
    base_dir: str
    positions: Mapping[JsonPath, Position]
    # Path of the mapping inside its file: () for a whole file, ("workload",) for a
    # workload written inline in a plan.
    root: JsonPath = ()


class SourceMap:
    """Maps paths of a merged document to the file and position where each value was written."""

    def __init__(self, origin: Origin, own_keys: frozenset[object], base: SourceMap | None = None) -> None:
        self.origin = origin
        self.own_keys = own_keys
        self.base = base

    def owner(self, path: JsonPath) -> SourceMap:
        """Return the source map of the file that set the first key of ``path``."""
        if path and self.base is not None and path[0] not in self.own_keys:
            return self.base.owner(path)
        return self

    def origin_for(self, path: JsonPath) -> Origin:
        return self.owner(path).origin

    def issue(self, path: JsonPath, message: str, *, at_key: bool = False) -> SpecIssue:
        """Build an issue at ``path``, or at its nearest written ancestor when the path is missing.

        With ``at_key`` the location is the key of the mapping entry (for unknown and
        missing keys) instead of the start of its value.
        """
        origin = self.origin_for(path)
        full_path = origin.root + tuple(path)
        located = full_path
        while located and located not in origin.positions:
            located = located[:-1]
        position = origin.positions.get(located)
        line = column = None
        if position is not None:
            use_key = (at_key or located != full_path) and position.key_line is not None
            line = position.key_line if use_key else position.line
            column = position.key_column if use_key else position.column
        return SpecIssue(origin.source, line, column, format_path(full_path), message)


_FIELD_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_field(field: str | None) -> JsonPath:
    """Split a ``ValueProblem.field`` such as ``bins[2].weight`` into path elements."""
    if not field:
        return ()
    path: list[object] = []
    for name, index in _FIELD_PART.findall(field):
        path.append(int(index) if index else name)
    return tuple(path)
