"""A short fuzzing run of the spec loader: mutated example specs produce only kvplan's errors.

tools/fuzz_spec_loader.py contains the fuzz target and runs the long campaigns (atheris or
Hypothesis); docs/robustness.md records them.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from .conftest import REPO_ROOT, examples


def load_fuzz_tool():
    spec = importlib.util.spec_from_file_location("fuzz_spec_loader", REPO_ROOT / "tools" / "fuzz_spec_loader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz_tool = load_fuzz_tool()


@pytest.fixture(scope="module")
def workspace():
    folder = fuzz_tool.make_workspace()
    yield folder
    shutil.rmtree(folder.parents[1], ignore_errors=True)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=fuzz_tool.hypothesis_mutations())
def test_mutated_specs_raise_only_spec_errors(workspace: Path, text: str) -> None:
    fuzz_tool.check_spec_bytes(text.encode("utf-8", errors="surrogatepass"), workspace)


@pytest.mark.parametrize("data", [
    b"\x00",
    b"\xef\xbb\xbf",
    b"apiVersion: kvplan/v1\nkind: Plan\nname: \x01\n",
    b"\xff\xfe" + "apiVersion: kvplan/v1\n".encode("utf-16-le"),
    b"&a [*a]",
    b"? [a]\n: 1\n",
    b"apiVersion: kvplan/v1\nkind: Plan\n" + b"- " * 5000,
], ids=["nul", "bom-only", "control-character", "utf-16", "recursive-alias", "list-key", "deep-block-list"])
def test_fuzz_findings_stay_fixed(workspace: Path, data: bytes) -> None:
    fuzz_tool.check_spec_bytes(data, workspace)
