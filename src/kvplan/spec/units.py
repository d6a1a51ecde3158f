"""Parsing of quantity strings such as ``143771MiB``, ``4.8TB/s``, ``250ms`` or ``4/s``.

Every parser returns the value in SI base units (bytes, bytes/s, seconds, FLOP/s,
requests/s) and raises :class:`~kvplan.spec.errors.ValueProblem` with a message that
names the value and the accepted units. A bare number is rejected because the unit is
ambiguous (``141`` could be GB or GiB).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from kvplan.spec.errors import ValueProblem

SIZE_UNITS: Mapping[str, float] = {
    "B": 1.0,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KiB": 2.0**10,
    "MiB": 2.0**20,
    "GiB": 2.0**30,
    "TiB": 2.0**40,
}

BANDWIDTH_UNITS: Mapping[str, float] = {f"{unit}/s": factor for unit, factor in SIZE_UNITS.items()}

TIME_UNITS: Mapping[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
}

FLOP_RATE_UNITS: Mapping[str, float] = {
    "GFLOP/s": 1e9,
    "TFLOP/s": 1e12,
    "PFLOP/s": 1e15,
    "GFLOPS": 1e9,
    "TFLOPS": 1e12,
    "PFLOPS": 1e15,
}

# The unit of an arrival rate is the denominator: "4/s" means four requests per second.
ARRIVAL_RATE_UNITS: Mapping[str, float] = {
    "/s": 1.0,
    "/min": 1.0 / 60.0,
    "/h": 1.0 / 3600.0,
}

# Range of a non-zero quantity of each kind in SI base units, with the bounds as a spec
# writes them. Far beyond any GPU node, the bounds keep every value and its reciprocal
# well inside float32, which the cost model computes in: a bandwidth of 1e-300 B/s would
# become 0 there and divide by zero.
_RANGES: Mapping[str, tuple[float, str, float, str]] = {
    "size": (1.0, "1B", 1e18, "1000000TB"),
    "bandwidth": (1.0, "1B/s", 1e18, "1000000TB/s"),
    "time": (1e-9, "1ns", 3.6e9, "1000000h"),
    "FLOP rate": (1e6, "0.001GFLOP/s", 1e21, "1000000PFLOP/s"),
    "arrival rate": (1e-6, "0.0036/h", 1e9, "1000000000/s"),
}

# A non-negative decimal number (optionally with an exponent), optional spaces, a unit.
_QUANTITY_PATTERN = re.compile(
    r"^\s*(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>\S.*?)?\s*$"
)


def _parse_quantity(
    value: object,
    *,
    kind: str,
    units: Mapping[str, float],
    example_unit: str,
) -> float:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ValueProblem(
            f"invalid {kind} {value!r}; expected a string such as '10{example_unit}'"
        )
    if isinstance(value, (int, float)):
        raise ValueProblem(
            f"{value} has no unit; add a unit, for example {value}{example_unit}"
            f" (units: {', '.join(units)})"
        )
    if not isinstance(value, str):
        raise ValueProblem(f"invalid {kind} {value!r}; expected a string such as '10{example_unit}'")

    match = _QUANTITY_PATTERN.match(value)
    if match is None:
        raise ValueProblem(
            f"invalid {kind} {value!r}; expected a non-negative number followed by a unit,"
            f" for example 10{example_unit} (units: {', '.join(units)})"
        )
    number_text = match.group("number")
    unit = match.group("unit")
    if unit is None:
        raise ValueProblem(
            f"{value!r} has no unit; add a unit, for example {number_text}{example_unit}"
            f" (units: {', '.join(units)})"
        )
    if unit not in units:
        raise ValueProblem(_unknown_unit_message(value, kind, unit, units))

    number = float(number_text)
    if not math.isfinite(number):
        raise ValueProblem(f"invalid {kind} {value!r}; the number is too large")
    converted = number * units[unit]
    lowest, lowest_text, highest, highest_text = _RANGES[kind]
    if not math.isfinite(converted) or converted > highest:
        raise ValueProblem(f"{kind} {value!r} is too large; the limit is {highest_text}")
    if 0.0 < converted < lowest:
        raise ValueProblem(f"{kind} {value!r} is too small; the smallest value above 0 is {lowest_text}")
    return converted


def _unknown_unit_message(value: str, kind: str, unit: str, units: Mapping[str, float]) -> str:
    # Network bandwidth is often quoted in bits ("400Gb/s"); kvplan expects bytes.
    if re.fullmatch(r"[KMGT]?b(/s)?", unit):
        return (
            f"unknown unit {unit!r} in {kind} {value!r}; '{unit}' is bits, but kvplan expects"
            f" bytes such as GB/s (divide bits by 8)"
        )
    return f"unknown unit {unit!r} in {kind} {value!r}; use one of {', '.join(units)}"


def parse_size(value: object) -> float:
    """Parse a memory size such as ``80GB`` or ``143771MiB`` into bytes."""
    return _parse_quantity(value, kind="size", units=SIZE_UNITS, example_unit="GB")


def parse_bandwidth(value: object) -> float:
    """Parse a bandwidth such as ``4.8TB/s`` into bytes per second."""
    return _parse_quantity(value, kind="bandwidth", units=BANDWIDTH_UNITS, example_unit="GB/s")


def parse_time(value: object) -> float:
    """Parse a duration such as ``9us``, ``250ms`` or ``10min`` into seconds."""
    return _parse_quantity(value, kind="time", units=TIME_UNITS, example_unit="s")


def parse_flop_rate(value: object) -> float:
    """Parse a compute rate such as ``989TFLOP/s`` or ``989TFLOPS`` into FLOP per second."""
    return _parse_quantity(value, kind="FLOP rate", units=FLOP_RATE_UNITS, example_unit="TFLOP/s")


def parse_arrival_rate(value: object) -> float:
    """Parse a request arrival rate such as ``4/s``, ``30/min`` or ``1000/h`` into requests per second."""
    return _parse_quantity(value, kind="arrival rate", units=ARRIVAL_RATE_UNITS, example_unit="/s")


# Parsers by the JSON Schema ``format`` name that marks each quantity in the schemas.
PARSERS_BY_FORMAT: Mapping[str, Callable[[object], float]] = {
    "kvplan-size": parse_size,
    "kvplan-bandwidth": parse_bandwidth,
    "kvplan-time": parse_time,
    "kvplan-flop-rate": parse_flop_rate,
    "kvplan-arrival-rate": parse_arrival_rate,
}
