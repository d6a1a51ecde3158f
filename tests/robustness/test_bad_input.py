"""One test per kind of bad input, through the CLI: each exits 1 with a message naming the file,
line and value, and never with a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvplan.spec.files import MAX_SPEC_FILE_BYTES

from .conftest import WORKLOAD, assert_clean_failure, config_8b, plan_text


def test_malformed_yaml(cli, write) -> None:
    plan = write("plan.yaml", "apiVersion: kvplan/v1\nkind: Plan\nname: [unclosed\n")

    for command in ("validate", "optimize"):
        result = cli(command, plan)
        assert_clean_failure(result)
        assert f"{plan}:4:1: $: invalid YAML: while parsing a flow sequence" in result.output


def test_tab_indentation(cli, write) -> None:
    plan = write("plan.yaml", "apiVersion: kvplan/v1\nkind: Plan\n\tname: p\n")

    result = cli("validate", plan)

    assert_clean_failure(result)
    assert f"{plan}:3:1: $: invalid YAML:" in result.stdout
    assert "'\\t'" in result.stdout


def test_binary_file(cli, write, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_bytes(b"\xff\xfe\x00\x01binary")

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}: $: cannot read the file: 'utf-8' codec can't decode byte 0xff" in result.stderr


def test_top_level_list(cli, write) -> None:
    plan = write("plan.yaml", "- apiVersion: kvplan/v1\n- kind: Plan\n")

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:1:1: $: expected a mapping with apiVersion: kvplan/v1 and kind, but got a list" in result.stderr


def test_wrong_type(cli, write) -> None:
    plan = write("plan.yaml", plan_text(workload=WORKLOAD.replace("requests: 10", "requests: ten")))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:11:13: $.workload.requests: must be an integer, but got 'ten'" in result.stderr


def test_negative_count(cli, write) -> None:
    plan = write("plan.yaml", plan_text(workload=WORKLOAD.replace("requests: 10", "requests: -5")))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:11:13: $.workload.requests: must be at least 1, but got -5" in result.stderr


def test_negative_quantity(cli, write) -> None:
    plan = write("plan.yaml", plan_text(node="{base: h200-sxm-8, name: n, gpu_memory: -141GB}"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:6:49: $.hardware.node.gpu_memory: invalid size '-141GB'; expected a non-negative number"
            " followed by a unit") in result.stderr


def test_zero_quantity(cli, write) -> None:
    plan = write("plan.yaml", plan_text(node="{base: h200-sxm-8, name: n, hbm_bandwidth: 0TB/s}"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:6:52: $.hardware.node.hbm_bandwidth: must be greater than 0, but got '0TB/s'" in result.stderr


def test_zero_count(cli, write) -> None:
    plan = write("plan.yaml", plan_text(extra="engine:\n  max_num_seqs: 0\nsearch:\n  gpu_budget: 1\n"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:13:17: $.engine.max_num_seqs: must be at least 1, but got 0" in result.stderr


def test_unknown_unit(cli, write) -> None:
    plan = write("plan.yaml", plan_text(node="{base: h200-sxm-8, name: n, gpu_memory: 141Gbit}"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:6:49: $.hardware.node.gpu_memory: unknown unit 'Gbit' in size '141Gbit'; use one of B, KB,"
            in result.stderr)


def test_quantity_above_limit(cli, write) -> None:
    plan = write("plan.yaml", plan_text(node="{base: h200-sxm-8, name: n, gpu_memory: 1e300TB}"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:6:49: $.hardware.node.gpu_memory: size '1e300TB' is too large; the limit is 1000000TB" in result.stderr


def test_quantity_below_limit(cli, write) -> None:
    plan = write("plan.yaml", plan_text(node="{base: h200-sxm-8, name: n, hbm_bandwidth: 1e-9B/s}"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:6:52: $.hardware.node.hbm_bandwidth: bandwidth '1e-9B/s' is too small; the smallest value"
            " above 0 is 1B/s") in result.stderr


def test_billion_requests(cli, write) -> None:
    plan = write("plan.yaml", plan_text(workload=WORKLOAD.replace("requests: 10", "requests: 1000000000")))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:11:13: $.workload.requests: 1,000,000,000 is above the limit of 16,777,216; the cost model"
            " computes in float32") in result.stderr


def test_integer_beyond_64_bits(cli, write) -> None:
    digits = "9" * 5000
    plan = write("plan.yaml", plan_text(workload=WORKLOAD.replace("requests: 10", f"requests: {digits}")))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:11:13: $: invalid YAML: integer 999999999999999999999999... (5000 characters) is too large" in result.stderr


def test_integer_below_64_bits(cli, write) -> None:
    plan = write("plan.yaml", plan_text(workload=WORKLOAD.replace("requests: 10", "requests: -9223372036854775809")))

    result = cli("validate", plan)

    assert_clean_failure(result)
    assert (f"{plan}:11:13: $: invalid YAML: integer -9223372036854775809 is too small; integers may be at least "
            "-9,223,372,036,854,775,808") in result.stdout


def test_nodes_above_gpu_limit(cli, write) -> None:
    plan = write("plan.yaml", plan_text(node="h200-sxm-8\n  nodes: 1000000000", extra=""))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:7:10: $.hardware.nodes: 1,000,000,000 is above the limit of 65,536" in result.stderr


def test_total_gpus_above_limit(cli, write) -> None:
    plan = write("plan.yaml", plan_text(node="{base: h200-sxm-8, name: n, gpus_per_node: 1024}\n  nodes: 1024",
                                        extra=""))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:7:10: $.hardware.nodes: 1,024 nodes of 1,024 GPUs make 1,048,576 GPUs, above the limit"
            " of 65,536") in result.stderr


def test_engine_count_above_int32(cli, write) -> None:
    plan = write("plan.yaml", plan_text(extra="engine:\n  max_num_seqs: 3000000000\nsearch:\n  gpu_budget: 1\n"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:13:17: $.engine.max_num_seqs: 3,000,000,000 is above the limit of 16,777,216" in result.stderr


def test_search_range_too_many_candidates(cli, write) -> None:
    extra = "search:\n  gpu_budget: 1\n  gpu_memory_utilization: {min: 0.01, max: 1, step: 0.000000001}\n"
    plan = write("plan.yaml", plan_text(extra=extra))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:14:53: $.search.gpu_memory_utilization.step: the range from 0.01 to 1 in steps of 1e-09 has"
            " 990,000,001 candidates, more than the 10,000 a search can sample") in result.stderr


def test_search_layouts_too_many(cli, write) -> None:
    values = ", ".join(str(value) for value in range(1, 201))
    extra = f"search:\n  gpu_budget: 4096\n  dp: [{values}]\n  pp: [{values}]\n"
    plan = write("plan.yaml", plan_text(node="h200-sxm-8\n  nodes: 512", extra=extra))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:13:1: $.search: the dp, tp and pp lists give more than 10,000 combinations within"
            " gpu_budget 4096, too many for a search to sample") in result.stderr


def test_one_token_kv_cache_rejected(cli, write) -> None:
    plan = write("plan.yaml", plan_text(extra="engine:\n  kv_cache_tokens: 1\nsearch:\n  gpu_budget: 1\n"))
    message = (f"{plan}:13:20: $.engine.kv_cache_tokens: a KV cache of 1 tokens cannot hold one longest request"
               " of the workload (300 tokens: prompt 100 + output 200); set kv_cache_tokens to at least 300, or"
               " remove it to size the KV cache from GPU memory")

    validated = cli("validate", plan)
    optimized = cli("optimize", plan)

    assert_clean_failure(validated)
    assert message in validated.stdout
    assert_clean_failure(optimized)
    assert message in optimized.stderr


def test_empty_histogram(cli, write) -> None:
    workload = WORKLOAD.replace("{distribution: fixed, value: 200}", "{distribution: histogram, bins: []}")
    plan = write("plan.yaml", plan_text(workload=workload))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:10:50: $.workload.output_tokens.bins: must list at least 1 value" in result.stderr


def test_empty_lengths_file(cli, write) -> None:
    write("lengths.csv", "prompt_tokens,output_tokens\n")
    workload = WORKLOAD.replace(
        "{distribution: fixed, value: 200}", "{distribution: file, path: lengths.csv, field: output_tokens}"
    )
    plan = write("plan.yaml", plan_text(workload=workload))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:10:45: $.workload.output_tokens.path: lengths file" in result.stderr
    assert "lengths.csv contains no rows" in result.stderr


def test_output_max_below_median(cli, write) -> None:
    workload = WORKLOAD.replace(
        "{distribution: fixed, value: 200}", "{distribution: lognormal, median: 5000, sigma: 0.5, max: 4096}"
    )
    plan = write("plan.yaml", plan_text(workload=workload))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:10:52: $.workload.output_tokens.median: median 5000 is above max 4096; raise max or lower"
            " the median") in result.stderr


def test_lognormal_sigma_out_of_range(cli, write) -> None:
    too_wide = WORKLOAD.replace(
        "{distribution: fixed, value: 200}", "{distribution: lognormal, median: 5, sigma: 50, max: 100000}"
    )
    too_narrow = WORKLOAD.replace(
        "{distribution: fixed, value: 200}", "{distribution: lognormal, median: 5, sigma: 1.0e-9, max: 100}"
    )
    wide = write("wide.yaml", plan_text(workload=too_wide))
    narrow = write("narrow.yaml", plan_text(workload=too_narrow))

    wide_result = cli("optimize", wide)
    narrow_result = cli("optimize", narrow)

    assert_clean_failure(wide_result)
    assert f"{wide}:10:62: $.workload.output_tokens.sigma: 50 is above the limit of 10" in wide_result.stderr
    assert_clean_failure(narrow_result)
    assert (f"{narrow}:10:62: $.workload.output_tokens.sigma: must be at least 0.001, but got 1e-09; for a length"
            " that does not vary, use distribution: fixed") in narrow_result.stderr


def test_histogram_weights_near_float_maximum(cli, write) -> None:
    bins = "[{value: 1, weight: 1.0e+308}, {value: 2, weight: 1.0e+308}]"
    workload = WORKLOAD.replace(
        "{distribution: fixed, value: 200}", f"{{distribution: histogram, bins: {bins}}}"
    )
    plan = write("plan.yaml", plan_text(workload=workload))

    result = cli("validate", plan)

    assert result.code == 0, result.output
    assert result.stdout == "ok: 1 spec file(s) valid in 1 path(s)\n"


def test_config_missing_field(cli, write) -> None:
    write("config.json", config_8b(hidden_size=None))
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: config.json\n")
    plan = write("plan.yaml", plan_text(model=model))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{model}:4:9: $.config: missing required field 'hidden_size' in {model.parent / 'config.json'}" in result.stderr


def test_config_unsupported_architecture(cli, write) -> None:
    write("config.json", config_8b(architectures=["GPT2LMHeadModel"]))
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: config.json\n")
    plan = write("plan.yaml", plan_text(model=model))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{model}:4:9: $.config: unsupported architecture 'GPT2LMHeadModel' in" in result.stderr
    assert "supported architectures: LlamaForCausalLM, Qwen2ForCausalLM" in result.stderr


def test_config_invalid_json(cli, write) -> None:
    write("config.json", "[" * 100_000)
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: config.json\n")

    result = cli("validate", model)

    assert_clean_failure(result)
    assert (f"{model}:4:9: $.config: invalid JSON in {model.parent / 'config.json'}: arrays or objects are nested"
            " too deeply") in result.stdout


def test_config_integer_beyond_parser_limit(cli, write) -> None:
    write("config.json", config_8b(hidden_size=None)[:-1] + ', "hidden_size": ' + "9" * 5000 + "}")
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: m\nconfig: config.json\n")

    result = cli("validate", model)

    assert_clean_failure(result)
    assert f"{model}:4:9: $.config: invalid JSON in {model.parent / 'config.json'}: Exceeds the limit" in result.stdout


def test_ten_to_fifteen_parameters_do_not_fit(cli, write) -> None:
    # About 10^15 parameters: 1,200 layers of hidden size 262,144 and MLP width 1,048,576.
    write("config.json", config_8b(hidden_size=262_144, intermediate_size=1_048_576, num_hidden_layers=1200,
                                   num_attention_heads=2048, num_key_value_heads=256, head_dim=128))
    model = write("model.yaml", "apiVersion: kvplan/v1\nkind: Model\nname: huge\nconfig: config.json\n")
    plan = write("plan.yaml", plan_text(model=model))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:4:8: $.model: model 'huge' does not fit node 'h200-sxm-8': its weights need 2350341.8 GB per"
            " GPU even at tp 1 x pp 1") in result.stderr


def test_circular_base_reference(cli, write) -> None:
    first = write("a.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: b.yaml\nname: a\n")
    second = write("b.yaml", "apiVersion: kvplan/v1\nkind: Workload\nbase: a.yaml\nname: b\n")

    result = cli("validate", first)

    assert_clean_failure(result)
    assert f"{second}:3:7: $.base: circular base reference: {first} -> {second} -> {first}" in result.stdout


def test_symbolic_link_loop(cli, write, tmp_path: Path) -> None:
    os.symlink(tmp_path / "loop-b.yaml", tmp_path / "loop-a.yaml")
    os.symlink(tmp_path / "loop-a.yaml", tmp_path / "loop-b.yaml")
    plan = write("plan.yaml", plan_text(workload="workload: loop-a.yaml\n"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:7:11: $.workload: cannot read workload file {tmp_path / 'loop-a.yaml'}:" in result.stderr
    assert "Too many levels of symbolic links" in result.stderr


def test_missing_reference(cli, write, tmp_path: Path) -> None:
    plan = write("plan.yaml", plan_text(workload="workload: absent.yaml\n"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:7:11: $.workload: workload file 'absent.yaml' not found (looked for"
            f" {tmp_path / 'absent.yaml'})") in result.stderr


def test_missing_spec_file(cli, tmp_path: Path) -> None:
    result = cli("optimize", tmp_path / "absent.yaml")

    assert_clean_failure(result)
    assert f"{tmp_path / 'absent.yaml'}: $: file not found" in result.stderr


def test_yaml_bomb(cli, write) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for index, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[index]
        levels.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    bomb = write("bomb.yaml", "apiVersion: kvplan/v1\nkind: Workload\nname: w\n" + "\n".join(levels) + "\n")

    result = cli("validate", bomb)

    assert_clean_failure(result)
    assert (f"{bomb}:1:1: $: invalid YAML: aliases expand the document to 490,329,070 values from 34 written ones,"
            " more than the 10,000 extra values allowed") in result.stdout


def test_deep_nesting(cli, write) -> None:
    deep = write("deep.yaml", "apiVersion: kvplan/v1\nkind: Workload\nname: w\nx: " + "[" * 100_000 + "]" * 100_000 + "\n")

    result = cli("validate", deep)

    assert_clean_failure(result)
    assert f"{deep}:4:35: $: invalid YAML: mappings and lists are nested more than 32 levels deep" in result.stdout


def test_very_large_file(cli, write) -> None:
    padding = "# padding\n" * (MAX_SPEC_FILE_BYTES // 10 + 1)
    large = write("large.yaml", plan_text() + padding)

    result = cli("optimize", large)

    assert_clean_failure(result)
    assert (f"{large}: $: {large} is {large.stat().st_size:,} bytes, more than the 1,048,576-byte limit for a spec"
            " file") in result.stderr


def test_named_pipe_is_not_read(cli, write, tmp_path: Path) -> None:
    # Opening a named pipe blocks until a writer appears, so reading one would hang.
    os.mkfifo(tmp_path / "pipe.yaml")
    plan = write("plan.yaml", plan_text(workload="workload: pipe.yaml\n"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert (f"{plan}:7:11: $.workload: cannot read workload file {tmp_path / 'pipe.yaml'}: {tmp_path / 'pipe.yaml'}"
            " is not a regular file") in result.stderr


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_device_file_is_not_read(cli, write, device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    plan = write("plan.yaml", plan_text(workload=f"workload: {device}\n"))

    result = cli("optimize", plan)

    assert_clean_failure(result)
    assert f"{plan}:7:11: $.workload: cannot read workload file {device}: {device} is not a regular file" in result.stderr


def test_config_option_above_limit(cli, write) -> None:
    plan = write("plan.yaml", plan_text())

    result = cli("evaluate", plan, "--config", "max_num_seqs=3000000000")

    assert_clean_failure(result)
    assert "infeasible: max_num_seqs 3,000,000,000 is above the limit of 16,777,216" in result.stdout
    assert "kvplan: no feasible deployment; see the reasons above" in result.stderr


def _deep_plan(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "deep.yaml"
    path.write_text("apiVersion: kvplan/v1\nkind: Plan\nname: p\nx: " + "[" * 100_000 + "]" * 100_000 + "\n")
    return path, f"{path}:4:35: $: invalid YAML: mappings and lists are nested more than 32 levels deep"


def _long_integer_plan(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "integer.yaml"
    path.write_text(plan_text(workload=WORKLOAD.replace("requests: 10", "requests: " + "9" * 5000)))
    return path, f"{path}:11:13: $: invalid YAML: integer 999999999999999999999999... (5000 characters) is too large"


def _pipe_plan(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path, f"{path}: $: cannot read the file: {path} is not a regular file"


def _device_plan(tmp_path: Path) -> tuple[Path, str]:
    return Path("/dev/zero"), "/dev/zero: $: cannot read the file: /dev/zero is not a regular file"


@pytest.mark.parametrize("make_plan", [_deep_plan, _long_integer_plan, _pipe_plan, _device_plan],
                         ids=["deep nesting", "5000-digit integer", "named pipe", "/dev/zero"])
def test_size_reads_plan_with_guards(cli, tmp_path: Path, make_plan) -> None:
    # kvplan size reads the plan's objective before it loads the plan. Without the
    # loader's limits that read recursed without end, raised ValueError, blocked on a
    # pipe or read /dev/zero until memory ran out.
    plan, message = make_plan(tmp_path)
    if not plan.exists():
        pytest.skip(f"{plan} does not exist here")

    result = cli("size", plan, "--arrival-rate", "1/s", "--max-nodes", "1")

    assert_clean_failure(result)
    assert message in result.stderr


def test_lengths_file_contents_not_echoed(cli, write) -> None:
    # A spec outside any Git work tree may name any file (rule 7), so messages about a
    # lengths file quote no more of it than the offending value.
    write("secret.csv", "SECRET_HEADER_abc,token\n1,2\n")
    write("log.jsonl", '["SECRET_LINE_abc"]\n')
    for name, field in (("secret.csv", "nope"), ("log.jsonl", "n")):
        workload = WORKLOAD.replace("{distribution: fixed, value: 100}",
                                    f"{{distribution: file, path: {name}, field: {field}}}")
        plan = write("plan.yaml", plan_text(workload=workload))

        result = cli("validate", plan)

        assert_clean_failure(result)
        assert "SECRET_HEADER" not in result.output
        assert "SECRET_LINE" not in result.output


def test_huge_size_formatted_readably() -> None:
    from kvplan.spec.builders import _gigabytes

    assert _gigabytes(141e9) == "141.0 GB"
    assert _gigabytes(6.4e41) == "6.4e+32 GB"
