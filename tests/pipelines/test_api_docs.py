"""Runs the Python examples of docs/api.md, in order, as one script from the repository root."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import kvplan

REPO_ROOT = Path(__file__).resolve().parents[2]
API_DOC = REPO_ROOT / "docs" / "api.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall(API_DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def doc_output(monkeypatch_module) -> str:
    """Run every Python block of docs/api.md in one namespace and return what they print."""
    monkeypatch_module.chdir(REPO_ROOT)
    namespace: dict[str, object] = {"__name__": "api_doc_examples"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for number, block in enumerate(python_blocks(), start=1):
            exec(compile(block, f"docs/api.md, Python block {number}", "exec"), namespace)
    return output.getvalue()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_api_doc_has_examples():
    assert len(python_blocks()) >= 8


def test_api_doc_examples_run(doc_output):
    lines = doc_output.splitlines()

    assert lines[0] == "llama-8b-1xh200 deepseek-r1-distill-llama-8b h200-sxm-8 batch"
    assert "chat-16-per-s 16.0 output_tokens_per_s_per_gpu" in lines
    assert "2000 makespan_s" in lines
    assert any(line.startswith("makespan ") for line in lines), doc_output
    assert any(line.startswith("$.hardware.nodes ") for line in lines), doc_output


def test_api_doc_sweep_example_prints_each_rate(doc_output):
    rates = [line.split(" ", 1)[0] for line in doc_output.splitlines() if re.match(r"\d+/s ", line)]

    assert rates == ["4/s", "16/s", "64/s"]


def test_api_doc_lists_every_export():
    names = set()
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Za-z_]+)", first_cell))

    assert set(kvplan.__all__) - {"__version__"} <= names
