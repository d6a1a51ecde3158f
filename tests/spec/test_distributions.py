"""Tests of the token-length distributions and their discretization."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kvplan.spec.distributions import (
    build_length_distribution,
    distribution_mean,
    lognormal_cut_mean,
)
from kvplan.spec.errors import ValueProblem
from kvplan.spec.types import DISTRIBUTION_BINS, LengthDistribution


def numeric_cut_lognormal_mean(median: float, sigma: float, maximum: float) -> float:
    """E[min(X, maximum)] by the trapezoid rule over the standard normal, independent of the closed form."""
    steps = 200_000
    low, high = -12.0, 12.0
    width = (high - low) / steps
    total = 0.0
    for index in range(steps + 1):
        z = low + index * width
        weight = 0.5 if index in (0, steps) else 1.0
        density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        total += weight * min(median * math.exp(sigma * z), maximum) * density
    return total * width


def assert_valid_distribution(distribution: LengthDistribution) -> None:
    assert 1 <= len(distribution.values) <= DISTRIBUTION_BINS
    assert len(distribution.values) == len(distribution.probabilities)
    assert math.fsum(distribution.probabilities) == pytest.approx(1.0, abs=1e-12)
    assert all(probability > 0.0 for probability in distribution.probabilities)
    assert max(distribution.values) <= distribution.max_tokens


LOGNORMAL_CASES = [
    (95.0, 0.45, 4096),
    (4500.0, 0.7, 16384),
    (600.0, 0.5, 16384),
    (1000.0, 1.5, 2000),
    (2000.0, 0.3, 2000),
    (50.0, 2.0, 100_000),
]


@pytest.mark.parametrize(("median", "sigma", "maximum"), LOGNORMAL_CASES)
def test_lognormal_mean_matches_numeric_integral(median: float, sigma: float, maximum: int) -> None:
    spec = {"distribution": "lognormal", "median": median, "sigma": sigma, "max": maximum}
    distribution = build_length_distribution(spec, base_dir=".")
    expected = numeric_cut_lognormal_mean(median, sigma, maximum)
    assert distribution_mean(distribution) == pytest.approx(expected, rel=0.005)
    assert lognormal_cut_mean(median, sigma, maximum) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("median", "sigma", "maximum"), LOGNORMAL_CASES)
def test_lognormal_discretization_is_valid(median: float, sigma: float, maximum: int) -> None:
    spec = {"distribution": "lognormal", "median": median, "sigma": sigma, "max": maximum}
    distribution = build_length_distribution(spec, base_dir=".")
    assert_valid_distribution(distribution)
    assert distribution.max_tokens == maximum
    assert list(distribution.values) == sorted(distribution.values)


def test_lognormal_keeps_probability_at_max() -> None:
    spec = {"distribution": "lognormal", "median": 4500, "sigma": 0.7, "max": 16384}
    distribution = build_length_distribution(spec, base_dir=".")
    tail = 1.0 - 0.5 * (1.0 + math.erf(math.log(16384 / 4500) / (0.7 * math.sqrt(2.0))))
    assert distribution.values[-1] == 16384.0
    assert distribution.probabilities[-1] == pytest.approx(tail, rel=1e-9)


def test_lognormal_far_max_has_no_point_at_max() -> None:
    spec = {"distribution": "lognormal", "median": 100, "sigma": 0.1, "max": 100_000}
    distribution = build_length_distribution(spec, base_dir=".")
    assert len(distribution.values) == DISTRIBUTION_BINS
    assert distribution.values[-1] < 200.0


def test_lognormal_description_names_parameters() -> None:
    spec = {"distribution": "lognormal", "median": 4500, "sigma": 0.7, "max": 16384}
    distribution = build_length_distribution(spec, base_dir=".")
    assert distribution.description == "lognormal(median=4500, sigma=0.7), max 16384"


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        ({"distribution": "lognormal", "median": 5000, "sigma": 0.5, "max": 4096}, "median", "median 5000 is above max 4096"),
        ({"distribution": "lognormal", "median": 0, "sigma": 0.5, "max": 4096}, "median", "greater than 0"),
        ({"distribution": "lognormal", "median": 100, "sigma": 0, "max": 4096}, "sigma", "greater than 0"),
        ({"distribution": "lognormal", "median": 100, "sigma": 0.5}, "max", "needs a max"),
        ({"distribution": "lognormal", "median": 100, "sigma": 0.5, "max": 10.5}, "max", "whole number"),
    ],
)
def test_lognormal_invalid_rejected(spec: dict, field: str, fragment: str) -> None:
    with pytest.raises(ValueProblem) as excinfo:
        build_length_distribution(spec, base_dir=".")
    assert excinfo.value.field == field
    assert fragment in excinfo.value.message


def test_fixed_is_one_point() -> None:
    distribution = build_length_distribution({"distribution": "fixed", "value": 1000}, base_dir=".")
    assert distribution.values == (1000.0,)
    assert distribution.probabilities == (1.0,)
    assert distribution.max_tokens == 1000


def test_fixed_above_max_is_cut() -> None:
    spec = {"distribution": "fixed", "value": 5000, "max": 4096}
    distribution = build_length_distribution(spec, base_dir=".")
    assert distribution.values == (4096.0,)
    assert distribution.max_tokens == 4096


@pytest.mark.parametrize(("low", "high"), [(1, 1), (100, 163), (100, 164), (100, 1000), (1, 100_000)])
def test_uniform_mean_is_exact(low: int, high: int) -> None:
    distribution = build_length_distribution({"distribution": "uniform", "min": low, "max": high}, base_dir=".")
    assert_valid_distribution(distribution)
    assert distribution_mean(distribution) == pytest.approx((low + high) / 2.0, rel=1e-12)
    assert distribution.max_tokens == high


def test_uniform_small_range_keeps_every_integer() -> None:
    distribution = build_length_distribution({"distribution": "uniform", "min": 10, "max": 19}, base_dir=".")
    assert distribution.values == tuple(float(value) for value in range(10, 20))
    assert distribution.probabilities == pytest.approx([0.1] * 10)


def test_uniform_max_below_min_rejected() -> None:
    with pytest.raises(ValueProblem) as excinfo:
        build_length_distribution({"distribution": "uniform", "min": 300, "max": 100}, base_dir=".")
    assert excinfo.value.field == "max"
    assert "max 100 is below min 300" in excinfo.value.message


def test_histogram_small_is_exact() -> None:
    spec = {
        "distribution": "histogram",
        "bins": [{"value": 100, "weight": 3}, {"low": 100, "high": 300, "weight": 1}],
    }
    distribution = build_length_distribution(spec, base_dir=".")
    assert distribution.values == (100.0, 200.0)
    assert distribution.probabilities == pytest.approx((0.75, 0.25))
    assert distribution.max_tokens == 300


def test_histogram_range_cut_at_max() -> None:
    spec = {
        "distribution": "histogram",
        "bins": [{"value": 100, "weight": 3}, {"low": 100, "high": 300, "weight": 1}],
        "max": 250,
    }
    distribution = build_length_distribution(spec, base_dir=".")
    # The range bin keeps 3/4 of its weight on [100, 250] (mean 175) and puts 1/4 at 250.
    assert distribution.values == (100.0, 175.0, 250.0)
    assert distribution.probabilities == pytest.approx((0.75, 0.1875, 0.0625))
    assert distribution.max_tokens == 250
    assert distribution_mean(distribution) == pytest.approx(0.75 * 100 + 0.25 * (0.75 * 175 + 0.25 * 250))


def test_histogram_many_bins_compressed_with_exact_mean() -> None:
    bins = [{"value": value, "weight": 1 + value % 7} for value in range(1, 501)]
    distribution = build_length_distribution({"distribution": "histogram", "bins": bins}, base_dir=".")
    total_weight = sum(item["weight"] for item in bins)
    expected_mean = sum(item["value"] * item["weight"] for item in bins) / total_weight
    assert_valid_distribution(distribution)
    assert len(distribution.values) == DISTRIBUTION_BINS
    assert distribution_mean(distribution) == pytest.approx(expected_mean, rel=1e-12)
    assert distribution.values[-1] == 500.0


@pytest.mark.parametrize(
    ("bins", "fragment"),
    [
        ([{"low": 300, "high": 100, "weight": 1}], "high 100 must be greater than low 300"),
        ([{"value": 5, "low": 1, "high": 9, "weight": 1}], "either value or low and high"),
        ([{"low": 5, "weight": 1}], "both low and high"),
        ([{"value": 5, "weight": 0}], "weight must be greater than 0"),
    ],
)
def test_histogram_invalid_bin_rejected(bins: list, fragment: str) -> None:
    with pytest.raises(ValueProblem) as excinfo:
        build_length_distribution({"distribution": "histogram", "bins": bins}, base_dir=".")
    assert excinfo.value.field == "bins[0]"
    assert fragment in excinfo.value.message


def write_csv(path: Path, rows: list[str]) -> None:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_file_csv_exact_points(tmp_path: Path) -> None:
    write_csv(tmp_path / "lengths.csv", ["id,prompt,output", "a,10,5", "b,20,5", "c,10,7", "d,40,9"])
    spec = {"distribution": "file", "path": "lengths.csv", "field": "prompt"}
    distribution = build_length_distribution(spec, base_dir=str(tmp_path))
    assert distribution.values == (10.0, 20.0, 40.0)
    assert distribution.probabilities == pytest.approx((0.5, 0.25, 0.25))
    assert distribution.max_tokens == 40


def test_file_csv_cut_at_max(tmp_path: Path) -> None:
    write_csv(tmp_path / "lengths.csv", ["output", "100", "3000", "5000"])
    spec = {"distribution": "file", "path": "lengths.csv", "field": "output", "max": 2048}
    distribution = build_length_distribution(spec, base_dir=str(tmp_path))
    assert distribution.values == (100.0, 2048.0)
    assert distribution.probabilities == pytest.approx((1 / 3, 2 / 3))
    assert distribution.max_tokens == 2048


def test_file_jsonl_reads_key(tmp_path: Path) -> None:
    records = [{"output_tokens": value, "other": "x"} for value in (3, 3, 8, 13)]
    text = "\n".join(json.dumps(record) for record in records) + "\n\n"
    (tmp_path / "log.jsonl").write_text(text, encoding="utf-8")
    spec = {"distribution": "file", "path": "log.jsonl", "field": "output_tokens"}
    distribution = build_length_distribution(spec, base_dir=str(tmp_path))
    assert distribution.values == (3.0, 8.0, 13.0)
    assert distribution.probabilities == pytest.approx((0.5, 0.25, 0.25))


def test_file_many_values_binned_with_exact_mean(tmp_path: Path) -> None:
    values = [(index * 37) % 5000 + 1 for index in range(3000)]
    write_csv(tmp_path / "lengths.csv", ["n", *map(str, values)])
    spec = {"distribution": "file", "path": "lengths.csv", "field": "n"}
    distribution = build_length_distribution(spec, base_dir=str(tmp_path))
    assert_valid_distribution(distribution)
    assert len(distribution.values) == DISTRIBUTION_BINS
    assert distribution_mean(distribution) == pytest.approx(sum(values) / len(values), rel=1e-12)
    assert distribution.values[-1] == float(max(values))
    assert distribution.max_tokens == max(values)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.csv", "", "is empty"),
        ("header-only.csv", "n\n", "contains no rows"),
        ("empty.jsonl", "\n\n", "contains no rows"),
        ("lengths.csv", "n\n10\n12.5\n", "line 3: n value '12.5' is not a whole number"),
        ("lengths.csv", "n\n10\nabc\n", "'abc' is not a whole number"),
        ("lengths.csv", "n\n10\n0\n", "'0' must be at least 1 token"),
        ("lengths.csv", "n\n10\n-4\n", "'-4' must be at least 1 token"),
        ("lengths.csv", "n\n\n\n", "contains no rows"),
        ("lengths.csv", "m\n10\n", "has no column 'n' in its header row"),
        ("lengths.csv", "n,m\n10,1\n,2\n", "line 3: n is empty"),
        ("log.jsonl", '{"n": 5}\n{"n": 2.5}\n', "line 2: n value 2.5 is not a whole number"),
        ("log.jsonl", '{"n": 5}\n{"m": 2}\n', "line 2: the object has no key 'n'"),
        ("log.jsonl", '{"n": 5}\n[1, 2]\n', "line 2: expected a JSON object"),
        ("log.jsonl", '{"n": 5}\n{"n": \n', "line 2: invalid JSON"),
        ("log.jsonl", '{"n": true}\n', "line 1: n value true is not a whole number"),
        ("lengths.txt", "10\n", "unsupported lengths file"),
    ],
)
def test_file_invalid_rejected(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    spec = {"distribution": "file", "path": name, "field": "n"}
    with pytest.raises(ValueProblem) as excinfo:
        build_length_distribution(spec, base_dir=str(tmp_path))
    assert excinfo.value.field == "path"
    assert fragment in excinfo.value.message


def test_file_missing_rejected(tmp_path: Path) -> None:
    spec = {"distribution": "file", "path": "nope.csv", "field": "n"}
    with pytest.raises(ValueProblem) as excinfo:
        build_length_distribution(spec, base_dir=str(tmp_path))
    assert excinfo.value.field == "path"
    assert "lengths file 'nope.csv' not found" in excinfo.value.message
