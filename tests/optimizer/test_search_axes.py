"""Tests of the optional search axes: node type, KV cache dtype, watermark, full-prompt
admission and expert parallelism.

Each axis must move the predictions the way the engine behaves, reach every point of the
space under ``--exhaustive``, survive a stored Optuna study, and reuse the compiled model
across node types and settings whose arrays have equal shapes.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

import kvplan
from kvplan.costmodel.evaluate import TRACE_COUNTS
from kvplan.optimizer import studies
from kvplan.optimizer.search import evaluate, optimize
from kvplan.optimizer.space import build_search_space
from kvplan.optimizer.variants import Variant, VariantCostModel, variant_plan
from kvplan.spec.errors import KvplanError

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_8B = REPO_ROOT / "examples" / "models" / "deepseek-r1-distill-llama-8b.yaml"
MODEL_R1 = REPO_ROOT / "examples" / "models" / "deepseek-r1.yaml"

# An offline batch of reasoning requests whose KV cache fills up on one or two GPUs, so
# the KV settings change the predictions.
PLAN: dict[str, Any] = {
    "apiVersion": "kvplan/v1",
    "kind": "Plan",
    "name": "axes-8b",
    "model": str(MODEL_8B),
    "hardware": {"node": "h200-sxm-8"},
    "workload": {
        "name": "reasoning",
        "requests": 2000,
        "prompt_tokens": {"distribution": "lognormal", "median": 95, "sigma": 0.45, "max": 4096},
        "output_tokens": {"distribution": "lognormal", "median": 4500, "sigma": 0.7, "max": 16384},
    },
    "search": {"dp": [1], "tp": [1, 2], "pp": [1], "max_num_seqs": [256, 1024]},
}

H100_PRICED = {"base": "h100-sxm-8", "name": "h100-priced", "price_per_gpu_hour": 2.0}
H200_PRICED = {"base": "h200-sxm-8", "name": "h200-priced", "price_per_gpu_hour": 3.0}


def load(search: dict[str, Any] | None = None, **top: Any) -> kvplan.Plan:
    document = copy.deepcopy(PLAN)
    document["search"].update(search or {})
    document.update(top)
    return kvplan.load_plan_from_dict(document)


@pytest.fixture(scope="module")
def plan_8b() -> kvplan.Plan:
    return load()


def metrics_of(plan: kvplan.Plan, **config: Any) -> dict[str, Any]:
    ranked = evaluate(plan, [{"dp": 1, "tp": 1, "max_num_seqs": 1024, **config}]).results[0]
    assert ranked.evaluation.feasible, ranked.evaluation.infeasible_reason
    return ranked.evaluation.metrics


# --- Direction of each axis ----------------------------------------------------------------


def test_fp8_kv_cache_doubles_capacity(plan_8b):
    auto = metrics_of(plan_8b, kv_cache_dtype="auto")["kv_capacity_tokens"]
    fp8 = metrics_of(plan_8b, kv_cache_dtype="fp8")["kv_capacity_tokens"]

    # One byte per element in place of bfloat16's two; block rounding moves it a little.
    assert 1.9 < fp8 / auto <= 2.05


def test_kv_cache_dtype_unset_matches_model_setting(plan_8b):
    unset = metrics_of(plan_8b)
    auto = metrics_of(plan_8b, kv_cache_dtype="auto")

    assert unset["kv_capacity_tokens"] == auto["kv_capacity_tokens"]
    assert unset["makespan_s"] == auto["makespan_s"]


def test_larger_watermark_fewer_preemptions(plan_8b):
    preemptions = [metrics_of(plan_8b, watermark=value)["preemptions"] for value in (0.0, 0.05, 0.2)]

    assert preemptions[0] > preemptions[1]
    assert preemptions[1] > preemptions[2]


def test_larger_watermark_fewer_running_requests(plan_8b):
    running = [metrics_of(plan_8b, watermark=value)["running_requests_per_replica"] for value in (0.0, 0.2)]

    assert running[1] < running[0]


def test_full_prompt_admission_never_admits_more(plan_8b):
    relaxed = metrics_of(plan_8b, require_full_prompt_admission=False)
    strict = metrics_of(plan_8b, require_full_prompt_admission=True)

    assert strict["running_requests_per_replica"] <= relaxed["running_requests_per_replica"]
    assert strict["output_tokens_per_s"] <= relaxed["output_tokens_per_s"]


def test_node_type_changes_memory_and_speed():
    plan = load({"node": ["h200-sxm-8", "h100-sxm-8"]})
    h200 = metrics_of(plan, node="h200-sxm-8")
    h100 = metrics_of(plan, node="h100-sxm-8")

    # 141 GB against 80 GB of HBM, and 4.8 against 3.35 TB/s.
    assert h100["kv_capacity_tokens"] < h200["kv_capacity_tokens"]
    assert h100["output_tokens_per_s"] < h200["output_tokens_per_s"]


def test_cost_uses_each_node_price():
    plan = load({"node": [H200_PRICED, H100_PRICED]}, objective="cost")
    for node, price in (("h200-priced", 3.0), ("h100-priced", 2.0)):
        metrics = metrics_of(plan, node=node, tp=2)
        expected = 2 * price / 3600.0 / metrics["output_tokens_per_s"] * 1e6

        assert metrics["cost_per_million_tokens"] == pytest.approx(expected, rel=1e-6)


# --- Search over the axes ----------------------------------------------------------------------


AXES = {
    "node": ["h200-sxm-8", "h100-sxm-8"],
    "kv_cache_dtype": ["auto", "fp8"],
    "watermark": {"min": 0, "max": 0.1, "step": 0.05},
    "require_full_prompt_admission": [False, True],
}


@pytest.fixture(scope="module")
def axes_plan() -> kvplan.Plan:
    return load(AXES)


def test_space_size_multiplies_axes(axes_plan):
    space = build_search_space(axes_plan)

    # 2 layouts x 2 max_num_seqs x 2 nodes x 2 dtypes x 3 watermarks x 2 admission rules.
    assert space.size == 96
    assert len(set(space.deployments())) == 96


def test_exhaustive_returns_every_point(axes_plan):
    space = build_search_space(axes_plan)
    result = optimize(axes_plan, exhaustive=True)

    assert result.evaluated == space.size
    assert {ranked.evaluation.config for ranked in result.results} == set(space.deployments())


def test_exhaustive_configs_name_every_axis(axes_plan):
    result = optimize(axes_plan, exhaustive=True)
    for ranked in result.results:
        document = ranked.to_dict()["config"]

        assert set(AXES) <= set(document)
        assert "enable_expert_parallel" not in document


def test_unsearched_axes_stay_out_of_json(plan_8b):
    result = optimize(plan_8b, exhaustive=True)
    keys = {key for ranked in result.results for key in ranked.to_dict()["config"]}

    assert keys == {"dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization"}


def test_tpe_finds_exhaustive_best(axes_plan):
    exhaustive = optimize(axes_plan, exhaustive=True).best
    sampled = optimize(axes_plan, trials=60, seed=0).best

    assert sampled.objective_value == pytest.approx(exhaustive.objective_value)


def test_neighbours_change_one_axis(axes_plan):
    space = build_search_space(axes_plan)
    start = space.deployments()[0]
    changed = []
    for neighbour in space.neighbours(start):
        differences = [field.name for field in dataclasses.fields(start)
                       if getattr(start, field.name) != getattr(neighbour, field.name)]
        changed.append(tuple(differences))

    assert all(len(difference) in (1, 3) for difference in changed)
    for axis in AXES:
        assert (axis,) in changed


def test_variants_reuse_compiled_model(axes_plan):
    model = VariantCostModel(axes_plan, tp_values={1, 2}, pp_values={1})
    deployments = build_search_space(axes_plan).deployments()
    first_variant = [d for d in deployments if (d.node, d.kv_cache_dtype, d.watermark,
                                                d.require_full_prompt_admission) == ("h200-sxm-8", "auto", 0.0, False)]
    model.evaluate(first_variant)
    traces = sum(TRACE_COUNTS.values())

    model.evaluate(deployments)

    assert len(model._models) == 24
    assert sum(TRACE_COUNTS.values()) == traces


def test_evaluations_keep_input_order(axes_plan):
    deployments = build_search_space(axes_plan).deployments()[::7]
    evaluations = VariantCostModel(axes_plan).evaluate(deployments)

    assert [evaluation.config for evaluation in evaluations] == deployments


def test_variant_plan_replaces_settings(axes_plan):
    derived = variant_plan(axes_plan, Variant("h100-sxm-8", "fp8", 0.05, True))

    assert derived.node.name == "h100-sxm-8"
    assert derived.model.kv_cache_dtype == "fp8"
    assert derived.engine.watermark == 0.05
    assert derived.engine.require_full_prompt_admission is True


def test_variant_budget_follows_node_type():
    plan = load({"node": ["h200-sxm-8", {"base": "h200-sxm-8", "name": "h200-4", "gpus_per_node": 4}]})
    derived = variant_plan(plan, Variant("h200-4", None, None, None))

    assert derived.search.gpu_budget == 4
    assert derived.node.gpus_per_node == 4


def test_over_budget_on_small_node_infeasible():
    plan = load({"node": ["h200-sxm-8", {"base": "h200-sxm-8", "name": "h200-2", "gpus_per_node": 2}],
                 "tp": [4]})
    result = evaluate(plan, [{"tp": 4, "node": "h200-2"}, {"tp": 4, "node": "h200-sxm-8"}])
    by_node = {ranked.evaluation.config.node: ranked.evaluation for ranked in result.results}

    assert not by_node["h200-2"].feasible
    assert by_node["h200-sxm-8"].feasible


# --- Configurations given by hand --------------------------------------------------------------


def test_unknown_node_in_config_rejected(axes_plan):
    with pytest.raises(KvplanError, match="node 'a100' is not a node type"):
        evaluate(axes_plan, [{"tp": 1, "node": "a100"}])


def test_bad_kv_cache_dtype_in_config_rejected(plan_8b):
    with pytest.raises(KvplanError, match="kv_cache_dtype must be one of auto, fp8"):
        evaluate(plan_8b, [{"tp": 1, "kv_cache_dtype": "fp16"}])


def test_watermark_of_one_in_config_rejected(plan_8b):
    with pytest.raises(KvplanError, match=r"watermark must be a number in \[0, 1\)"):
        evaluate(plan_8b, [{"tp": 1, "watermark": 1.0}])


def test_expert_parallel_on_dense_model_rejected(plan_8b):
    with pytest.raises(KvplanError, match="is dense"):
        evaluate(plan_8b, [{"tp": 1, "enable_expert_parallel": True}])


def test_expert_parallel_axis_searched_for_moe():
    document = copy.deepcopy(PLAN)
    document["model"] = str(MODEL_R1)
    document["search"] = {"dp": [1], "tp": [8], "pp": [1], "max_num_seqs": [256],
                          "enable_expert_parallel": [False, True]}
    plan = kvplan.load_plan_from_dict(document)
    result = optimize(plan, exhaustive=True)
    settings = sorted(ranked.evaluation.config.enable_expert_parallel for ranked in result.results)

    assert settings == [False, True]


# --- Stored studies ----------------------------------------------------------------------------


def test_axes_round_trip_through_sqlite_study(axes_plan, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = optimize(axes_plan, trials=20, seed=1, storage=storage)
    with studies.opened_storage(storage) as opened:
        trials = optuna.load_study(study_name=axes_plan.name, storage=opened).get_trials()
    sampled = [trial for trial in trials if studies.trial_source(trial) == studies.SOURCE_TPE]

    for trial in sampled:
        assert set(AXES) <= set(trial.params)
        config = studies.trial_evaluation(trial).config
        assert config.node == trial.params["node"]
        assert config.kv_cache_dtype == trial.params["kv_cache_dtype"]
        assert config.watermark == trial.params["watermark"]
        assert config.require_full_prompt_admission == trial.params["require_full_prompt_admission"]

    resumed = optimize(axes_plan, trials=20, seed=1, storage=storage)
    first_configs = {ranked.evaluation.config for ranked in first.results}

    assert first_configs <= {ranked.evaluation.config for ranked in resumed.results}
    assert resumed.evaluated >= first.evaluated


def test_plan_document_round_trips_axes(axes_plan):
    document = studies.plan_document(axes_plan)

    assert studies.plan_from_document(document) == axes_plan


def test_plan_document_leaves_out_unsearched_axes(plan_8b):
    search = studies.plan_document(plan_8b)["search"]

    assert not set(studies.OPTIONAL_SEARCH_KEYS) & set(search)


def test_plan_document_round_trips_fraction_range():
    plan = load({"gpu_memory_utilization": {"min": 0.8, "max": 0.9, "step": 0.05}})

    assert studies.plan_from_document(studies.plan_document(plan)) == plan


def test_pareto_evaluates_each_node_type():
    plan = load({"node": ["h200-sxm-8", "h100-sxm-8"], "max_num_seqs": [1024]})
    result = optimize(plan, objectives=["output_tokens_per_s_per_gpu", "ttft_p99"], exhaustive=True)
    capacity = {(point.evaluation.config.node, point.evaluation.config.tp):
                point.evaluation.metrics["kv_capacity_tokens"] for point in result.points}

    assert len(result.points) == 4
    assert capacity[("h100-sxm-8", 2)] < capacity[("h200-sxm-8", 2)]


def test_export_csv_has_a_column_per_searched_axis(axes_plan, tmp_path):
    from kvplan.commands.study import _export_records, _render_export_csv

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optimize(axes_plan, trials=10, seed=0, storage=storage)
    with studies.opened_storage(storage) as opened:
        study = optuna.load_study(study_name=axes_plan.name, storage=opened)
        header = _render_export_csv(_export_records(study), None).splitlines()[0].split(",")

    assert set(AXES) <= set(header)


def test_exact_ties_rank_the_same_on_every_order(axes_plan):
    # require_full_prompt_admission changes no prediction, so its two values tie
    # exactly; the ranking must not depend on the order the evaluations come in.
    result = optimize(axes_plan, exhaustive=True)
    evaluations = [ranked.evaluation for ranked in result.results]
    reranked = evaluate(axes_plan, [e.config for e in reversed(evaluations)])

    assert [r.evaluation.config for r in reranked.results] == [r.evaluation.config for r in result.results]
