"""kvplan: plan vLLM deployments of large language models on GPU nodes.

The public API::

    import kvplan

    plan = kvplan.load_plan("examples/h200-reasoning/qwen-32b-8xh200.yaml")
    result = kvplan.optimize(plan, trials=200, seed=0)
    print(result.best.to_dict())
    kvplan.evaluate(plan, [{"dp": 4, "tp": 2}]).to_dict()

Names are imported on first use, so ``import kvplan`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_plan": "kvplan.spec",
    "load_plan_from_string": "kvplan.spec",
    "load_plan_from_dict": "kvplan.spec",
    "load_plan_with_overrides": "kvplan.spec",
    "validate_paths": "kvplan.spec",
    "optimize": "kvplan.optimizer.search",
    "evaluate": "kvplan.optimizer.search",
    "optimize_pareto": "kvplan.optimizer.pareto",
    "ParetoResult": "kvplan.optimizer.pareto",
    "ParetoPoint": "kvplan.optimizer.pareto",
    "SearchResult": "kvplan.optimizer.search",
    "RankedDeployment": "kvplan.optimizer.search",
    "Deployment": "kvplan.costmodel.evaluate",
    "Evaluation": "kvplan.costmodel.evaluate",
    "Plan": "kvplan.spec.types",
    "KvplanError": "kvplan.spec.errors",
    "SpecError": "kvplan.spec.errors",
    "SpecIssue": "kvplan.spec.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvplan' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
