"""Upper limits on the counts a spec may set, checked after the JSON Schema.

The cost model computes in float32 and int32 (``kvplan.costmodel``), so a count is
limited to what those types hold exactly. Each limit lies far above any real GPU
deployment, so only a typo or a generated spec reaches one. Physical quantities such as
sizes and times have their limits in :mod:`kvplan.spec.units`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from kvplan.spec.yamlpos import JsonPath

# The largest whole number below which float32 represents every integer exactly. The
# cost model divides requests over replicas and rounds up, and compares lengths with
# capacities, so larger counts would change their last digits.
MAX_TOKENS = 2**24
MAX_COUNT = 2**24
# A KV cache capacity is only compared and divided, so it may be larger.
MAX_KV_CACHE_TOKENS = 2**32
# GPUs, nodes and parallel degrees. The cost model indexes them in int32 arrays and
# enumerates powers of two up to the budget.
MAX_GPUS = 2**16
# A lognormal sigma above this puts nearly all of the distribution's mean into a tail
# that float64 cannot represent: exp(sigma^2 / 2) overflows at sigma 37.6.
MAX_LOGNORMAL_SIGMA = 10.0

_FLOAT32_REASON = "the cost model computes in float32, which holds whole numbers exactly only up to 2^24"
_KV_REASON = "the cost model holds KV capacities in float32"
_GPU_REASON = "kvplan plans deployments of at most 2^16 GPUs"
_SIGMA_REASON = "a larger sigma makes the distribution's mean overflow"

_DISTRIBUTION_TOKEN_KEYS = ("value", "max", "min", "median")
_BIN_TOKEN_KEYS = ("value", "low", "high")


def _limits_for(kind: str, data: Mapping[str, Any]) -> Iterator[tuple[JsonPath, float, str]]:
    """Yield (path, limit, reason) for every value of a document of ``kind`` that has an upper limit."""
    if kind == "Workload":
        yield ("requests",), MAX_COUNT, _FLOAT32_REASON
        yield ("concurrency",), MAX_COUNT, _FLOAT32_REASON
        for key in ("prompt_tokens", "output_tokens"):
            distribution = data.get(key)
            if not isinstance(distribution, Mapping):
                continue
            for name in _DISTRIBUTION_TOKEN_KEYS:
                yield (key, name), MAX_TOKENS, _FLOAT32_REASON
            yield (key, "sigma"), MAX_LOGNORMAL_SIGMA, _SIGMA_REASON
            bins = distribution.get("bins")
            if isinstance(bins, list):
                for index in range(len(bins)):
                    for name in _BIN_TOKEN_KEYS:
                        yield (key, "bins", index, name), MAX_TOKENS, _FLOAT32_REASON
    elif kind == "Node":
        yield ("gpus_per_node",), MAX_GPUS, _GPU_REASON
    elif kind == "Plan":
        yield ("hardware", "nodes"), MAX_GPUS, _GPU_REASON
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "pp_batches_in_flight"):
            yield ("engine", name), MAX_COUNT, _FLOAT32_REASON
        yield ("engine", "kv_cache_tokens"), MAX_KV_CACHE_TOKENS, _KV_REASON
        yield ("search", "gpu_budget"), MAX_GPUS, _GPU_REASON
        search = data.get("search")
        if isinstance(search, Mapping):
            for name in ("dp", "tp", "pp"):
                yield from _each_item(search.get(name), ("search", name), MAX_GPUS, _GPU_REASON)
            for name in ("max_num_seqs", "max_num_batched_tokens"):
                choices = search.get(name)
                if isinstance(choices, Mapping):
                    for bound in ("min", "max", "step"):
                        yield ("search", name, bound), MAX_COUNT, _FLOAT32_REASON
                else:
                    yield ("search", name), MAX_COUNT, _FLOAT32_REASON
                    yield from _each_item(choices, ("search", name), MAX_COUNT, _FLOAT32_REASON)
        for name in ("dp", "tp", "pp"):
            yield ("deployed", name), MAX_GPUS, _GPU_REASON
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            yield ("deployed", name), MAX_COUNT, _FLOAT32_REASON


def _each_item(values: Any, path: JsonPath, limit: float, reason: str) -> Iterator[tuple[JsonPath, float, str]]:
    if isinstance(values, list):
        for index in range(len(values)):
            yield path + (index,), limit, reason


def limit_problems(data: Any, kind: str) -> list[tuple[JsonPath, str]]:
    """Return (path, message) for every number in a document of ``kind`` above its limit.

    Values that are not numbers are left to the schema.
    """
    if not isinstance(data, Mapping):
        return []
    problems = []
    for path, limit, reason in _limits_for(kind, data):
        value = _value_at(data, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value > limit:
            problems.append((path, f"{_format(value)} is above the limit of {_format(limit)}; {reason}"))
    return problems


def _format(number: float) -> str:
    if isinstance(number, int) or float(number).is_integer() and abs(number) < 1e18:
        return f"{int(number):,}"
    return f"{number:g}"


def _value_at(data: Mapping[str, Any], path: JsonPath) -> Any:
    value: Any = data
    for element in path:
        if isinstance(element, int):
            if not isinstance(value, list) or element >= len(value):
                return None
            value = value[element]
        else:
            if not isinstance(value, Mapping) or element not in value:
                return None
            value = value[element]
    return value
