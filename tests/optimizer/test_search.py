"""Tests of the deployment search: agreement with exhaustive enumeration, ranking,
``best_per_layout``, the JSON document and reproducibility."""

from __future__ import annotations

import json

import jsonschema
import pytest

import kvplan
from kvplan.optimizer.search import OBJECTIVES, SearchResult

SEARCH_KINDS = ("default", "exhaustive")

CONFIG_KEYS = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization")

LATENCY_SCHEMA = {
    "type": "object",
    "required": ["mean", "p50", "p99"],
    "properties": {statistic: {"type": "number"} for statistic in ("mean", "p50", "p90", "p99")},
}

# Metrics of a feasible deployment of an offline batch plan.
FEASIBLE_METRICS_SCHEMA = {
    "type": "object",
    "required": [
        "makespan_s",
        "output_tokens_per_s",
        "output_tokens_per_s_per_gpu",
        "ttft_s",
        "tpot_s",
        "e2e_s",
        "kv_capacity_tokens",
        "kv_bytes_per_token",
        "weight_bytes_per_gpu",
        "peak_kv_usage",
        "preemptions",
        "bottleneck",
    ],
    "properties": {
        "makespan_s": {"type": "number", "exclusiveMinimum": 0},
        "output_tokens_per_s": {"type": "number", "exclusiveMinimum": 0},
        "output_tokens_per_s_per_gpu": {"type": "number", "exclusiveMinimum": 0},
        "ttft_s": LATENCY_SCHEMA,
        "tpot_s": LATENCY_SCHEMA,
        "e2e_s": LATENCY_SCHEMA,
        "kv_capacity_tokens": {"type": "number", "exclusiveMinimum": 0},
        "kv_bytes_per_token": {"type": "number", "exclusiveMinimum": 0},
        "weight_bytes_per_gpu": {"type": "number", "exclusiveMinimum": 0},
        "peak_kv_usage": {"type": "number", "minimum": 0, "maximum": 1},
        "preemptions": {"type": "number", "minimum": 0},
        "bottleneck": {"type": "string", "minLength": 1},
    },
}

RESULT_DOCUMENT_SCHEMA = {
    "type": "object",
    "required": ["schema_version", "plan", "objective", "results"],
    "properties": {
        "schema_version": {"const": 1},
        "plan": {
            "type": "object",
            "required": ["name", "source"],
            "properties": {"name": {"type": "string"}, "source": {"type": "string"}},
        },
        "objective": {"enum": sorted(OBJECTIVES)},
        "results": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["rank", "config", "feasible", "infeasible_reason", "sla_met", "violations", "metrics"],
                "properties": {
                    "rank": {"type": "integer", "minimum": 1},
                    "config": {
                        "type": "object",
                        "required": list(CONFIG_KEYS),
                        "additionalProperties": False,
                        "properties": {
                            **{key: {"type": "integer", "minimum": 1} for key in CONFIG_KEYS[:-1]},
                            "gpu_memory_utilization": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                        },
                    },
                    "feasible": {"type": "boolean"},
                    "sla_met": {"type": "boolean"},
                    "violations": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    "metrics": {"type": "object"},
                },
                "if": {"properties": {"feasible": {"const": True}}},
                "then": {"properties": {"infeasible_reason": {"const": None}, "metrics": FEASIBLE_METRICS_SCHEMA}},
                "else": {"properties": {"infeasible_reason": {"type": "string", "minLength": 1}}},
            },
        },
    },
}


@pytest.fixture(params=SEARCH_KINDS)
def search_result(request, example_plan_name, default_search_result, exhaustive_result) -> SearchResult:
    """The default or exhaustive search result of each example plan."""
    if request.param == "default":
        return default_search_result(example_plan_name)
    return exhaustive_result(example_plan_name)


def sla_group(ranked) -> int:
    """Return 0 for a feasible, SLA-met row, 1 for a feasible row that misses the SLA, 2 if infeasible."""
    if not ranked.evaluation.feasible:
        return 2
    return 0 if ranked.sla_met else 1


def layout_of(ranked) -> tuple[int, int, int]:
    config = ranked.evaluation.config
    return (config.dp, config.tp, config.pp)


# --- Search quality ------------------------------------------------------------------


def test_optimize_default_finds_exhaustive_best(example_plan_name, default_search_result, exhaustive_result):
    default_best = default_search_result(example_plan_name).best
    exhaustive_best = exhaustive_result(example_plan_name).best

    assert exhaustive_best is not None
    assert default_best is not None
    assert default_best.objective_value == pytest.approx(exhaustive_best.objective_value, rel=1e-6)


def test_optimize_exhaustive_evaluates_whole_space(example_plan_name, exhaustive_result):
    result = exhaustive_result(example_plan_name)

    assert result.method == "exhaustive"
    assert result.evaluated == result.space_size
    assert len(result.results) == result.space_size


def test_optimize_default_evaluates_within_space(example_plan_name, default_search_result):
    result = default_search_result(example_plan_name)

    assert result.method == "tpe"
    assert 0 < result.evaluated <= result.space_size


def test_optimize_same_seed_same_result(example_plans, default_search_result):
    plan_name = "qwen-32b-8xh200"
    first = default_search_result(plan_name)
    second = kvplan.optimize(example_plans[plan_name], seed=0)

    assert second.to_dict() == first.to_dict()


# --- Ranking -------------------------------------------------------------------------


def test_ranking_ranks_consecutive(search_result):
    assert [ranked.rank for ranked in search_result.results] == list(range(1, len(search_result.results) + 1))


def test_ranking_sla_met_first_infeasible_last(search_result):
    groups = [sla_group(ranked) for ranked in search_result.results]

    assert groups == sorted(groups)


def test_ranking_objective_ordered_within_group(search_result):
    direction = OBJECTIVES[search_result.objective][0]
    results = search_result.results
    for earlier, later in zip(results, results[1:]):
        if sla_group(earlier) != sla_group(later) or sla_group(later) == 2:
            continue
        if direction == "minimize":
            assert earlier.objective_value <= later.objective_value, f"rank {earlier.rank} vs {later.rank}"
        else:
            assert earlier.objective_value >= later.objective_value, f"rank {earlier.rank} vs {later.rank}"


def test_ranking_best_is_first_feasible_sla_met(search_result):
    expected = next(r for r in search_result.results if r.evaluation.feasible and r.sla_met)

    assert search_result.best is expected


def test_infeasible_reasons_count_infeasible_rows(search_result):
    infeasible_rows = sum(1 for ranked in search_result.results if not ranked.evaluation.feasible)

    assert sum(search_result.infeasible_reasons.values()) == infeasible_rows


# --- best_per_layout -----------------------------------------------------------------


def test_best_per_layout_one_row_per_layout(search_result):
    layouts = [layout_of(ranked) for ranked in search_result.best_per_layout().results]

    assert len(layouts) == len(set(layouts))


def test_best_per_layout_keeps_every_layout(search_result):
    kept_layouts = {layout_of(ranked) for ranked in search_result.best_per_layout().results}

    assert kept_layouts == {layout_of(ranked) for ranked in search_result.results}


def test_best_per_layout_keeps_best_row_of_layout(search_result):
    first_by_layout = {}
    for ranked in search_result.results:
        first_by_layout.setdefault(layout_of(ranked), ranked.evaluation.config)

    for ranked in search_result.best_per_layout().results:
        assert ranked.evaluation.config == first_by_layout[layout_of(ranked)]


def test_best_per_layout_reranks(search_result):
    results = search_result.best_per_layout().results

    assert [ranked.rank for ranked in results] == list(range(1, len(results) + 1))


# --- JSON document -------------------------------------------------------------------


def test_to_dict_matches_result_schema(search_result):
    document = search_result.to_dict()
    validator = jsonschema.Draft202012Validator(RESULT_DOCUMENT_SCHEMA)
    errors = [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]

    assert errors == []


def test_to_dict_serializes_without_nan(search_result):
    text = json.dumps(search_result.to_dict(), allow_nan=False)

    assert json.loads(text)["plan"]["name"] == search_result.plan.name


def test_to_dict_top_limits_results(search_result):
    assert len(search_result.to_dict(top=3)["results"]) == min(3, len(search_result.results))


def test_to_dict_infeasible_rows_not_sla_met(exhaustive_result):
    # A deployment that cannot run cannot meet a latency bound, and JSON readers that
    # filter on sla_met alone must not pick it.
    results = exhaustive_result("llama-405b-8xh200").to_dict()["results"]
    infeasible = [row for row in results if not row["feasible"]]

    assert infeasible
    assert [row["sla_met"] for row in infeasible] == [False] * len(infeasible)
