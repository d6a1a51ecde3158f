"""Tests of the public Python API exported by ``import kvplan``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import kvplan
import kvplan.spec

PLAN_NAME = "qwen-32b-8xh200"
PLAN_PATH = Path(__file__).resolve().parents[1] / "examples" / "h200-reasoning" / f"{PLAN_NAME}.yaml"


@pytest.fixture(scope="module")
def plan(example_plans):
    return example_plans[PLAN_NAME]


# --- Exports -------------------------------------------------------------------------


def test_api_load_plan_is_spec_loader():
    assert kvplan.load_plan is kvplan.spec.load_plan


@pytest.mark.parametrize("name", kvplan.__all__)
def test_api_exported_name_resolves(name):
    assert getattr(kvplan, name) is not None


def test_api_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(kvplan, "no_such_name")


def test_api_load_plan_reads_example(example_plans):
    plan = kvplan.load_plan(PLAN_PATH)

    assert plan == dataclasses.replace(example_plans[PLAN_NAME], source=plan.source)


# --- optimize ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def optimized(plan):
    return kvplan.optimize(plan, trials=50, seed=1)


def test_api_optimize_finds_best(optimized):
    assert optimized.best is not None
    assert optimized.best.rank == 1


def test_api_optimize_evaluates_within_space(optimized):
    assert 0 < optimized.evaluated <= optimized.space_size


def test_api_optimize_to_dict_json_serializable(optimized):
    text = json.dumps(optimized.to_dict(), allow_nan=False)

    assert json.loads(text)["search"]["method"] == "tpe"


def test_api_optimize_zero_trials_raises(plan):
    with pytest.raises(kvplan.KvplanError, match="trials"):
        kvplan.optimize(plan, trials=0)


def test_api_optimize_makespan_outside_batch_raises(rate_plan):
    plan = dataclasses.replace(rate_plan, objective="makespan_s")

    with pytest.raises(kvplan.KvplanError, match="makespan"):
        kvplan.optimize(plan)


# --- evaluate ------------------------------------------------------------------------


def test_api_evaluate_fills_engine_defaults(plan):
    result = kvplan.evaluate(plan, [{"dp": 4, "tp": 2}])
    config = result.results[0].evaluation.config

    assert len(result.results) == 1
    assert config == kvplan.Deployment(
        dp=4,
        tp=2,
        pp=1,
        max_num_seqs=plan.engine.max_num_seqs,
        max_num_batched_tokens=plan.engine.max_num_batched_tokens,
        gpu_memory_utilization=plan.engine.gpu_memory_utilization,
    )


def test_api_evaluate_dp4_tp2_feasible(plan):
    evaluation = kvplan.evaluate(plan, [{"dp": 4, "tp": 2}]).results[0].evaluation

    assert evaluation.feasible


def test_api_evaluate_accepts_deployment(plan):
    deployment = kvplan.Deployment(dp=2, tp=4, pp=1, max_num_seqs=512, max_num_batched_tokens=8192,
                                   gpu_memory_utilization=0.9)

    result = kvplan.evaluate(plan, [deployment])

    assert result.results[0].evaluation.config == deployment


def test_api_evaluate_to_dict_json_serializable(plan):
    result = kvplan.evaluate(plan, [{"dp": 4, "tp": 2}, {"tp": 1, "max_num_seqs": 4096}])

    text = json.dumps(result.to_dict(), allow_nan=False)

    assert len(json.loads(text)["results"]) == 2


def test_api_evaluate_overloaded_rate_to_dict_json_serializable(rate_plan):
    overloaded = dataclasses.replace(
        rate_plan, workload=dataclasses.replace(rate_plan.workload, arrival_rate_per_s=1e6)
    )
    result = kvplan.evaluate(overloaded, [{"tp": 1}])

    text = json.dumps(result.to_dict(), allow_nan=False)

    assert json.loads(text)["results"][0]["metrics"]["keeps_up"] is False


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        ([], "no configuration"),
        ([{"dp": 1, "replicas": 2}], "unknown configuration key"),
        ([{"tp": 0}], "tp must be a positive integer"),
        ([{"tp": 2.0}], "tp must be a positive integer"),
        ([{"gpu_memory_utilization": 1.5}], "gpu_memory_utilization must be in"),
    ],
    ids=["empty", "unknown-key", "zero-tp", "float-tp", "utilization-above-1"],
)
def test_api_evaluate_invalid_config_raises(plan, configs, message):
    with pytest.raises(kvplan.KvplanError, match=message):
        kvplan.evaluate(plan, configs)
