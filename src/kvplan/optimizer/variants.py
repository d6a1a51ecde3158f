"""Evaluation of deployments whose settings change the plan's inputs.

A deployment's node type, KV cache dtype, watermark and admission rule are inputs of
the cost model, not rows of its batch. Deployments are therefore grouped by these
settings (their variant), and each group is evaluated by a cost model built from a
derived plan.
Variants whose arrays have equal shapes reuse the compiled model, so searching these
settings adds no compilation as long as every variant uses the same TP and PP degrees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, NamedTuple

from kvplan.costmodel.evaluate import CostModel, Evaluation
from kvplan.spec.errors import KvplanError
from kvplan.spec.types import Deployment, NodeSpec, Plan

KV_CACHE_DTYPES = ("auto", "fp8")


class Variant(NamedTuple):
    """The settings of a deployment that select its cost model; None keeps the plan's own."""

    node: str | None
    kv_cache_dtype: str | None
    watermark: float | None
    require_full_prompt_admission: bool | None


def variant_of(deployment: Deployment) -> Variant:
    return Variant(deployment.node, deployment.kv_cache_dtype, deployment.watermark,
                   deployment.require_full_prompt_admission)


def node_types(plan: Plan) -> dict[str, tuple[NodeSpec, int]]:
    """Return each node type a deployment of ``plan`` may name, with its GPU budget.

    These are the plan's search.node entries, and hardware.node with search.gpu_budget.
    """
    types = {plan.node.name: (plan.node, plan.search.gpu_budget)}
    for node, budget in zip(plan.search.node or (), plan.search.node_gpu_budgets or ()):
        types[node.name] = (node, budget)
    return types


def variant_plan(plan: Plan, variant: Variant) -> Plan:
    """Return ``plan`` with the variant's settings in place of its own.

    Raises KvplanError for a node name that is not one of the plan's node types.
    """
    if variant == Variant(None, None, None, None):
        return plan
    derived = plan
    if variant.node is not None and variant.node != plan.node.name:
        types = node_types(plan)
        if variant.node not in types:
            raise KvplanError(
                f"node {variant.node!r} is not a node type of plan {plan.name!r}; use one of"
                f" {', '.join(sorted(types))} (hardware.node or search.node)"
            )
        node, budget = types[variant.node]
        derived = dataclasses.replace(derived, node=node,
                                      search=dataclasses.replace(derived.search, gpu_budget=budget))
    if variant.kv_cache_dtype is not None:
        derived = dataclasses.replace(derived, model=dataclasses.replace(derived.model,
                                                                         kv_cache_dtype=variant.kv_cache_dtype))
    engine_changes: dict[str, Any] = {}
    if variant.watermark is not None:
        engine_changes["watermark"] = variant.watermark
    if variant.require_full_prompt_admission is not None:
        engine_changes["require_full_prompt_admission"] = variant.require_full_prompt_admission
    if engine_changes:
        derived = dataclasses.replace(derived, engine=dataclasses.replace(derived.engine, **engine_changes))
    return derived


def deployment_plan(plan: Plan, deployment: Deployment) -> Plan:
    """Return the plan that the cost model evaluates ``deployment`` under."""
    return variant_plan(plan, variant_of(deployment))


def check_deployment_settings(plan: Plan, deployment: Deployment) -> None:
    """Raise KvplanError when an optional setting of ``deployment`` is invalid for ``plan``."""
    types = node_types(plan)
    if deployment.node is not None and deployment.node not in types:
        raise KvplanError(
            f"node {deployment.node!r} is not a node type of plan {plan.name!r}; use one of"
            f" {', '.join(sorted(types))} (hardware.node or search.node)"
        )
    if deployment.kv_cache_dtype is not None and deployment.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise KvplanError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, but got "
                          f"{deployment.kv_cache_dtype!r}")
    watermark = deployment.watermark
    if watermark is not None and (isinstance(watermark, bool) or not isinstance(watermark, (int, float))
                                  or not math.isfinite(watermark) or not 0 <= watermark < 1):
        raise KvplanError(f"watermark must be a number in [0, 1), but got {watermark!r}")
    for key in ("require_full_prompt_admission", "enable_expert_parallel"):
        value = getattr(deployment, key)
        if value is not None and not isinstance(value, bool):
            raise KvplanError(f"{key} must be true or false, but got {value!r}")
    if deployment.enable_expert_parallel and plan.model.architecture.moe is None:
        raise KvplanError(f"enable_expert_parallel is true, but model {plan.model.name!r} is dense (no MoE "
                          "experts); drop the setting or set it to false")


def _degrees_up_to(limit: int) -> set[int]:
    values = set()
    value = 1
    while value <= limit:
        values.add(value)
        value *= 2
    return values


class VariantCostModel:
    """Cost models of one plan's variants, with :meth:`CostModel.evaluate`'s interface.

    Every variant's model gets the same TP and PP degrees (the powers of two up to the
    largest GPU budget, plus the ones given), so their arrays have equal shapes and JAX
    traces the model once for all of them.
    """

    def __init__(self, plan: Plan, tp_values: Iterable[int] = (), pp_values: Iterable[int] = ()):
        self.plan = plan
        largest_budget = max(budget for _, budget in node_types(plan).values())
        powers = _degrees_up_to(largest_budget)
        self._tp_values = tuple(sorted(powers | set(plan.search.tp or ()) | set(tp_values)))
        self._pp_values = tuple(sorted(powers | set(plan.search.pp or ()) | set(pp_values)))
        self._models: dict[Variant, CostModel] = {}

    def model_for(self, variant: Variant) -> CostModel:
        """Return the cost model of ``variant``, building it on first use."""
        model = self._models.get(variant)
        if model is None:
            model = CostModel(variant_plan(self.plan, variant), self._tp_values, self._pp_values)
            self._models[variant] = model
        return model

    def evaluate(self, deployments: list[Deployment]) -> list[Evaluation]:
        """Evaluate ``deployments``, one cost model call per variant, and return them in input order."""
        groups: dict[Variant, list[int]] = {}
        for index, deployment in enumerate(deployments):
            groups.setdefault(variant_of(deployment), []).append(index)
        evaluations: list[Evaluation | None] = [None] * len(deployments)
        for variant, indices in groups.items():
            group = [deployments[index] for index in indices]
            for index, evaluation in zip(indices, self.model_for(variant).evaluate(group)):
                evaluations[index] = evaluation
        return evaluations


def single_node_type_plan(plan: Plan, name: str) -> Plan:
    """Return ``plan`` on node type ``name`` of its search.node list, with that type's GPU budget.

    The result searches no other node type, so ``kvplan size`` can size each type alone.
    """
    node, budget = node_types(plan)[name]
    search = dataclasses.replace(plan.search, gpu_budget=budget, node=None, node_gpu_budgets=None)
    return dataclasses.replace(plan, node=node, search=search)
