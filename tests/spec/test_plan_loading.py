"""Tests of Plan loading: the three entry points, defaults, engine, SLA, search and objective."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from kvplan.spec import SpecError, SpecIssue, load_plan, load_plan_from_dict, load_plan_from_string
from kvplan.spec.types import EngineSettings, FloatRange, IntRange, SLABound


def raised_issues(loader: Callable, *args, **kwargs) -> list[SpecIssue]:
    with pytest.raises(SpecError) as excinfo:
        loader(*args, **kwargs)
    return excinfo.value.issues


def test_load_plan_defaults(write, minimal_plan) -> None:
    plan = load_plan(write("plan.yaml", minimal_plan()))
    assert plan.name == "test-plan"
    assert plan.num_nodes == 1
    assert plan.node.name == "h200-sxm-8"
    assert plan.model.name == "deepseek-r1-distill-llama-8b"
    assert plan.engine == EngineSettings()
    assert plan.engine.block_size is None
    assert plan.sla == ()
    assert plan.search.gpu_budget == 8
    assert (plan.search.dp, plan.search.tp, plan.search.pp) == (None, None, None)
    assert plan.search.max_num_seqs == (256, 512, 1024, 2048, 4096)
    assert plan.objective == "makespan_s"


def test_load_plan_source_is_path(write, minimal_plan) -> None:
    path = write("plan.yaml", minimal_plan())
    assert load_plan(path).source == str(path)


def test_load_plan_from_string_resolves_base_dir(tmp_path: Path, minimal_plan, examples_dir: Path) -> None:
    text = minimal_plan().replace(f"model: {examples_dir / 'models'}/", "model: ")
    assert "model: deepseek-r1-distill-llama-8b.yaml" in text
    plan = load_plan_from_string(text, base_dir=examples_dir / "models")
    assert plan.source == "<string>"
    assert plan.model.config_path == str(examples_dir / "models" / "hf-configs" / "deepseek-r1-distill-llama-8b.json")


def test_load_plan_from_string_source_name(minimal_plan) -> None:
    text = minimal_plan("objective: fastest\n")
    issues = raised_issues(load_plan_from_string, text, source="inline-plan")
    assert [(issue.file, issue.line, issue.column, issue.path) for issue in issues] == [
        ("inline-plan", 12, 12, "$.objective")
    ]


def test_load_plan_from_dict_builds_plan(minimal_plan) -> None:
    data = yaml.safe_load(minimal_plan())
    plan = load_plan_from_dict(data)
    assert plan.source == "<dict>"
    assert plan.workload.requests == 10


def test_load_plan_from_dict_issues_have_no_line(minimal_plan) -> None:
    data = yaml.safe_load(minimal_plan())
    data["engine"] = {"max_num_seq": 4}
    issues = raised_issues(load_plan_from_dict, data, source="api")
    assert [(issue.file, issue.line, issue.column, issue.path) for issue in issues] == [
        ("api", None, None, "$.engine.max_num_seq")
    ]
    assert str(issues[0]) == "api: $.engine.max_num_seq: unknown key 'max_num_seq'; did you mean 'max_num_seqs'?"


def test_load_plan_from_dict_rejects_list() -> None:
    issues = raised_issues(load_plan_from_dict, [1, 2])
    assert issues[0].message.endswith("but got a list")


def test_inline_model_without_kind(minimal_plan, examples_dir: Path) -> None:
    config = examples_dir / "models" / "hf-configs" / "deepseek-r1-distill-qwen-14b.json"
    text = minimal_plan().replace(
        f"model: {examples_dir / 'models' / 'deepseek-r1-distill-llama-8b.yaml'}\n",
        f"model:\n  name: qwen\n  config: {config}\n  kv_cache_dtype: fp8\n",
    )
    plan = load_plan_from_string(text)
    assert plan.model.name == "qwen"
    assert plan.model.kv_cache_dtype == "fp8"
    assert plan.model.architecture.hf_architecture == "Qwen2ForCausalLM"


def test_engine_settings_parsed(minimal_plan) -> None:
    text = minimal_plan(
        """\
        engine:
          gpu_memory_utilization: 0.95
          block_size: 32
          watermark: 0.01
          require_full_prompt_admission: true
          pp_batches_in_flight: 2
          kv_cache_tokens: 500000
          async_scheduling: true
          cpu_overhead_per_step: 2ms
          cpu_overhead_per_request: 150us
          kernel_overhead_per_layer: 4us
          non_torch_memory: 2GiB
          cuda_graph_memory: 1.5GB
        """
    )
    plan = load_plan_from_string(text)
    assert plan.engine == EngineSettings(
        gpu_memory_utilization=0.95,
        block_size=32,
        watermark=0.01,
        require_full_prompt_admission=True,
        pp_batches_in_flight=2,
        kv_cache_tokens=500000,
        async_scheduling=True,
        cpu_overhead_per_step_s=pytest.approx(2e-3),
        cpu_overhead_per_request_s=pytest.approx(150e-6),
        kernel_overhead_per_layer_s=pytest.approx(4e-6),
        non_torch_memory_bytes=2 * 2**30,
        cuda_graph_memory_bytes=1.5e9,
    )
    # A setting fixed under engine is the only candidate of the search.
    assert plan.search.gpu_memory_utilization == (0.95,)


def test_engine_fixed_setting_searched_alone(minimal_plan) -> None:
    plan = load_plan_from_string(minimal_plan("engine:\n  max_num_seqs: 300\n  max_num_batched_tokens: 4096\n"))
    assert plan.engine.max_num_seqs == 300
    assert plan.search.max_num_seqs == (300,)
    assert plan.search.max_num_batched_tokens == (4096,)


def test_engine_and_search_same_setting_rejected(minimal_plan) -> None:
    text = minimal_plan("engine:\n  max_num_seqs: 300\nsearch:\n  max_num_seqs: [128, 256]\n")
    issues = raised_issues(load_plan_from_string, text)
    assert [(issue.line, issue.column, issue.path) for issue in issues] == [(13, 3, "$.engine.max_num_seqs")]
    assert issues[0].message.startswith("max_num_seqs is set under both engine and search")


def test_sla_bounds_parsed(minimal_plan) -> None:
    text = minimal_plan("sla:\n  ttft: {p99: 60s, mean: 2s}\n  tpot: {mean: 100ms}\n  e2e: {p50: 10min}\n")
    plan = load_plan_from_string(text)
    assert plan.sla == (
        SLABound("ttft", "p99", 60.0),
        SLABound("ttft", "mean", 2.0),
        SLABound("tpot", "mean", pytest.approx(0.1)),
        SLABound("e2e", "p50", 600.0),
    )


def test_sla_zero_bound_rejected(minimal_plan) -> None:
    issues = raised_issues(load_plan_from_string, minimal_plan("sla:\n  ttft: {p99: 0s}\n"))
    assert [(issue.path, issue.message) for issue in issues] == [("$.sla.ttft.p99", "must be greater than 0, but got '0s'")]


def test_search_choices_and_ranges(minimal_plan) -> None:
    text = minimal_plan(
        """\
        search:
          gpu_budget: 4
          dp: [1, 2]
          tp: [1, 2, 4]
          pp: [1]
          max_num_seqs: {min: 64, max: 4096, log: true}
          max_num_batched_tokens: 8192
          gpu_memory_utilization: {min: 0.8, max: 0.95, step: 0.05}
        """
    )
    search = load_plan_from_string(text).search
    assert search.gpu_budget == 4
    assert (search.dp, search.tp, search.pp) == ((1, 2), (1, 2, 4), (1,))
    assert search.max_num_seqs == IntRange(low=64, high=4096, log=True, step=1)
    assert search.max_num_batched_tokens == (8192,)
    assert search.gpu_memory_utilization == FloatRange(low=0.8, high=0.95, step=0.05)


def test_search_integer_range_with_step(minimal_plan) -> None:
    search = load_plan_from_string(minimal_plan("search:\n  max_num_seqs: {min: 128, max: 1024, step: 128}\n")).search
    assert search.max_num_seqs == IntRange(low=128, high=1024, log=False, step=128)


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        ("search:\n  gpu_budget: 16\n", "$.search.gpu_budget", "gpu_budget 16 exceeds the 8 GPUs of 1 h200-sxm-8 node; lower it or add nodes under hardware"),
        ("search:\n  tp: [1, 16]\n", "$.search.tp[1]", "tp 16 exceeds gpu_budget 8"),
        ("search:\n  dp: [2]\n  tp: [4]\n  pp: [2]\n", "$.search", "no combination of dp, tp and pp fits gpu_budget 8: the smallest, dp 2 x tp 4 x pp 2, needs 16 GPUs"),
        ("search:\n  max_num_seqs: {min: 512, max: 128}\n", "$.search.max_num_seqs.max", "max 128 is below min 512"),
        ("search:\n  max_num_seqs: {min: 64, max: 512, log: true, step: 64}\n", "$.search.max_num_seqs.step", "a log-scaled range cannot have a step; remove step or set log: false"),
        ("search:\n  gpu_memory_utilization: {min: 0.95, max: 0.8}\n", "$.search.gpu_memory_utilization.max", "max 0.8 is below min 0.95"),
    ],
)
def test_search_invalid_rejected(minimal_plan, extra: str, path: str, message: str) -> None:
    issues = raised_issues(load_plan_from_string, minimal_plan(extra))
    assert [(issue.path, issue.message) for issue in issues] == [(path, message)]


def test_nodes_scale_gpu_budget(minimal_plan) -> None:
    plan = load_plan_from_string(minimal_plan().replace("  node: h200-sxm-8\n", "  node: h200-sxm-8\n  nodes: 2\n"))
    assert plan.num_nodes == 2
    assert plan.search.gpu_budget == 16


RATE_WORKLOAD = (
    "workload:\n"
    "  name: w\n"
    "  prompt_tokens: {distribution: fixed, value: 100}\n"
    "  output_tokens: {distribution: fixed, value: 200}\n"
    "  arrival_rate: 30/min\n"
)

CONCURRENCY_WORKLOAD = RATE_WORKLOAD.replace("arrival_rate: 30/min", "concurrency: 64")


@pytest.mark.parametrize(
    ("workload", "mode", "objective"),
    [
        (None, "batch", "makespan_s"),
        (RATE_WORKLOAD, "rate", "output_tokens_per_s_per_gpu"),
        (CONCURRENCY_WORKLOAD, "concurrency", "output_tokens_per_s_per_gpu"),
    ],
)
def test_objective_default_follows_arrival_mode(minimal_plan, workload, mode: str, objective: str) -> None:
    plan = load_plan_from_string(minimal_plan(workload=workload))
    assert plan.workload.arrival_mode == mode
    assert plan.objective == objective


def test_arrival_rate_converted_per_second(minimal_plan) -> None:
    workload = load_plan_from_string(minimal_plan(workload=RATE_WORKLOAD)).workload
    assert workload.arrival_rate_per_s == pytest.approx(0.5)
    assert workload.requests is None
    assert workload.concurrency is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("makespan", "makespan_s"),
        ("throughput", "output_tokens_per_s"),
        ("throughput_per_gpu", "output_tokens_per_s_per_gpu"),
        ("cost", "cost_per_million_tokens"),
    ],
)
def test_objective_names_mapped(minimal_plan, name: str, expected: str) -> None:
    text = minimal_plan(f"objective: {name}\n").replace(
        "  node: h200-sxm-8\n", "  node: {base: h200-sxm-8, price_per_gpu_hour: 3.5}\n"
    )
    plan = load_plan_from_string(text)
    assert plan.objective == expected
    assert plan.node.price_per_gpu_hour == 3.5


def test_cost_objective_needs_price(minimal_plan) -> None:
    issues = raised_issues(load_plan_from_string, minimal_plan("objective: cost\n"))
    assert [(issue.line, issue.column, issue.path) for issue in issues] == [(12, 12, "$.objective")]
    assert "node 'h200-sxm-8' has no price_per_gpu_hour" in issues[0].message


def test_makespan_objective_needs_batch(minimal_plan) -> None:
    issues = raised_issues(load_plan_from_string, minimal_plan("objective: makespan\n", workload=RATE_WORKLOAD))
    assert [issue.path for issue in issues] == ["$.objective"]
    assert issues[0].message.startswith("objective makespan needs an offline batch (requests: N)")


def test_node_without_model_dtype_rejected(minimal_plan, examples_dir: Path) -> None:
    text = minimal_plan().replace("deepseek-r1-distill-llama-8b.yaml", "deepseek-r1.yaml").replace(
        "  node: h200-sxm-8\n", "  node:\n    base: h200-sxm-8\n    peak_flops: {bfloat16: 989TFLOP/s}\n"
    )
    issues = raised_issues(load_plan_from_string, text)
    assert [issue.path for issue in issues] == ["$.hardware.node"]
    assert issues[0].message == (
        "node 'h200-sxm-8' has no peak_flops entry for fp8, the weight dtype of model 'deepseek-r1'"
    )


def test_plan_reports_errors_of_all_documents(minimal_plan) -> None:
    workload = (
        "workload:\n"
        "  name: w\n"
        "  prompt_tokens: {distribution: fixed, value: 0}\n"
        "  output_tokens: {distribution: fixed, value: 200}\n"
        "  requests: 10\n"
    )
    text = minimal_plan("engine:\n  block_size: 0\n", workload=workload).replace(
        "  node: h200-sxm-8\n", "  node: {base: h200-sxm-8, gpus_per_node: 0}\n"
    )
    issues = raised_issues(load_plan_from_string, text)
    assert [issue.path for issue in issues] == [
        "$.hardware.node.gpus_per_node",
        "$.workload.prompt_tokens.value",
        "$.engine.block_size",
    ]


def test_plan_checks_search_despite_model_error(minimal_plan, write) -> None:
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: absent.json\n")
    text = minimal_plan("search:\n  gpu_budget: 9\n").replace(
        next(line for line in minimal_plan().splitlines() if line.startswith("model:")), f"model: {model}"
    )
    issues = raised_issues(load_plan_from_string, text)
    assert [issue.path for issue in issues] == ["$.config", "$.search.gpu_budget"]
