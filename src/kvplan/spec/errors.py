"""Error types of the spec layer.

User mistakes in a spec surface as :class:`SpecError`, which carries one
:class:`SpecIssue` per problem so that every problem is reported at once, each with the
file, line and column where it sits.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SpecIssue:
    """One problem in one spec file, located by line, column and JSON path."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        location = self.file
        if self.line is not None:
            location += f":{self.line}"
            if self.column is not None:
                location += f":{self.column}"
        return f"{location}: {self.path}: {self.message}"


class KvplanError(Exception):
    """Base class of every error kvplan raises for bad input."""


class SpecError(KvplanError):
    """One or more problems in the specs, each reported with its location."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class ValueProblem(ValueError):
    """A value that builders (config parsing, distributions) reject.

    The loader turns it into a :class:`SpecIssue` at the location of the offending
    node; ``field`` optionally names a key below that node.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
