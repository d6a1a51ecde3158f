"""Public entry points that load spec files into the dataclasses of ``kvplan.spec.types``.

Every loader collects all problems it finds and raises one :class:`SpecError` that
lists them with file, line, column and JSON path; :func:`validate_paths` returns the
same issues instead of raising.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kvplan.spec.builders import build_model, build_node, build_plan, build_workload
from kvplan.spec.catalog import CATALOG
from kvplan.spec.errors import SpecError, SpecIssue
from kvplan.spec.session import API_VERSION, LoadSession, builtin_node_document, known_kinds
from kvplan.spec.sources import Origin, SourceMap
from kvplan.spec.types import ModelSpec, NodeSpec, Plan, WorkloadSpec
from kvplan.spec.validation import describe_value
from kvplan.spec.yamlpos import YamlDocument

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


def validate_paths(paths: Iterable[PathLike]) -> list[SpecIssue]:
    """Check spec files and folders and return every issue, or an empty list when all are valid.

    A file may contain any kind of spec. A folder is searched recursively (skipping hidden
    folders) for ``*.yaml`` and ``*.yml`` files whose apiVersion is kvplan/v1, so other
    YAML files such as CI workflows are left alone.
    """
    session = LoadSession()
    for path in paths:
        text = os.fspath(path)
        if os.path.isdir(text):
            for file_path in _spec_files_in(session, text):
                _validate_file(session, file_path)
        elif os.path.exists(text):
            _validate_file(session, text)
        else:
            session.report_file(text, "file or folder not found")
    return session.sorted_issues()


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
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(files):
            if name.endswith(_YAML_SUFFIXES):
                path = os.path.join(directory, name)
                if _is_kvplan_spec(session, path):
                    found.append(path)
    return found


def _is_kvplan_spec(session: LoadSession, path: str) -> bool:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return False
    if _API_VERSION_LINE.search(text):
        return True
    # Fall back to parsing, for flow style or quoting the line check does not cover.
    probe = LoadSession()
    document: YamlDocument | None = probe.parse_text(text, path)
    return document is not None and isinstance(document.data, dict) and document.data.get("apiVersion") == API_VERSION


def _result(session: LoadSession, value: Any) -> Any:
    issues = session.sorted_issues()
    if issues:
        raise SpecError(issues)
    if value is None:
        # Every path that returns None reports an issue first; reaching this is a bug.
        raise AssertionError("spec loading failed without reporting an issue")
    return value
