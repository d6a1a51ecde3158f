"""The spec layer: YAML specs of models, nodes, workloads and plans (``apiVersion: kvplan/v1``).

``load_plan`` and the other loaders return the frozen dataclasses of
:mod:`kvplan.spec.types` and raise :class:`SpecError` listing every problem with its
file, line and column; ``validate_paths`` returns those issues instead.
"""

from kvplan.spec.errors import KvplanError, SpecError, SpecIssue, ValueProblem
from kvplan.spec.loader import (
    builtin_nodes,
    load_model,
    load_node,
    load_plan,
    load_plan_from_dict,
    load_plan_from_string,
    load_plan_with_overrides,
    load_workload,
    validate_paths,
)

__all__ = [
    "KvplanError",
    "SpecError",
    "SpecIssue",
    "ValueProblem",
    "builtin_nodes",
    "load_model",
    "load_node",
    "load_plan",
    "load_plan_from_dict",
    "load_plan_from_string",
    "load_plan_with_overrides",
    "load_workload",
    "validate_paths",
]
