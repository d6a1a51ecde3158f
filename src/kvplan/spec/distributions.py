"""Token-length distributions and their discretization to ``LengthDistribution``.

Every distribution has a maximum, and lengths above it are cut to it, the way a
request stops at ``max_tokens``. A lognormal's lengths below 1 token are raised to 1. The result has at most ``DISTRIBUTION_BINS`` support
points whose probability-weighted mean equals the mean of the cut distribution, so the
cost model gets the same expected token count as the continuous description.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

from kvplan.spec.errors import ValueProblem
from kvplan.spec.files import MAX_LENGTHS_FILE_BYTES, check_regular_file
from kvplan.spec.limits import MAX_TOKENS
from kvplan.spec.types import DISTRIBUTION_BINS, LengthDistribution

_STANDARD_NORMAL = NormalDist()

# The smallest lognormal sigma. Below it the bins' conditional means come from
# differences of nearly equal numbers, and rounding moved them by 1,600 tokens at
# sigma 1e-9; a length that hardly varies is a fixed distribution.
MIN_LOGNORMAL_SIGMA = 1e-3

# A lognormal whose probability above its maximum is below this gets no separate point
# at the maximum.
_NEGLIGIBLE_TAIL = 1e-9


def build_length_distribution(spec: Mapping[str, Any], *, base_dir: str) -> LengthDistribution:
    """Discretize one ``prompt_tokens`` or ``output_tokens`` mapping of a Workload spec.

    ``spec`` has already passed the JSON Schema, so keys and types are right. ``base_dir``
    is the directory that a ``file`` distribution's path is relative to. Raises
    ValueProblem, whose ``field`` names the offending key, for values the schema cannot
    rule out (a median above the maximum, an unreadable lengths file, ...).
    """
    kind = spec["distribution"]
    if kind == "fixed":
        return _fixed(spec)
    if kind == "lognormal":
        return _lognormal(spec)
    if kind == "uniform":
        return _uniform(spec)
    if kind == "histogram":
        return _histogram(spec)
    if kind == "file":
        return _file(spec, base_dir)
    raise ValueProblem(f"unknown distribution {kind!r}", "distribution")


def distribution_mean(distribution: LengthDistribution) -> float:
    """Return the probability-weighted mean of the support points."""
    return math.fsum(v * p for v, p in zip(distribution.values, distribution.probabilities))


def lognormal_cut_mean(median: float, sigma: float, maximum: float) -> float:
    """Return E[min(X, maximum)] for X lognormal with the given median and sigma."""
    mu = math.log(median)
    tail = 1.0 - _lognormal_cdf(maximum, mu, sigma)
    return _lognormal_partial_expectation(maximum, mu, sigma) + maximum * tail


def _whole_number(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueProblem(f"must be a whole number of tokens, but got {value!r}", field)
    if isinstance(value, float) and not value.is_integer():
        raise ValueProblem(f"must be a whole number of tokens, but got {value!r}", field)
    return int(value)


def _explicit_max(spec: Mapping[str, Any]) -> int | None:
    if "max" not in spec:
        return None
    maximum = _whole_number(spec["max"], "max")
    if maximum < 1:
        raise ValueProblem(f"must be at least 1 token, but got {maximum}", "max")
    return maximum


def _fixed(spec: Mapping[str, Any]) -> LengthDistribution:
    value = _whole_number(spec["value"], "value")
    if value < 1:
        raise ValueProblem(f"must be at least 1 token, but got {value}", "value")
    maximum = _explicit_max(spec)
    if maximum is None:
        maximum = value
    cut = min(value, maximum)
    description = f"fixed({value})"
    if cut < value:
        description += f", max {maximum}"
    return LengthDistribution((float(cut),), (1.0,), maximum, description)


def _lognormal_cdf(x: float, mu: float, sigma: float) -> float:
    if x <= 0.0:
        return 0.0
    return _normal_cdf((math.log(x) - mu) / sigma)


def _lognormal_partial_expectation(x: float, mu: float, sigma: float) -> float:
    """Return E[X; X <= x], the closed form exp(mu + sigma^2/2) * Phi((ln x - mu - sigma^2) / sigma)."""
    if x <= 0.0:
        return 0.0
    z = (math.log(x) - mu - sigma * sigma) / sigma
    return math.exp(mu + 0.5 * sigma * sigma) * _normal_cdf(z)


def _normal_cdf(z: float) -> float:
    """Return the standard normal CDF, accurate far into the lower tail.

    NormalDist.cdf computes 1 + erf(z / sqrt 2), which cancels to 0 or 1e-16 below
    about z = -8, where a lognormal with a large sigma keeps most of its mean; erfc does
    not cancel.
    """
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _lognormal(spec: Mapping[str, Any]) -> LengthDistribution:
    median = float(spec["median"])
    sigma = float(spec["sigma"])
    maximum = _explicit_max(spec)
    if maximum is None:
        raise ValueProblem("a lognormal distribution needs a max", "max")
    if median <= 0.0:
        raise ValueProblem(f"must be greater than 0, but got {spec['median']!r}", "median")
    if median < 1.0:
        raise ValueProblem(f"must be at least 1 token, but got {spec['median']!r}", "median")
    if sigma <= 0.0:
        raise ValueProblem(f"must be greater than 0, but got {spec['sigma']!r}", "sigma")
    if sigma < MIN_LOGNORMAL_SIGMA:
        raise ValueProblem(
            f"must be at least {MIN_LOGNORMAL_SIGMA:g}, but got {spec['sigma']!r}; for a length that does"
            " not vary, use distribution: fixed",
            "sigma",
        )
    if median > maximum:
        raise ValueProblem(
            f"median {spec['median']} is above max {maximum}; raise max or lower the median",
            "median",
        )

    mu = math.log(median)
    # A request has at least 1 token: the probability below 1 becomes one point at 1, as
    # the probability above the maximum becomes one point at the maximum. Without it the
    # lowest bins of a wide lognormal hold fractions of a token, and the cost model then
    # predicts negative latencies for them.
    below_one = _lognormal_cdf(1.0, mu, sigma)
    mass_below_max = _lognormal_cdf(maximum, mu, sigma)
    tail = 1.0 - mass_below_max
    inner = mass_below_max - below_one
    if maximum == 1 or inner <= _NEGLIGIBLE_TAIL:
        description = f"lognormal(median={_format_number(median)}, sigma={_format_number(sigma)}), max {maximum}"
        return _normalized([1.0], [1.0], maximum, description)

    # The mass between 1 and the maximum is split into equal-probability quantile bins,
    # each represented by its conditional mean. The mass above the maximum becomes one
    # point at the maximum, for the requests that stop at max_tokens.
    has_floor = below_one > _NEGLIGIBLE_TAIL
    has_tail = tail > _NEGLIGIBLE_TAIL
    bins = DISTRIBUTION_BINS - int(has_floor) - int(has_tail)
    bin_mass = inner / bins
    boundaries = [1.0]
    for k in range(1, bins):
        boundaries.append(math.exp(mu + sigma * _STANDARD_NORMAL.inv_cdf(below_one + k * bin_mass)))
    boundaries.append(float(maximum))

    values: list[float] = []
    probabilities: list[float] = []
    if has_floor:
        values.append(1.0)
        probabilities.append(below_one)
    for low, high in zip(boundaries, boundaries[1:]):
        partial = _lognormal_partial_expectation(high, mu, sigma) - _lognormal_partial_expectation(
            low, mu, sigma
        )
        values.append(partial / bin_mass)
        probabilities.append(bin_mass)
    if has_tail:
        values.append(float(maximum))
        probabilities.append(tail)

    description = f"lognormal(median={_format_number(median)}, sigma={_format_number(sigma)}), max {maximum}"
    return _normalized(values, probabilities, maximum, description)


def _uniform(spec: Mapping[str, Any]) -> LengthDistribution:
    low = _whole_number(spec["min"], "min")
    high = _whole_number(spec["max"], "max")
    if low < 1:
        raise ValueProblem(f"must be at least 1 token, but got {low}", "min")
    if high < low:
        raise ValueProblem(f"max {high} is below min {low}", "max")
    values, probabilities = _uniform_groups(low, high)
    return _normalized(values, probabilities, high, f"uniform({low}, {high})")


def _uniform_groups(low: int, high: int) -> tuple[list[float], list[float]]:
    """Split the integers low..high into at most ``DISTRIBUTION_BINS`` runs of about equal count.

    Each run is represented by its mean, so the overall mean stays (low + high) / 2, and
    a range of at most ``DISTRIBUTION_BINS`` integers keeps every integer as a point.
    """
    count = high - low + 1
    groups = min(DISTRIBUTION_BINS, count)
    values: list[float] = []
    probabilities: list[float] = []
    start = low
    for index in range(groups):
        end = low + (count * (index + 1)) // groups - 1
        if end < start:
            continue
        values.append((start + end) / 2.0)
        probabilities.append((end - start + 1) / count)
        start = end + 1
    return values, probabilities


def _histogram(spec: Mapping[str, Any]) -> LengthDistribution:
    bins: Sequence[Mapping[str, Any]] = spec["bins"]
    explicit_max = _explicit_max(spec)
    raw_points: list[tuple[float, float, float]] = []  # (low, high, weight); low == high for a point
    for index, item in enumerate(bins):
        field = f"bins[{index}]"
        weight = float(item["weight"])
        if weight <= 0.0:
            raise ValueProblem(f"weight must be greater than 0, but got {item['weight']!r}", field)
        if "value" in item:
            if "low" in item or "high" in item:
                raise ValueProblem("give either value or low and high, not both", field)
            value = _whole_number(item["value"], field)
            if value < 1:
                raise ValueProblem(f"value must be at least 1 token, but got {value}", field)
            raw_points.append((float(value), float(value), weight))
        else:
            if "low" not in item or "high" not in item:
                raise ValueProblem("a bin needs either value, or both low and high", field)
            low = _whole_number(item["low"], field)
            high = _whole_number(item["high"], field)
            if low < 1:
                raise ValueProblem(f"low must be at least 1 token, but got {low}", field)
            if high <= low:
                raise ValueProblem(f"high {high} must be greater than low {low}", field)
            raw_points.append((float(low), float(high), weight))

    largest = int(max(high for _, high, _ in raw_points))
    maximum = explicit_max if explicit_max is not None else largest
    # Weights are relative. Dividing by the largest keeps their sum finite when they are
    # near the float maximum, and keeps it above 0 when they are subnormal.
    heaviest = max(weight for _, _, weight in raw_points)
    raw_points = [(low, high, weight / heaviest) for low, high, weight in raw_points]
    total_weight = math.fsum(weight for _, _, weight in raw_points)

    points: list[tuple[float, float]] = []
    for low, high, weight in raw_points:
        probability = weight / total_weight
        points.extend(_cut_uniform(low, high, maximum, probability))

    values, probabilities = _compress(points)
    description = f"histogram({len(bins)} bins)"
    if explicit_max is not None:
        description += f", max {maximum}"
    return _normalized(values, probabilities, maximum, description)


def _cut_uniform(low: float, high: float, maximum: float, probability: float) -> list[tuple[float, float]]:
    """Split a uniform bin on [low, high] cut at ``maximum`` into at most two points."""
    if high <= maximum:
        return [((low + high) / 2.0, probability)]
    if low >= maximum:
        return [(maximum, probability)]
    below = (maximum - low) / (high - low)
    return [((low + maximum) / 2.0, probability * below), (maximum, probability * (1.0 - below))]


def _file(spec: Mapping[str, Any], base_dir: str) -> LengthDistribution:
    relative = spec["path"]
    field = spec["field"]
    path = os.path.normpath(os.path.join(base_dir, relative))
    if not os.path.isfile(path):
        raise ValueProblem(f"lengths file {relative!r} not found (looked for {path})", "path")

    extension = os.path.splitext(path)[1].lower()
    try:
        check_regular_file(path, MAX_LENGTHS_FILE_BYTES, "lengths file")
        if extension == ".csv":
            lengths = _read_csv_lengths(path, field)
        elif extension in (".jsonl", ".ndjson"):
            lengths = _read_jsonl_lengths(path, field)
        else:
            raise ValueProblem(
                f"unsupported lengths file {relative!r}; use a .csv file with a header row"
                " or a .jsonl file with one object per line",
                "path",
            )
    except OSError as error:
        raise ValueProblem(f"cannot read lengths file {path}: {error}", "path") from None
    if not lengths:
        raise ValueProblem(f"lengths file {path} contains no rows", "path")

    explicit_max = _explicit_max(spec)
    maximum = explicit_max if explicit_max is not None else max(lengths)
    counts: dict[int, int] = {}
    for length in lengths:
        cut = min(length, maximum)
        counts[cut] = counts.get(cut, 0) + 1
    total = len(lengths)
    points = [(float(value), count / total) for value, count in counts.items()]
    values, probabilities = _compress(points)
    description = f"file({relative}, field={field}, {total} values), max {maximum}"
    return _normalized(values, probabilities, maximum, description)


# Characters of a value that an error message quotes; the rest of a lengths file is not shown.
QUOTED_VALUE_CHARS = 24


def _quoted(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= QUOTED_VALUE_CHARS else f"{text[:QUOTED_VALUE_CHARS]}... ({len(text)} characters)"


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), "null")


def _parse_length(text: Any, location: str, field: str) -> int:
    if isinstance(text, bool):
        raise ValueProblem(f"{location}: {field} value {json.dumps(text)} is not a whole number of tokens", "path")
    if isinstance(text, str):
        stripped = text.strip()
        if not stripped:
            raise ValueProblem(f"{location}: {field} is empty", "path")
        try:
            number = float(stripped)
        except ValueError:
            raise ValueProblem(
                f"{location}: {field} value {_quoted(text)} is not a whole number of tokens", "path"
            ) from None
    elif isinstance(text, (int, float)):
        number = float(text)
    else:
        raise ValueProblem(f"{location}: {field} value {_quoted(text)} is not a whole number of tokens", "path")
    if not math.isfinite(number) or not number.is_integer():
        raise ValueProblem(f"{location}: {field} value {_quoted(text)} is not a whole number of tokens", "path")
    if number < 1:
        raise ValueProblem(f"{location}: {field} value {_quoted(text)} must be at least 1 token", "path")
    if number > MAX_TOKENS:
        raise ValueProblem(
            f"{location}: {field} value {_quoted(text)} is above the limit of {MAX_TOKENS:,} tokens", "path"
        )
    return int(number)


def _read_csv_lengths(path: str, field: str) -> list[int]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise ValueProblem(f"lengths file {path} is empty; expected a header row", "path")
            if field not in reader.fieldnames:
                # The header is not quoted: a lengths file may lie outside any project (rule 7
                # of docs/robustness.md), and error messages often end up in public CI logs.
                raise ValueProblem(f"{path} has no column {field!r} in its header row; check the field name",
                                   "path")
            lengths = []
            for row in reader:
                location = f"{path} line {reader.line_num}"
                lengths.append(_parse_length(row[field], location, field))
            return lengths
    except UnicodeDecodeError as error:
        raise ValueProblem(f"cannot read {path} as UTF-8 text: {error}", "path") from None
    except csv.Error as error:
        raise ValueProblem(f"invalid CSV in {path}: {error}", "path") from None


def _read_jsonl_lengths(path: str, field: str) -> list[int]:
    lengths = []
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                location = f"{path} line {line_number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueProblem(f"{location}: invalid JSON: {error.msg}", "path") from None
                except ValueError as error:
                    # Integers of more than 4,300 digits.
                    raise ValueProblem(f"{location}: invalid JSON: {error}", "path") from None
                except RecursionError:
                    raise ValueProblem(f"{location}: invalid JSON: arrays or objects are nested too deeply", "path") from None
                if not isinstance(record, dict):
                    raise ValueProblem(f"{location}: expected a JSON object, but got {_json_kind(record)}", "path")
                if field not in record:
                    raise ValueProblem(f"{location}: the object has no key {field!r}", "path")
                lengths.append(_parse_length(record[field], location, field))
    except UnicodeDecodeError as error:
        raise ValueProblem(f"cannot read {path} as UTF-8 text: {error}", "path") from None
    return lengths


def _compress(points: Iterable[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Merge (value, probability) points into at most ``DISTRIBUTION_BINS`` points.

    Equal values are merged first. When more points remain, the largest value keeps its
    own point, because the maximum length sizes the worst-case KV cache. The others are
    grouped into contiguous runs of about equal probability. Each run is represented by
    its probability-weighted mean, so the overall mean does not change.
    """
    merged: dict[float, float] = {}
    for value, probability in points:
        if probability > 0.0:
            merged[value] = merged.get(value, 0.0) + probability
    ordered = sorted(merged.items())
    if len(ordered) <= DISTRIBUTION_BINS:
        return [value for value, _ in ordered], [probability for _, probability in ordered]

    *rest, top = ordered
    groups = DISTRIBUTION_BINS - 1
    rest_mass = math.fsum(probability for _, probability in rest)
    sums = [0.0] * groups
    masses = [0.0] * groups
    cumulative = 0.0
    for value, probability in rest:
        # Each point goes to the group that contains the middle of its probability mass.
        group = min(groups - 1, int((cumulative + probability / 2.0) / rest_mass * groups))
        sums[group] += value * probability
        masses[group] += probability
        cumulative += probability
    values = [total / mass for total, mass in zip(sums, masses) if mass > 0.0]
    probabilities = [mass for mass in masses if mass > 0.0]
    values.append(top[0])
    probabilities.append(top[1])
    return values, probabilities


def _normalized(
    values: list[float], probabilities: list[float], maximum: int, description: str
) -> LengthDistribution:
    total = math.fsum(probabilities)
    return LengthDistribution(
        values=tuple(float(value) for value in values),
        probabilities=tuple(p / total for p in probabilities),
        max_tokens=int(maximum),
        description=description,
    )


def _format_number(value: float) -> str:
    return f"{value:g}"
