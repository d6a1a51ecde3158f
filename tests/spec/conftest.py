"""Fixtures shared by the spec tests: a file writer and paths into examples/."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES_DIR


@pytest.fixture
def model_8b_path() -> Path:
    return EXAMPLES_DIR / "models" / "deepseek-r1-distill-llama-8b.yaml"


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Return a function that writes dedented text to a file under tmp_path."""

    def write_file(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write_file


@pytest.fixture
def minimal_plan(model_8b_path: Path) -> Callable[..., str]:
    """Return a function that renders a valid plan, with extra top-level YAML appended."""

    def render(extra: str = "", *, workload: str | None = None) -> str:
        if workload is None:
            workload = (
                "workload:\n"
                "  name: w\n"
                "  prompt_tokens: {distribution: fixed, value: 100}\n"
                "  output_tokens: {distribution: fixed, value: 200}\n"
                "  requests: 10\n"
            )
        text = (
            "apiVersion: kvplan/v1\n"
            "kind: Plan\n"
            "name: test-plan\n"
            f"model: {model_8b_path}\n"
            "hardware:\n"
            "  node: h200-sxm-8\n"
            f"{workload}"
        )
        return text + textwrap.dedent(extra)

    return render
