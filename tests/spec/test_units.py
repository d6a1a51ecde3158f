"""Tests of the quantity parsers in kvplan.spec.units."""

from __future__ import annotations

import pytest

from kvplan.spec.errors import ValueProblem
from kvplan.spec.units import (
    parse_arrival_rate,
    parse_bandwidth,
    parse_flop_rate,
    parse_size,
    parse_time,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1B", 1.0),
        ("80GB", 80e9),
        ("141 GB", 141e9),
        ("143771MiB", 143771 * 2**20),
        ("1.5KiB", 1536.0),
        ("2TiB", 2 * 2**40),
        ("3KB", 3000.0),
        ("0.5MB", 5e5),
        ("1e3MB", 1e9),
        ("0GB", 0.0),
    ],
)
def test_size_parses(text: str, expected: float) -> None:
    assert parse_size(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4.8TB/s", 4.8e12),
        ("450GB/s", 450e9),
        ("50 GB/s", 50e9),
        ("1GiB/s", 2**30),
    ],
)
def test_bandwidth_parses(text: str, expected: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9us", 9e-6),
        ("9µs", 9e-6),
        ("250ms", 0.25),
        ("10ns", 1e-8),
        ("60s", 60.0),
        ("10min", 600.0),
        ("2h", 7200.0),
        (".5s", 0.5),
    ],
)
def test_time_parses(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("989TFLOP/s", 989e12),
        ("989TFLOPS", 989e12),
        ("1.979PFLOP/s", 1.979e15),
        ("500GFLOP/s", 500e9),
        ("2PFLOPS", 2e15),
    ],
)
def test_flop_rate_parses(text: str, expected: float) -> None:
    assert parse_flop_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4/s", 4.0),
        ("30/min", 0.5),
        ("3600/h", 1.0),
        ("0.25/s", 0.25),
    ],
)
def test_arrival_rate_parses(text: str, expected: float) -> None:
    assert parse_arrival_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("parser", "value", "expected_hint"),
    [
        (parse_size, 141, "add a unit, for example 141GB"),
        (parse_size, "141", "add a unit, for example 141GB"),
        (parse_bandwidth, 4.8, "add a unit, for example 4.8GB/s"),
        (parse_time, 60, "add a unit, for example 60s"),
        (parse_flop_rate, 989, "add a unit, for example 989TFLOP/s"),
        (parse_arrival_rate, 4, "add a unit, for example 4/s"),
    ],
)
def test_bare_number_rejected_with_unit_hint(parser, value, expected_hint: str) -> None:
    with pytest.raises(ValueProblem) as excinfo:
        parser(value)
    assert expected_hint in excinfo.value.message


@pytest.mark.parametrize(
    ("parser", "text", "expected_fragment"),
    [
        (parse_size, "141 GX", "unknown unit 'GX'"),
        (parse_size, "80gb", "unknown unit 'gb'"),
        (parse_size, "-5GB", "invalid size '-5GB'"),
        (parse_size, "GB", "invalid size 'GB'"),
        (parse_size, "", "invalid size ''"),
        (parse_bandwidth, "4.8TBs", "unknown unit 'TBs'"),
        (parse_bandwidth, "400Gb/s", "is bits"),
        (parse_time, "9 usec", "unknown unit 'usec'"),
        (parse_time, "5 days", "unknown unit 'days'"),
        (parse_flop_rate, "989TF", "unknown unit 'TF'"),
        (parse_arrival_rate, "4 per second", "unknown unit 'per second'"),
        (parse_size, "1e999GB", "too large"),
    ],
)
def test_invalid_quantity_rejected(parser, text: str, expected_fragment: str) -> None:
    with pytest.raises(ValueProblem) as excinfo:
        parser(text)
    assert expected_fragment in excinfo.value.message


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
def test_non_scalar_quantity_rejected(value) -> None:
    with pytest.raises(ValueProblem) as excinfo:
        parse_size(value)
    assert "invalid size" in excinfo.value.message


def test_unknown_unit_lists_accepted_units() -> None:
    with pytest.raises(ValueProblem) as excinfo:
        parse_time("3 fortnights")
    for unit in ("ns", "us", "ms", "s", "min", "h"):
        assert unit in excinfo.value.message
