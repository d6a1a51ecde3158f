"""JSON Schema validation of spec documents, with errors rewritten in plain words.

The schemas ship in ``kvplan/spec/schemas`` (draft 2020-12). Quantities such as sizes
and times carry a custom ``format`` that the unit parsers check, so a bad unit gets the
parser's message instead of a pattern mismatch.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema

from kvplan.spec.errors import ValueProblem
from kvplan.spec.limits import limit_problems
from kvplan.spec.units import PARSERS_BY_FORMAT
from kvplan.spec.yamlpos import JsonPath

SCHEMA_BASE_URI = "https://kvplan.dev/schemas/v1/"
KIND_SCHEMA_FILES: Mapping[str, str] = {
    "Model": "model.json",
    "Node": "node.json",
    "Workload": "workload.json",
    "Plan": "plan.json",
}
_SCHEMA_FILES = ("common.json", *KIND_SCHEMA_FILES.values())

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


@dataclasses.dataclass(frozen=True)
class SchemaProblem:
    """One schema violation: where it is, what is wrong, and whether it concerns the key."""

    path: JsonPath
    message: str
    # True when the problem is the key itself (unknown or missing), so the location
    # should point at the key rather than at its value.
    at_key: bool = False


def load_schema(file_name: str) -> dict[str, Any]:
    """Return one of the packaged JSON Schemas, for example ``plan.json``."""
    text = resources.files("kvplan.spec").joinpath("schemas").joinpath(file_name).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _registry() -> referencing.Registry:
    resources_by_uri = []
    for file_name in _SCHEMA_FILES:
        schema = load_schema(file_name)
        resource = referencing.Resource.from_contents(
            schema, default_specification=referencing.jsonschema.DRAFT202012
        )
        resources_by_uri.append((schema["$id"], resource))
    return referencing.Registry().with_resources(resources_by_uri)


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    for name, parser in PARSERS_BY_FORMAT.items():
        checker.checks(name, raises=ValueProblem)(_string_check(parser))
    return checker


def _string_check(parser: Callable[[object], float]) -> Callable[[object], bool]:
    # Non-strings fail the schema's "type" keyword already; checking them here would
    # report the same value twice.
    def check(instance: object) -> bool:
        if isinstance(instance, str):
            parser(instance)
        return True

    return check


@functools.cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(KIND_SCHEMA_FILES[kind])
    return jsonschema.Draft202012Validator(schema, registry=_registry(), format_checker=_format_checker())


def validate_document(data: Any, kind: str) -> list[SchemaProblem]:
    """Validate a whole document of one kind and return every problem found."""
    errors = list(_validator(kind).iter_errors(data))
    # JSON Schema range keywords let NaN through, because every comparison with it is false.
    problems: list[SchemaProblem] = [
        SchemaProblem(path, f"must be a finite number, but got {value}") for path, value in _non_finite_numbers(data, ())
    ]
    typed_paths = {tuple(error.absolute_path) for error in errors if error.validator == "type"}
    reported_type_paths: set[JsonPath] = set()
    for error in errors:
        path = tuple(error.absolute_path)
        # A value of the wrong type makes the other keywords at that path noise, and a
        # nested "type" (from if/then/else) repeats the first one.
        if path in typed_paths:
            if error.validator != "type" or path in reported_type_paths:
                continue
            reported_type_paths.add(path)
        problems.extend(_translate(error, path))
    # Limits apply only to values the schema accepted, so a value gets one message.
    flagged = {problem.path for problem in problems}
    problems.extend(
        SchemaProblem(path, message) for path, message in limit_problems(data, kind) if path not in flagged
    )
    return _deduplicated(problems)


def _non_finite_numbers(data: Any, path: JsonPath) -> list[tuple[JsonPath, float]]:
    if isinstance(data, float) and not math.isfinite(data):
        return [(path, data)]
    found: list[tuple[JsonPath, float]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(_non_finite_numbers(value, path + (key,)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(_non_finite_numbers(value, path + (index,)))
    return found


def _deduplicated(problems: Iterable[SchemaProblem]) -> list[SchemaProblem]:
    seen: set[tuple[JsonPath, str]] = set()
    unique = []
    for problem in problems:
        identity = (problem.path, problem.message)
        if identity not in seen:
            seen.add(identity)
            unique.append(problem)
    return unique


def describe_value(value: Any) -> str:
    """Describe a value for a message: strings quoted, containers by type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _type_list(types: Any) -> str:
    if isinstance(types, str):
        types = [types]
    names = [_TYPE_NAMES.get(name, name) for name in types]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _translate(error: jsonschema.ValidationError, path: JsonPath) -> list[SchemaProblem]:
    validator = error.validator
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.validator_value

    if validator in ("additionalProperties", "unevaluatedProperties"):
        return _unknown_keys(instance, schema, path)
    if validator == "required":
        missing = [key for key in value if isinstance(instance, dict) and key not in instance]
        return [SchemaProblem(path, f"missing required key {key!r}", at_key=True) for key in missing]
    if validator == "type":
        parser = PARSERS_BY_FORMAT.get(schema.get("format", ""))
        if parser is not None:
            try:
                parser(instance)
            except ValueProblem as problem:
                return [SchemaProblem(path, problem.message)]
        return [SchemaProblem(path, f"must be {_type_list(value)}, but got {describe_value(instance)}")]
    if validator == "format":
        cause = error.cause
        message = cause.message if isinstance(cause, ValueProblem) else f"invalid {value}: {instance!r}"
        return [SchemaProblem(path, message)]
    if validator == "enum":
        choices = ", ".join(str(choice) for choice in value)
        message = f"must be one of {choices}, but got {describe_value(instance)}"
        if isinstance(instance, str):
            suggestion = _did_you_mean(instance, [str(choice) for choice in value])
            if suggestion is not None:
                message += f"; did you mean {suggestion!r}?"
        return [SchemaProblem(path, message)]
    if validator == "const":
        return [SchemaProblem(path, f"must be {describe_value(value)}, but got {describe_value(instance)}")]
    if validator == "minimum":
        return [SchemaProblem(path, f"must be at least {value}, but got {describe_value(instance)}")]
    if validator == "exclusiveMinimum":
        return [SchemaProblem(path, f"must be greater than {value}, but got {describe_value(instance)}")]
    if validator == "maximum":
        return [SchemaProblem(path, f"must be at most {value}, but got {describe_value(instance)}")]
    if validator == "exclusiveMaximum":
        return [SchemaProblem(path, f"must be less than {value}, but got {describe_value(instance)}")]
    if validator == "minItems":
        return [SchemaProblem(path, f"must list at least {value} value{'s' if value != 1 else ''}")]
    if validator == "uniqueItems":
        repeated = _first_repeated(instance)
        return [SchemaProblem(path, f"must not list a value twice, but {describe_value(repeated)} appears more than once")]
    if validator == "minLength":
        return [SchemaProblem(path, "must not be empty")]
    if validator == "minProperties":
        return [SchemaProblem(path, "must set at least one key")]
    if validator == "oneOf":
        message = _exactly_one_key_message(instance, value)
        if message is not None:
            return [SchemaProblem(path, message)]
    return [SchemaProblem(path, error.message)]


def _unknown_keys(instance: Any, schema: Mapping[str, Any], path: JsonPath) -> list[SchemaProblem]:
    if not isinstance(instance, dict):
        return []
    allowed = list(schema.get("properties", {}))
    problems = []
    for key in instance:
        if key in allowed:
            continue
        message = f"unknown key {key!r}"
        suggestion = _did_you_mean(str(key), allowed)
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        else:
            message += f"; allowed keys are {', '.join(allowed)}"
        problems.append(SchemaProblem(path + (key,), message, at_key=True))
    return problems


def _first_repeated(values: Any) -> Any:
    seen: list[Any] = []
    for item in values if isinstance(values, list) else []:
        if item in seen:
            return item
        seen.append(item)
    return None


def _exactly_one_key_message(instance: Any, alternatives: Any) -> str | None:
    """Word a ``oneOf`` of single ``required`` keys as "set exactly one of ..."."""
    if not isinstance(instance, dict) or not isinstance(alternatives, list):
        return None
    keys = []
    for alternative in alternatives:
        if not isinstance(alternative, dict) or set(alternative) != {"required"} or len(alternative["required"]) != 1:
            return None
        keys.append(alternative["required"][0])
    present = [key for key in keys if key in instance]
    listed = ", ".join(keys[:-1]) + " or " + keys[-1]
    if not present:
        return f"set exactly one of {listed}; none is set"
    both = "both" if len(present) == 2 else "all"
    return f"set exactly one of {listed}, but {' and '.join(present)} are {both} set"
