"""Fuzz the spec loader: mutated spec files may only produce kvplan's own errors.

Each input is written as a plan file inside a copy of ``examples/`` that is marked as a
Git work tree, so its references to models, workloads and lengths files resolve and the
reference rule applies. The file is checked with ``validate_paths`` and loaded with
``load_plan``. Any exception other than ``KvplanError`` (``SpecError`` is one) is a
finding, and so is a check that takes longer than ``SLOW_SECONDS``.

With atheris installed (``pip install atheris``), libFuzzer mutates the bytes of the
example specs with coverage feedback::

    python tools/fuzz_spec_loader.py -max_total_time=600

Without atheris, Hypothesis mutates the text instead for the given number of seconds::

    python tools/fuzz_spec_loader.py --hypothesis 600

``tests/robustness/test_fuzz.py`` runs the Hypothesis mutations for a few seconds in CI.
docs/robustness.md records the long runs and what they found.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "examples"

# A check slower than this counts as a hang. The largest spec file kvplan accepts
# (1 MiB) takes about 6 s; mutated examples are a few KB.
SLOW_SECONDS = 10.0

# Fragments that YAML, the unit parser and the loader treat specially; mutations insert them.
TOKENS = (
    ":", ": ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: *a", "!!python/object:os.system ", "!!binary ",
    "!!set ", "? ", "|\n", ">\n", "'", '"', "#", "%YAML 1.1\n", "---\n", "...\n", "\t", "\n", "  ", "~", ".nan",
    ".inf", "-.inf", "1e999", "1.0e+308", "1.0e-320", "9" * 40, "0x" + "f" * 30, "-1", "0", "1_000", "0o17",
    "2001-12-14", "µs", "μs", "GiB", "TB/s", "Gb/s", "/min", "PFLOPS", "h200-sxm-8", "../", "../../", "/dev/zero",
    "/etc/passwd", "base: ", "config: ", "path: ", "distribution: file", "median: ", "sigma: ", "max: ",
    "requests: ", "kv_cache_tokens: ", "nodes: ", "\ufeff", "\x00", "\u2028", "é",
)


def seed_texts() -> list[str]:
    """Return the text of every YAML spec under examples/, the seeds that mutations start from."""
    return [path.read_text(encoding="utf-8") for path in sorted(EXAMPLES_DIR.rglob("*.yaml"))]


def make_workspace() -> Path:
    """Copy examples/ into a temporary Git work tree and return the folder that fuzzed plans go in."""
    root = Path(tempfile.mkdtemp(prefix="kvplan-fuzz-"))
    (root / ".git").mkdir()
    shutil.copytree(EXAMPLES_DIR, root / "examples")
    return root / "examples" / "h200-reasoning"


def check_spec_bytes(data: bytes, folder: Path) -> None:
    """Validate and load ``data`` as a plan file in ``folder``; raise on anything but KvplanError or a slow check."""
    from kvplan.spec import load_plan, validate_paths
    from kvplan.spec.errors import KvplanError

    path = folder / "fuzzed.yaml"
    path.write_bytes(data)
    started = time.monotonic()
    validate_paths([path])
    try:
        load_plan(path)
    except KvplanError:
        pass
    elapsed = time.monotonic() - started
    if elapsed > SLOW_SECONDS:
        raise TimeoutError(f"checking a {len(data):,}-byte spec took {elapsed:.1f} s")


def mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Apply (position, characters to delete, text to insert) edits, positions taken modulo the length."""
    for position, deleted, inserted in edits:
        at = position % (len(text) + 1)
        text = text[:at] + inserted + text[at + deleted:]
    return text


def hypothesis_mutations() -> SearchStrategy[str]:
    """Return the Hypothesis strategy of mutated seed texts."""
    from hypothesis import strategies as st

    edit = st.tuples(
        st.integers(0, 10**6),
        st.integers(0, 8),
        st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)),
    )
    return st.builds(mutate, st.sampled_from(seed_texts()), st.lists(edit, min_size=1, max_size=8))


# Inputs per Hypothesis run; runs with new seeds repeat until the time is up.
HYPOTHESIS_BATCH = 500


def run_hypothesis(seconds: float) -> int:
    """Fuzz with Hypothesis for about ``seconds`` and return the number of inputs checked.

    A finding raises the error for the smallest failing input Hypothesis finds.
    """
    import random

    from hypothesis import HealthCheck, given, seed, settings

    folder = make_workspace()
    checked = 0
    deadline = time.monotonic() + seconds

    def fuzz(text: str) -> None:
        nonlocal checked
        check_spec_bytes(text.encode("utf-8", errors="surrogatepass"), folder)
        checked += 1

    try:
        while time.monotonic() < deadline:
            run = settings(max_examples=HYPOTHESIS_BATCH, deadline=None, database=None,
                           suppress_health_check=list(HealthCheck))(given(text=hypothesis_mutations())(fuzz))
            seed(random.getrandbits(64))(run)()
    finally:
        shutil.rmtree(folder.parents[1], ignore_errors=True)
    return checked


def run_atheris(arguments: list[str]) -> None:
    """Fuzz with atheris and libFuzzer; ``arguments`` are libFuzzer options such as -max_total_time=600."""
    import atheris

    with atheris.instrument_imports():
        import yaml  # noqa: F401

        import kvplan.spec  # noqa: F401

    folder = make_workspace()
    corpus = Path(tempfile.mkdtemp(prefix="kvplan-fuzz-corpus-"))
    for index, text in enumerate(seed_texts()):
        (corpus / f"seed-{index}.yaml").write_text(text, encoding="utf-8")

    def target(data: bytes) -> None:
        check_spec_bytes(data, folder)

    atheris.Setup([sys.argv[0], *arguments, str(corpus)], target)
    atheris.Fuzz()


def main() -> int:
    arguments = sys.argv[1:]
    if arguments[:1] == ["--hypothesis"]:
        seconds = float(arguments[1]) if len(arguments) > 1 else 60.0
        started = time.monotonic()
        checked = run_hypothesis(seconds)
        print(f"fuzz_spec_loader: {checked:,} inputs checked in {time.monotonic() - started:.0f} s, no finding")
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz_spec_loader: atheris is not installed; pip install atheris, or run with --hypothesis SECONDS",
              file=sys.stderr)
        return 2
    run_atheris(arguments)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    raise SystemExit(main())
