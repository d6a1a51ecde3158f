"""Fixtures of the sweep, size and plan-variant tests.

The CLI tests call ``kvplan.cli.main`` in this process, so every command whose plan has
the same array shapes reuses one compilation of the cost model. Every plan here uses
the 8B model with tp and pp fixed at 1, which keeps each search space to a few points.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from kvplan.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"

# Chat traffic at 1 request per second on priced H200 nodes, with a TTFT bound.
RATE_PLAN = f"""\
apiVersion: kvplan/v1
kind: Plan
name: small-8b-chat
model: {EXAMPLES_DIR / "models" / "deepseek-r1-distill-llama-8b.yaml"}
hardware:
  node:
    base: h200-sxm-8
    name: h200-priced
    price_per_gpu_hour: 2.5
workload:
  name: short-chat
  prompt_tokens: {{distribution: lognormal, median: 200, sigma: 0.5, max: 2048}}
  output_tokens: {{distribution: lognormal, median: 600, sigma: 0.5, max: 4096}}
  arrival_rate: 1/s
search:
  tp: [1]
  pp: [1]
  max_num_seqs: [256, 1024]
sla:
  ttft:
    p99: 2s
"""


@dataclasses.dataclass(frozen=True)
class CliRun:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., CliRun]:
    """Return a function that runs ``kvplan ARGS...`` in this process and captures its output."""

    def run(*args: str) -> CliRun:
        stdout = io.StringIO()
        stderr = io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            exit_code = main([str(arg) for arg in args])
        return CliRun(exit_code, stdout.getvalue(), stderr.getvalue())

    return run


@pytest.fixture(scope="session")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline-plans")


@pytest.fixture(scope="session")
def rate_plan_path(plan_dir: Path) -> Path:
    """A plan file with Poisson arrivals, a priced node and a small search space."""
    path = plan_dir / "small-8b-chat.yaml"
    path.write_text(RATE_PLAN, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def write_plan(plan_dir: Path) -> Callable[..., Path]:
    """Return a function that writes the rate plan with some lines replaced, under a new name."""

    def write(name: str, *replacements: tuple[str, str]) -> Path:
        text = RATE_PLAN
        for old, new in replacements:
            assert old in text, f"{old!r} is not in the rate plan"
            text = text.replace(old, new)
        path = plan_dir / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write
