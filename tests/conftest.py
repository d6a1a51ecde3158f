"""Fixtures shared by the cost model, optimizer, CLI and API tests.

The JAX cost model compiles once per plan shape, arrival mode and batch size, so the
example plans and their search results are loaded once per session and reused.
"""

from __future__ import annotations

import atexit
import copy
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import settings

# In CI, property tests draw the same examples on every run, so a red run is reproducible
# and a green one is not luck; locally they keep exploring new examples.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

import kvplan
from kvplan.optimizer.search import SearchResult
from kvplan.spec.types import Plan

# The kvplan command caches compiled models under the user's home by default; the
# commands that tests start write to a folder of their own, removed at exit.
os.environ["KVPLAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="kvplan-test-jax-cache-")
atexit.register(shutil.rmtree, os.environ["KVPLAN_CACHE_DIR"], ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "examples"
EXAMPLE_PLAN_DIR = EXAMPLES_DIR / "h200-reasoning"
EXAMPLE_PLAN_NAMES = tuple(sorted(path.stem for path in EXAMPLE_PLAN_DIR.glob("*.yaml")))

# A plan for the 8B model without an arrival mode; fixtures add arrival_rate or concurrency.
INLINE_PLAN: dict[str, Any] = {
    "apiVersion": "kvplan/v1",
    "kind": "Plan",
    "name": "inline-8b",
    "model": "models/deepseek-r1-distill-llama-8b.yaml",
    "hardware": {"node": "h200-sxm-8"},
    "workload": {
        "name": "inline-chat",
        "prompt_tokens": {"distribution": "lognormal", "median": 200, "sigma": 0.5, "max": 2048},
        "output_tokens": {"distribution": "lognormal", "median": 2000, "sigma": 0.6, "max": 8192},
    },
    "search": {"gpu_budget": 8},
}


@pytest.fixture(scope="session")
def example_plans() -> dict[str, Plan]:
    """Every plan under examples/h200-reasoning, keyed by file stem."""
    assert EXAMPLE_PLAN_NAMES, f"no example plans found in {EXAMPLE_PLAN_DIR}"
    return {name: kvplan.load_plan(EXAMPLE_PLAN_DIR / f"{name}.yaml") for name in EXAMPLE_PLAN_NAMES}


@pytest.fixture(scope="session", params=EXAMPLE_PLAN_NAMES)
def example_plan_name(request: pytest.FixtureRequest) -> str:
    """Each example plan's name in turn; parametrizes every test that uses it."""
    return request.param


@pytest.fixture(scope="session")
def exhaustive_result(example_plans: dict[str, Plan]) -> Callable[[str], SearchResult]:
    """Return a cached function: example plan name -> ``optimize(plan, exhaustive=True)``."""

    @functools.cache
    def search(name: str) -> SearchResult:
        return kvplan.optimize(example_plans[name], exhaustive=True)

    return search


@pytest.fixture(scope="session")
def default_search_result(example_plans: dict[str, Plan]) -> Callable[[str], SearchResult]:
    """Return a cached function: example plan name -> ``optimize(plan, seed=0)``."""

    @functools.cache
    def search(name: str) -> SearchResult:
        return kvplan.optimize(example_plans[name], seed=0)

    return search


@pytest.fixture(scope="session")
def rate_plan() -> Plan:
    """The inline 8B plan with Poisson arrivals at 2 requests per second."""
    data = copy.deepcopy(INLINE_PLAN)
    data["workload"]["arrival_rate"] = "2/s"
    return kvplan.load_plan_from_dict(data, base_dir=EXAMPLES_DIR)


@pytest.fixture(scope="session")
def concurrency_plan() -> Plan:
    """The inline 8B plan with 64 closed-loop clients, loaded from YAML text."""
    data = copy.deepcopy(INLINE_PLAN)
    data["workload"]["concurrency"] = 64
    return kvplan.load_plan_from_string(yaml.safe_dump(data), base_dir=EXAMPLES_DIR)
