"""Public entry points that load spec files into the dataclasses of ``kvplan.spec.types``.

Every loader collects all problems it finds and raises one :class:`SpecError` that
lists them with file, line, column and JSON path; :func:`validate_paths` returns the
same issues instead of raising.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kvplan.spec.builders import build_model, build_node, build_plan, build_workload
from kvplan.spec.catalog import CATALOG
from kvplan.spec.errors import SpecError, SpecIssue, ValueProblem
from kvplan.spec.files import MAX_SPEC_FILE_BYTES, FileTooLargeError, read_text, reference_problem, reference_roots
from kvplan.spec.session import API_VERSION, LoadSession, Resolved, builtin_node_document, known_kinds
from kvplan.spec.sources import Origin, SourceMap
from kvplan.spec.types import ModelSpec, NodeSpec, Plan, WorkloadSpec
from kvplan.spec.validation import describe_value
from kvplan.spec.yamlpos import JsonPath, YamlDocument, format_path

PathLike = str | os.PathLike[str]

_YAML_SUFFIXES = (".yaml", ".yml")
# Recognizes a kvplan spec whose YAML does not parse, so validate_paths still reports it.
_API_VERSION_LINE = re.compile(rf"^apiVersion:\s*['\"]?{re.escape(API_VERSION)}['\"]?\s*(#.*)?$", re.MULTILINE)


def load_plan(path: PathLike) -> Plan:
    """Load a Plan spec file and everything it references.

    Raises SpecError listing every problem found in the plan and the files it names.
    """
    session = LoadSession()
    source = os.fspath(path)
    plan = None
    opened = _open_top_file(session, source)
    if opened is not None:
        data, source_map = opened
        if data.get("kind") != "Plan":
            session.report(source_map, ("kind",), f"expected a Plan spec, but kind is {describe_value(data.get('kind'))}")
        else:
            plan = build_plan(session, data, source_map, source=source)
    return _result(session, plan)


def load_plan_from_string(text: str, *, base_dir: PathLike = ".", source: str = "<string>") -> Plan:
    """Load a Plan from YAML text; relative paths in it are resolved against ``base_dir``."""
    session = LoadSession()
    document = session.parse_text(text, source)
    data = session.top_mapping(document, source)
    plan = None
    if data is not None and document is not None:
        origin = Origin(source, os.fspath(base_dir), document.positions, ())
        plan = build_plan(session, data, SourceMap(origin, frozenset(data)), source=source)
    return _result(session, plan)


def load_plan_from_dict(data: Mapping[str, Any], *, base_dir: PathLike = ".", source: str = "<dict>") -> Plan:
    """Load a Plan from an already parsed mapping; issues then carry no line numbers."""
    session = LoadSession()
    plan = None
    if not isinstance(data, Mapping):
        session.report_file(source, f"expected a mapping with apiVersion: {API_VERSION} and kind, but got {describe_value(data)}")
    else:
        mapping = dict(data)
        origin = Origin(source, os.fspath(base_dir), {}, ())
        plan = build_plan(session, mapping, SourceMap(origin, frozenset(mapping)), source=source)
    return _result(session, plan)


def load_plan_with_overrides(path: PathLike, overrides: Mapping[str, Any]) -> Plan:
    """Load a Plan spec file with values replaced at dotted paths, as ``kvplan sweep --set`` does.

    Each key of ``overrides`` is a dotted path into the plan document, such as
    ``workload.arrival_rate`` or ``hardware.nodes``. Its value, a parsed YAML value such
    as ``"4/s"`` or ``2``, replaces the value at that path, and ``None`` removes the key
    so that its default applies. Overrides are applied in order.

    Where the path goes through ``model``, ``workload`` or ``hardware.node`` and the plan
    names a file or a built-in node there, that reference becomes an inline mapping with
    ``base:`` set to it. The shallow base merge then applies the override, and relative
    paths still resolve against the plan file. Setting one of the workload's arrival
    modes (``requests``, ``arrival_rate``, ``concurrency``) removes the other two, even
    when the base sets them.

    Raises SpecError. A problem in an overridden value is reported with ``--set
    PATH=VALUE`` in place of the file name, and without a line.
    """
    session = _OverrideSession()
    source = os.fspath(path)
    plan = None
    opened = _open_top_file(session, source)
    if opened is not None:
        data, source_map = opened
        if data.get("kind") != "Plan":
            session.report(source_map, ("kind",), f"expected a Plan spec, but kind is {describe_value(data.get('kind'))}")
        else:
            data = copy.deepcopy(data)
            labels: dict[str, str] = {}
            valid = True
            for dotted, value in overrides.items():
                label = f"--set {dotted}={format_override_value(value)}"
                keys: tuple[str, ...] = ()
                try:
                    keys = _split_override_path(dotted)
                    _apply_override(session, data, keys, value, source_map.origin)
                except ValueProblem as problem:
                    session.issues.append(SpecIssue(label, None, None, format_path(keys), problem.message))
                    valid = False
                    continue
                labels[format_path(keys)] = label
            if valid:
                plan = build_plan(session, data, SourceMap(source_map.origin, frozenset(data)), source=source)
            _relabel_override_issues(session, source, labels)
    return _result(session, plan)


def load_model(path: PathLike) -> ModelSpec:
    """Load a Model spec file and the Hugging Face config it names."""
    return _load_kind(path, "Model")


def load_node(name_or_path: PathLike) -> NodeSpec:
    """Return a built-in node by catalog name (``h200-sxm-8``, ``h100-sxm-8``) or load a Node spec file."""
    name = os.fspath(name_or_path)
    if name in CATALOG:
        session = LoadSession()
        return _result(session, build_node(session, builtin_node_document(name)))
    return _load_kind(name, "Node")


def load_workload(path: PathLike) -> WorkloadSpec:
    """Load a Workload spec file, including the lengths files its distributions name."""
    return _load_kind(path, "Workload")


def builtin_nodes() -> dict[str, NodeSpec]:
    """Return the built-in node types by catalog name."""
    return {name: load_node(name) for name in CATALOG}


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Outcome of :func:`validate_files`: the spec files checked and every issue found."""

    # Files named directly or found in folders, in the order they were checked. Files
    # that these reference are checked too but not listed.
    files: tuple[str, ...]
    issues: tuple[SpecIssue, ...]

    @property
    def valid(self) -> bool:
        return not self.issues


def validate_paths(paths: Iterable[PathLike]) -> list[SpecIssue]:
    """Check spec files and folders and return every issue, or an empty list when all are valid.

    A file may contain any kind of spec. Folders are searched as :func:`find_spec_files`
    describes.
    """
    return list(validate_files(paths).issues)


def validate_files(paths: Iterable[PathLike]) -> ValidationReport:
    """Check spec files and folders like :func:`validate_paths`, and also return the files checked."""
    session = LoadSession()
    files = []
    for file_path in _spec_paths(session, paths):
        files.append(file_path)
        _validate_file(session, file_path)
    return ValidationReport(tuple(files), tuple(session.sorted_issues()))


def find_spec_files(paths: Iterable[PathLike]) -> tuple[list[str], list[SpecIssue]]:
    """Return the spec files among ``paths``, and an issue for each path that does not exist.

    A file is returned as given, whatever it contains. A folder is searched recursively,
    skipping hidden folders, for ``*.yaml`` and ``*.yml`` files whose apiVersion is
    kvplan/v1, so other YAML files such as CI workflows are left alone. A file whose
    ``kind`` is Model, Node, Workload or Plan is also returned when its apiVersion is
    missing or looks like a misspelled kvplan version, so that the mistake is reported.
    """
    session = LoadSession()
    files = list(_spec_paths(session, paths))
    return files, session.sorted_issues()


def _spec_paths(session: LoadSession, paths: Iterable[PathLike]) -> Iterator[str]:
    for path in paths:
        text = os.fspath(path)
        if os.path.isdir(text):
            yield from _spec_files_in(session, text)
        elif os.path.exists(text):
            yield text
        else:
            session.report_file(text, "file or folder not found")


def _load_kind(path: PathLike, kind: str) -> Any:
    session = LoadSession()
    source = os.fspath(path)
    spec = None
    opened = _open_top_file(session, source)
    if opened is not None:
        data, source_map = opened
        if data.get("kind") != kind:
            session.report(source_map, ("kind",), f"expected a {kind} spec, but kind is {describe_value(data.get('kind'))}")
        else:
            spec = _build_top_document(session, data, source_map, kind)
    return _result(session, spec)


def _validate_file(session: LoadSession, path: str) -> None:
    opened = _open_top_file(session, path)
    if opened is None:
        return
    data, source_map = opened
    kind = data.get("kind")
    if "apiVersion" not in data:
        # Checked here because a base document would otherwise supply the apiVersion.
        session.report(source_map, (), "missing required key 'apiVersion'", at_key=True)
    if "kind" not in data:
        session.report(source_map, (), "missing required key 'kind'", at_key=True)
    elif kind not in known_kinds():
        session.report(source_map, ("kind",), f"must be one of {', '.join(known_kinds())}, but got {describe_value(kind)}")
    elif kind == "Plan":
        build_plan(session, data, source_map, source=path)
    else:
        _build_top_document(session, data, source_map, kind)


def _build_top_document(session: LoadSession, data: dict[str, Any], source_map: SourceMap, kind: str) -> Any:
    chain = (os.path.realpath(source_map.origin.source),)
    resolved = session.resolve(data, source_map.origin, kind, chain)
    if resolved is None:
        return None
    builders = {"Model": build_model, "Node": build_node, "Workload": build_workload}
    return builders[kind](session, resolved)


def _open_top_file(session: LoadSession, path: str) -> tuple[dict[str, Any], SourceMap] | None:
    session.trust_folder_of(path)
    try:
        document = session.read_document(path)
    except FileNotFoundError:
        session.report_file(path, "file not found")
        return None
    except (OSError, UnicodeDecodeError) as error:
        session.report_file(path, f"cannot read the file: {error}")
        return None
    data = session.top_mapping(document, path)
    if data is None or document is None:
        return None
    origin = Origin(path, os.path.dirname(path), document.positions, ())
    return data, SourceMap(origin, frozenset(data))


def _spec_files_in(session: LoadSession, folder: str) -> list[str]:
    found = []
    roots = reference_roots(folder)
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(files):
            if name.endswith(_YAML_SUFFIXES):
                path = os.path.join(directory, name)
                # A file found in a folder follows the reference rule: a symbolic link out of
                # the folder's work tree is reported, not read.
                outside = reference_problem(path, path, roots)
                if outside is not None:
                    session.report_file(path, f"spec file {outside}; name the file itself to check it")
                elif _is_kvplan_spec(session, path):
                    found.append(path)
    return found


def _is_kvplan_spec(session: LoadSession, path: str) -> bool:
    try:
        text = read_text(path, MAX_SPEC_FILE_BYTES, "spec file")
    except FileTooLargeError:
        # Too large to be a spec, unless it starts with kvplan's apiVersion line. Loading
        # such a file reports its size.
        with open(path, "rb") as handle:
            start = handle.read(MAX_SPEC_FILE_BYTES).decode("utf-8", errors="replace")
        return _API_VERSION_LINE.search(start) is not None
    except (OSError, UnicodeDecodeError):
        return False
    if _API_VERSION_LINE.search(text):
        return True
    # Fall back to parsing, for flow style or quoting the line check does not cover.
    probe = LoadSession()
    document: YamlDocument | None = probe.parse_text(text, path)
    if document is None or not isinstance(document.data, dict):
        return False
    data = document.data
    if data.get("apiVersion") == API_VERSION:
        return True
    # One of our kinds with a wrong apiVersion is reported instead of skipped, unless the
    # apiVersion names another API: Kubernetes, for one, has a kind Node in apiVersion v1.
    return data.get("kind") in known_kinds() and not _names_other_api(data.get("apiVersion"))


def _names_other_api(api_version: Any) -> bool:
    """Return whether an apiVersion value belongs to another API rather than misspelling kvplan/v1."""
    if not isinstance(api_version, str):
        return False
    text = api_version.strip().lower()
    if text.startswith("kvplan"):
        return False
    return difflib.SequenceMatcher(None, text, API_VERSION).ratio() < 0.8


def _result(session: LoadSession, value: Any) -> Any:
    issues = session.sorted_issues()
    if issues:
        raise SpecError(issues)
    if value is None:
        # Every path that returns None reports an issue first; reaching this is a bug.
        raise AssertionError("spec loading failed without reporting an issue")
    return value


# Overrides


# Plan keys whose value may name another document instead of containing it.
_REFERENCE_KINDS: Mapping[JsonPath, str] = {
    ("model",): "Model",
    ("hardware", "node"): "Node",
    ("workload",): "Workload",
}
# A workload sets exactly one of these keys, which picks its arrival mode.
_ARRIVAL_MODE_KEYS = ("requests", "arrival_rate", "concurrency")


class _OverrideSession(LoadSession):
    """A load session that also removes keys that overrides removed from a document's base."""

    def __init__(self) -> None:
        super().__init__()
        # Inline documents, compared by identity, and the keys to drop after their base merge.
        self._dropped: list[tuple[Mapping[str, Any], set[str]]] = []

    def drop_after_merge(self, document: Mapping[str, Any], keys: Iterable[str]) -> None:
        self._dropped_keys(document).update(keys)

    def keep_after_merge(self, document: Mapping[str, Any], key: str) -> None:
        """Undo an earlier drop of ``key``, because a later override sets it again."""
        self._dropped_keys(document).discard(key)

    def _dropped_keys(self, document: Mapping[str, Any]) -> set[str]:
        for mapping, dropped in self._dropped:
            if mapping is document:
                return dropped
        dropped = set()
        self._dropped.append((document, dropped))
        return dropped

    def resolve(self, data: Mapping[str, Any], origin: Origin, kind: str, chain: tuple[str, ...]) -> Resolved | None:
        resolved = super().resolve(data, origin, kind, chain)
        if resolved is None:
            return None
        for mapping, dropped in self._dropped:
            if mapping is data:
                merged, source_map = resolved
                return {key: value for key, value in merged.items() if key not in dropped}, source_map
        return resolved


def format_override_value(value: Any) -> str:
    """Format an override value as it would be written after ``--set PATH=``."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _split_override_path(dotted: object) -> tuple[str, ...]:
    if not isinstance(dotted, str) or not dotted:
        raise ValueProblem(f"invalid path {dotted!r}; write keys joined by dots, for example workload.arrival_rate")
    keys = tuple(dotted.split("."))
    if any(not key or key != key.strip() for key in keys):
        raise ValueProblem(f"invalid path {dotted!r}; write keys joined by dots, for example workload.arrival_rate")
    return keys


def _apply_override(
    session: _OverrideSession, data: dict[str, Any], keys: tuple[str, ...], value: Any, plan_origin: Origin
) -> None:
    """Set ``value`` at ``keys`` of the plan mapping ``data``; raise ValueProblem when the path cannot exist."""
    container = data
    # The innermost document on the path that the plan names or contains: (mapping, kind, path).
    document: tuple[dict[str, Any], str, JsonPath] | None = None
    for depth, key in enumerate(keys[:-1]):
        path = keys[: depth + 1]
        child = container.get(key)
        kind = _REFERENCE_KINDS.get(path)
        if kind is not None and isinstance(child, str):
            child = {"base": child}
        elif child is None and document is not None and container is document[0] and "base" in container:
            # The base merge is shallow, so a nested override of a key the base sets
            # must start from the base's whole value.
            child = _inherited_value(document, key, plan_origin)
        elif child is None:
            child = {}
        if not isinstance(child, dict):
            raise ValueProblem(
                f"cannot set {'.'.join(keys)}, because {'.'.join(path)} is {describe_value(child)}, not a mapping"
            )
        container[key] = child
        if kind is not None:
            document = (child, kind, path)
        container = child

    last = keys[-1]
    in_document = document is not None and container is document[0]
    if value is None:
        container.pop(last, None)
        if in_document and "base" in container:
            session.drop_after_merge(container, [last])
        return
    container[last] = copy.deepcopy(value)
    if in_document:
        session.keep_after_merge(container, last)
    if in_document and document[1] == "Workload" and last in _ARRIVAL_MODE_KEYS:
        others = [key for key in _ARRIVAL_MODE_KEYS if key != last]
        for key in others:
            container.pop(key, None)
        session.drop_after_merge(container, others)


def _inherited_value(document: tuple[dict[str, Any], str, JsonPath], key: str, plan_origin: Origin) -> Any:
    """Return a copy of the value that ``document``'s base chain sets for ``key``, or {} when none does.

    A lengths file path in the value is rewritten relative to the plan file, because
    the copy moves from the base file into the plan. A base that cannot be loaded yields
    {}, and loading the plan then reports why.
    """
    mapping, kind, path = document
    probe = LoadSession()
    probe.trust_folder_of(plan_origin.source)
    origin = Origin(plan_origin.source, plan_origin.base_dir, plan_origin.positions, path)
    chain = (os.path.realpath(plan_origin.source),)
    resolved = probe.resolve(mapping, origin, kind, chain)
    if resolved is None or key not in resolved[0]:
        return {}
    merged, source_map = resolved
    value = copy.deepcopy(merged[key])
    if isinstance(value, dict) and value.get("distribution") == "file" and isinstance(value.get("path"), str):
        lengths_file = os.path.join(source_map.origin_for((key,)).base_dir, value["path"])
        value["path"] = os.path.relpath(lengths_file, plan_origin.base_dir or os.curdir)
    return value


def _relabel_override_issues(session: LoadSession, source: str, labels: Mapping[str, str]) -> None:
    """Report problems at or below an overridden path against its ``--set`` text, not the plan's lines."""
    for index, issue in enumerate(session.issues):
        if issue.file != source:
            continue
        matches = [
            json_path for json_path in labels
            if issue.path == json_path or issue.path.startswith((f"{json_path}.", f"{json_path}["))
        ]
        if matches:
            label = labels[max(matches, key=len)]
            session.issues[index] = SpecIssue(label, None, None, issue.path, issue.message)
