"""The searched settings of a plan: their candidate values and neighbourhoods."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

from kvplan.costmodel.evaluate import Deployment
from kvplan.spec.errors import KvplanError
from kvplan.spec.types import FloatRange, IntRange, Plan

# Points a float range without a step is divided into when it must be enumerated.
FLOAT_RANGE_POINTS = 5

# Largest space ``--exhaustive`` enumerates; beyond it the search must sample.
MAX_EXHAUSTIVE_POINTS = 200_000


@dataclasses.dataclass(frozen=True)
class Layout:
    dp: int
    tp: int
    pp: int

    @property
    def label(self) -> str:
        return f"dp{self.dp}-tp{self.tp}-pp{self.pp}"


def _powers_of_two(limit: int) -> list[int]:
    return [2**i for i in range(int(math.log2(limit)) + 1)] if limit >= 1 else []


def _int_candidates(values: tuple[int, ...] | IntRange) -> list[int]:
    if isinstance(values, IntRange):
        if values.log:
            candidates = [v for v in _powers_of_two(values.high) if v >= values.low]
            return sorted(set([values.low, *candidates, values.high]))
        return list(range(values.low, values.high + 1, values.step))
    return sorted(set(values))


def _float_candidates(values: tuple[float, ...] | FloatRange) -> list[float]:
    if isinstance(values, FloatRange):
        if values.step:
            count = int(math.floor((values.high - values.low) / values.step + 1e-9)) + 1
            return [round(values.low + i * values.step, 10) for i in range(count)]
        span = values.high - values.low
        return [round(values.low + span * i / (FLOAT_RANGE_POINTS - 1), 10) for i in range(FLOAT_RANGE_POINTS)]
    return sorted(set(values))


# Optional searched settings (Deployment fields that stay None unless searched), in
# the order trials sample them. ``watermark`` is ordered, so its neighbours are the
# adjacent candidates; the others are categories, each one a neighbour of every other.
OPTIONAL_AXES = ("node", "kv_cache_dtype", "watermark", "require_full_prompt_admission", "enable_expert_parallel")
_UNORDERED_AXES = ("node", "kv_cache_dtype", "require_full_prompt_admission", "enable_expert_parallel")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Finite candidate lists for every searched setting of one plan.

    An optional axis that is None is not searched, and its Deployment field stays None.
    """

    layouts: tuple[Layout, ...]
    max_num_seqs: tuple[int, ...]
    max_num_batched_tokens: tuple[int, ...]
    gpu_memory_utilization: tuple[float, ...]
    # Node type names.
    node: tuple[str, ...] | None = None
    kv_cache_dtype: tuple[str, ...] | None = None
    watermark: tuple[float, ...] | None = None
    require_full_prompt_admission: tuple[bool, ...] | None = None
    enable_expert_parallel: tuple[bool, ...] | None = None

    def optional_axes(self) -> dict[str, tuple]:
        """Return the candidates of each searched optional setting, by Deployment field name."""
        return {name: getattr(self, name) for name in OPTIONAL_AXES if getattr(self, name) is not None}

    @property
    def size(self) -> int:
        size = (len(self.layouts) * len(self.max_num_seqs) * len(self.max_num_batched_tokens)
                * len(self.gpu_memory_utilization))
        for candidates in self.optional_axes().values():
            size *= len(candidates)
        return size

    def deployments(self) -> list[Deployment]:
        optional = self.optional_axes()
        deployments = []
        for layout, seqs, tokens, utilization, *settings in itertools.product(
            self.layouts, self.max_num_seqs, self.max_num_batched_tokens, self.gpu_memory_utilization,
            *optional.values(),
        ):
            deployments.append(Deployment(layout.dp, layout.tp, layout.pp, seqs, tokens, utilization,
                                          **dict(zip(optional, settings))))
        return deployments

    def neighbours(self, deployment: Deployment) -> list[Deployment]:
        """Deployments one candidate step away in a single setting."""
        result = []
        layout_labels = [layout.label for layout in self.layouts]
        current = Layout(deployment.dp, deployment.tp, deployment.pp)
        axes: list[tuple[str, Sequence, object]] = [
            ("layout", self.layouts, current),
            ("max_num_seqs", self.max_num_seqs, deployment.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens, deployment.max_num_batched_tokens),
            ("gpu_memory_utilization", self.gpu_memory_utilization, deployment.gpu_memory_utilization),
        ]
        for name, candidates in self.optional_axes().items():
            axes.append((name, candidates, getattr(deployment, name)))
        for name, candidates, value in axes:
            if name in _UNORDERED_AXES:
                if value not in candidates:
                    continue
                nearby = [candidate for candidate in candidates if candidate != value]
            elif name == "layout":
                if current.label not in layout_labels:
                    continue
                index = layout_labels.index(current.label)
                # Every layout is a neighbour: layouts are few and not ordered.
                nearby = [c for i, c in enumerate(candidates) if i != index]
            else:
                if value not in candidates:
                    continue
                index = list(candidates).index(value)
                nearby = [candidates[i] for i in (index - 1, index + 1) if 0 <= i < len(candidates)]
            for candidate in nearby:
                if name == "layout":
                    result.append(dataclasses.replace(deployment, dp=candidate.dp, tp=candidate.tp, pp=candidate.pp))
                else:
                    result.append(dataclasses.replace(deployment, **{name: candidate}))
        return result


def build_search_space(plan: Plan) -> SearchSpace:
    """Expand the plan's search section into candidate lists.

    Layouts are every (dp, tp, pp) from the candidate degrees whose product fits the GPU
    budget; unset degrees default to the powers of two up to the budget.
    """
    search = plan.search
    budget = search.gpu_budget
    gpus_per_node = plan.node.gpus_per_node
    if search.node:
        # Layouts cover the largest node type; the cost model marks those over a smaller
        # type's budget or node size infeasible.
        budget = max(search.node_gpu_budgets)
        gpus_per_node = max(node.gpus_per_node for node in search.node)
    dp_values = search.dp or tuple(_powers_of_two(budget))
    tp_values = search.tp or tuple(v for v in _powers_of_two(budget) if v <= gpus_per_node)
    pp_values = search.pp or tuple(_powers_of_two(budget))
    layouts = tuple(
        Layout(dp, tp, pp)
        for dp, tp, pp in itertools.product(sorted(set(dp_values)), sorted(set(tp_values)), sorted(set(pp_values)))
        if dp * tp * pp <= budget
    )
    if not layouts:
        raise KvplanError(
            f"the search space has no (dp, tp, pp) whose product fits the GPU budget of {budget}; "
            "raise search.gpu_budget or lower the candidate degrees"
        )
    return SearchSpace(
        layouts=layouts,
        max_num_seqs=tuple(_int_candidates(search.max_num_seqs)),
        max_num_batched_tokens=tuple(_int_candidates(search.max_num_batched_tokens)),
        gpu_memory_utilization=tuple(_float_candidates(search.gpu_memory_utilization)),
        node=None if search.node is None else tuple(node.name for node in search.node),
        kv_cache_dtype=search.kv_cache_dtype,
        watermark=None if search.watermark is None else tuple(_float_candidates(search.watermark)),
        require_full_prompt_admission=(None if search.require_full_prompt_admission is None
                                       else tuple(sorted(set(search.require_full_prompt_admission)))),
        enable_expert_parallel=(None if search.enable_expert_parallel is None
                                else tuple(sorted(set(search.enable_expert_parallel)))),
    )
