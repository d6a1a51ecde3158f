"""Paths and helpers shared by the tests of the GitOps commands and the example spec repository."""

from __future__ import annotations

import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GITOPS_DIR = REPO_ROOT / "examples" / "gitops"
CHAT_PLAN = GITOPS_DIR / "plans" / "chat-8b.yaml"
OVERPROVISIONED_PLAN = GITOPS_DIR / "broken" / "overprovisioned.yaml"
MODEL_8B = REPO_ROOT / "examples" / "models" / "deepseek-r1-distill-llama-8b.yaml"
MODEL_70B = REPO_ROOT / "examples" / "models" / "deepseek-r1-distill-llama-70b.yaml"


def chat_plan_with(deployed: str | None) -> str:
    """Return the text of examples/gitops/plans/chat-8b.yaml with its deployed section replaced.

    The paths in the result are absolute, so the plan can be written anywhere.
    """
    text = CHAT_PLAN.read_text(encoding="utf-8")
    head, marker, _ = text.partition("deployed:")
    assert marker, f"{CHAT_PLAN} has no deployed section"
    head = head.replace("../", f"{GITOPS_DIR}/")
    return head if deployed is None else head + textwrap.dedent(deployed)
