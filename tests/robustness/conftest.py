"""Fixtures of the robustness tests: the CLI run in-process, spec writers and a Git work tree.

The CLI runs through ``kvplan.cli.main``, the function behind the ``kvplan`` command,
so a test gets the exit code and both streams without starting Python and JAX again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from kvplan.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
MODEL_8B = EXAMPLES_DIR / "models" / "deepseek-r1-distill-llama-8b.yaml"
CONFIG_8B = EXAMPLES_DIR / "models" / "hf-configs" / "deepseek-r1-distill-llama-8b.json"

# Hypothesis examples per property test. CI keeps the suite short; set
# KVPLAN_ROBUSTNESS_EXAMPLES for a longer run (docs/robustness.md).
ROBUSTNESS_EXAMPLES = int(os.environ.get("KVPLAN_ROBUSTNESS_EXAMPLES", "0")) or None


def examples(default: int) -> int:
    """Return the Hypothesis example count: ``default``, or KVPLAN_ROBUSTNESS_EXAMPLES when set."""
    return ROBUSTNESS_EXAMPLES or default


@dataclasses.dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Return a function that runs ``kvplan ARGS...`` in-process and returns its result."""

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def assert_clean_failure(result: CliResult) -> None:
    """Assert exit code 1 and an error message instead of a traceback or an internal error."""
    assert result.code == 1, result.output
    assert "Traceback" not in result.output
    assert "internal error" not in result.output


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Return a function that writes dedented text to a file under tmp_path and returns its path."""

    def write_file(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write_file


WORKLOAD = """\
workload:
  name: w
  prompt_tokens: {distribution: fixed, value: 100}
  output_tokens: {distribution: fixed, value: 200}
  requests: 10
"""


def plan_text(*, model: str | Path = MODEL_8B, node: str = "h200-sxm-8", workload: str = WORKLOAD,
              extra: str = "search:\n  gpu_budget: 1\n") -> str:
    """Return a valid plan for the 8B model on one H200, with parts replaced."""
    return (
        "apiVersion: kvplan/v1\n"
        "kind: Plan\n"
        "name: p\n"
        f"model: {model}\n"
        "hardware:\n"
        f"  node: {node}\n"
        f"{workload}"
        f"{extra}"
    )


@pytest.fixture
def work_tree(tmp_path: Path) -> Path:
    """Return a folder that kvplan treats as a Git work tree, holding a copy of the 8B model spec."""
    tree = tmp_path / "repo"
    (tree / ".git").mkdir(parents=True)
    (tree / "models" / "hf-configs").mkdir(parents=True)
    shutil.copy(MODEL_8B, tree / "models" / MODEL_8B.name)
    shutil.copy(CONFIG_8B, tree / "models" / "hf-configs" / CONFIG_8B.name)
    return tree


def config_8b(**changes: object) -> str:
    """Return the 8B model's config.json text with keys replaced, or removed where the value is None."""
    config = json.loads(CONFIG_8B.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return json.dumps(config)
