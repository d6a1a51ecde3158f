"""Reading spec files, resolving ``base`` references and collecting every issue.

A :class:`LoadSession` lives for one public call (``load_plan``, ``validate_paths``, ...).
It caches parsed files, so a workload shared by several plans is read once, and it
collects issues instead of stopping at the first one.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from kvplan.spec.catalog import CATALOG
from kvplan.spec.errors import SpecIssue
from kvplan.spec.files import MAX_SPEC_FILE_BYTES, FileTooLargeError, read_text, reference_problem, reference_roots
from kvplan.spec.sources import Origin, SourceMap
from kvplan.spec.validation import KIND_SCHEMA_FILES, SchemaProblem, describe_value, validate_document
from kvplan.spec.yamlpos import JsonPath, YamlDocument, YamlSyntaxProblem, format_path, load_yaml

API_VERSION = "kvplan/v1"

Resolved = tuple[dict[str, Any], SourceMap]


class LoadSession:
    """Issue collector and file cache for one load or validation call."""

    def __init__(self) -> None:
        self.issues: list[SpecIssue] = []
        # Parsed files by real path; None marks a file whose syntax error was reported.
        self._documents: dict[str, YamlDocument | None] = {}
        # Folders that referenced files may lie in, None for any; see kvplan.spec.files.
        # Spec text and mappings passed in memory (load_plan_from_string, ...) keep None,
        # because their caller chose the base folder.
        self.roots: tuple[str, ...] | None = None

    def trust_folder_of(self, spec_path: str) -> None:
        """Let the specs loaded next reference files in the work tree of ``spec_path``'s folder."""
        self.roots = reference_roots(os.path.dirname(spec_path))

    def reference_problem(self, path: str, reference: str) -> str | None:
        """Return why a referenced file may not be read, or None; see kvplan.spec.files."""
        return reference_problem(path, reference, self.roots)

    # Reporting

    def report(self, source_map: SourceMap, path: JsonPath, message: str, *, at_key: bool = False) -> None:
        self.issues.append(source_map.issue(path, message, at_key=at_key))

    def report_file(self, source: str, message: str, line: int | None = None, column: int | None = None) -> None:
        self.issues.append(SpecIssue(source, line, column, "$", message))

    def report_schema_problems(self, problems: Iterable[SchemaProblem], source_map: SourceMap) -> None:
        for problem in problems:
            self.report(source_map, problem.path, problem.message, at_key=problem.at_key)

    def sorted_issues(self) -> list[SpecIssue]:
        """Return the issues without repeats, grouped by file in first-seen order, then by line."""
        unique: list[SpecIssue] = []
        seen: set[SpecIssue] = set()
        for issue in self.issues:
            if issue not in seen:
                seen.add(issue)
                unique.append(issue)
        file_order: dict[str, int] = {}
        for issue in unique:
            file_order.setdefault(issue.file, len(file_order))
        return sorted(
            unique,
            key=lambda issue: (
                file_order[issue.file],
                issue.line if issue.line is not None else 0,
                issue.column if issue.column is not None else 0,
            ),
        )

    # Files

    def read_document(self, display_path: str) -> YamlDocument | None:
        """Parse a YAML file, reporting syntax errors and duplicate keys once per file.

        Returns None when the file could not be parsed or is larger than
        MAX_SPEC_FILE_BYTES. Raises OSError when it cannot be read, so that the caller can
        report the error where the file is referenced.
        """
        real_path = os.path.realpath(display_path)
        if real_path in self._documents:
            return self._documents[real_path]
        try:
            text = read_text(display_path, MAX_SPEC_FILE_BYTES, "spec file")
        except FileTooLargeError as error:
            self.report_file(display_path, f"{error}; a spec file is a few KB, so check that this is the intended file")
            self._documents[real_path] = None
            return None
        document = self.parse_text(text, display_path)
        self._documents[real_path] = document
        return document

    def parse_text(self, text: str, source: str) -> YamlDocument | None:
        try:
            document = load_yaml(text)
        except YamlSyntaxProblem as problem:
            self.report_file(source, problem.message, problem.line, problem.column)
            return None
        for path, position in document.duplicate_keys:
            self.issues.append(
                SpecIssue(
                    source,
                    position.key_line,
                    position.key_column,
                    format_path(path),
                    f"duplicate key {path[-1]!r}; YAML keeps only the later value, so remove one of them",
                )
            )
        return document

    def top_mapping(self, document: YamlDocument | None, source: str) -> dict[str, Any] | None:
        """Return the document's top-level mapping, reporting an empty file or another type."""
        if document is None:
            return None
        if document.data is None:
            self.report_file(source, f"the file is empty; expected a mapping with apiVersion: {API_VERSION} and kind", 1, 1)
            return None
        if not isinstance(document.data, dict):
            self.report_file(
                source,
                f"expected a mapping with apiVersion: {API_VERSION} and kind, but got {describe_value(document.data)}",
                1,
                1,
            )
            return None
        return document.data

    # Base references

    def resolve(self, data: Mapping[str, Any], origin: Origin, kind: str, chain: tuple[str, ...]) -> Resolved | None:
        """Merge ``data`` over the document its ``base`` names, recursively.

        ``chain`` holds the real paths of the files already on the way here, so a
        circular reference is reported instead of followed. Returns None when the base
        cannot be loaded; the reason has been reported.
        """
        own = SourceMap(origin, frozenset(data))
        if "base" not in data:
            return dict(data), own

        base_value = data["base"]
        if not isinstance(base_value, str) or not base_value:
            expected = "a file path or a built-in node name" if kind == "Node" else "a file path"
            self.report(own, ("base",), f"must be {expected}, but got {describe_value(base_value)}")
            return None

        if kind == "Node" and base_value in CATALOG:
            base = builtin_node_document(base_value)
        else:
            base = self._resolve_base_file(base_value, own, origin, kind, chain)
            if base is None:
                return None

        base_data, base_map = base
        merged = dict(base_data)
        merged.update((key, value) for key, value in data.items() if key != "base")
        return merged, SourceMap(origin, frozenset(key for key in data if key != "base"), base_map)

    def _resolve_base_file(
        self, reference: str, own: SourceMap, origin: Origin, kind: str, chain: tuple[str, ...]
    ) -> Resolved | None:
        display_path = os.path.normpath(os.path.join(origin.base_dir, reference))
        real_path = os.path.realpath(display_path)
        if real_path in chain:
            cycle = " -> ".join([*(_short(path) for path in chain), _short(real_path)])
            self.report(own, ("base",), f"circular base reference: {cycle}")
            return None

        loaded = self.load_referenced_file(display_path, reference, own, ("base",), kind, role="base")
        if loaded is None:
            return None
        base_data, base_origin = loaded
        return self.resolve(base_data, base_origin, kind, chain + (real_path,))

    def load_referenced_file(
        self,
        display_path: str,
        reference: str,
        referrer: SourceMap,
        path: JsonPath,
        kind: str,
        *,
        role: str,
    ) -> tuple[dict[str, Any], Origin] | None:
        """Read a file named at ``path`` of the referring document and check its kind.

        A missing file, a file outside the reference roots and a file of another kind are
        reported at the referring key. Problems inside the file are reported in that file.
        """
        outside = self.reference_problem(display_path, reference)
        if outside is not None:
            self.report(referrer, path, f"{role} file {outside}")
            return None
        try:
            document = self.read_document(display_path)
        except FileNotFoundError:
            message = f"{role} file {reference!r} not found (looked for {display_path})"
            if kind == "Node":
                message += f"; it is not a built-in node either ({', '.join(sorted(CATALOG))})"
                close = difflib.get_close_matches(str(reference), list(CATALOG), n=1, cutoff=0.6)
                if close:
                    message += f"; did you mean {close[0]!r}?"
            self.report(referrer, path, message)
            return None
        except (IsADirectoryError, NotADirectoryError):
            self.report(referrer, path, f"{role} {reference!r} is not a file (looked for {display_path})")
            return None
        except (OSError, UnicodeDecodeError) as error:
            self.report(referrer, path, f"cannot read {role} file {display_path}: {error}")
            return None

        data = self.top_mapping(document, display_path)
        if data is None or document is None:
            return None
        actual_kind = data.get("kind")
        if actual_kind != kind:
            found = f"a {actual_kind} spec" if isinstance(actual_kind, str) else "a file without a kind"
            self.report(referrer, path, f"{reference!r} is {found}, but {role} must name a {kind} spec")
            return None
        origin = Origin(display_path, os.path.dirname(display_path), document.positions, ())
        return data, origin

    # Schema validation

    def validate(self, data: Mapping[str, Any], source_map: SourceMap, kind: str) -> list[SchemaProblem]:
        """Validate a merged document, report its problems and return them."""
        problems = validate_document(data, kind)
        self.report_schema_problems(problems, source_map)
        return problems


def builtin_node_document(name: str) -> Resolved:
    """Return a built-in node as a Node document and a source map that names the catalog."""
    data: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Node", **copy.deepcopy(dict(CATALOG[name]))}
    origin = Origin(f"<built-in node {name}>", ".", {}, ())
    return data, SourceMap(origin, frozenset(data))


def is_clean(problems: Iterable[SchemaProblem], prefix: JsonPath) -> bool:
    """Return whether no schema problem lies at or below ``prefix``."""
    return not any(problem.path[: len(prefix)] == prefix for problem in problems)


def _short(path: str) -> str:
    return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path


def known_kinds() -> tuple[str, ...]:
    return tuple(KIND_SCHEMA_FILES)
