"""``kvplan launch``: print the ``vllm serve`` command lines of one deployment.

The command passes vLLM every engine setting the cost model assumed for the chosen
deployment, so that the server runs the configuration kvplan predicted. Settings that
vLLM has no flag for are printed as comments. docs/launch.md lists the vLLM sources the
flag names were checked against.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvplan.costmodel.evaluate import Deployment
    from kvplan.optimizer.search import RankedDeployment
    from kvplan.spec.types import Plan

FORMATS = ("shell", "yaml", "json")

# Values kvplan cannot know. They are shell-safe, so a pasted command fails on them
# loudly instead of running with a wrong value.
MODEL_PLACEHOLDER = "REPLACE_WITH_MODEL"
HEAD_ADDRESS_PLACEHOLDER = "REPLACE_WITH_HEAD_NODE_IP"
# TCP port of the data-parallel handshake on the head node. Any free port works. This
# is the port of the multi-node example in vLLM's docs/serving/data_parallel_deployment.md.
DEFAULT_RPC_PORT = 13345

# JSON documents of ``--format json`` carry this version. It changes when a field's
# meaning changes or a field is removed.
LAUNCH_SCHEMA_VERSION = 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch", help="print the vllm serve command lines of one deployment",
        description="Print the vllm serve command line of a deployment, one per node, with the "
                    "engine settings the cost model assumed. --rank picks a row of the "
                    "kvplan optimize ranking (best deployment per layout); --config gives "
                    "the deployment.",
    )
    parser.add_argument("plan", metavar="PLAN", help="path of a Plan spec")

    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--rank", type=int, default=None,
                           help="row of the kvplan optimize ranking to launch (default: 1)")
    selection.add_argument("--config", metavar="KEY=VALUE,...", action="append",
                           help="the deployment to launch, for example dp=2,tp=4,max_num_seqs=1024. "
                                "Settings left out come from the plan's engine section. Give it once.")

    parser.add_argument("--trials", type=int, default=None,
                        help="Optuna trials of the search behind --rank (default: 200)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the search behind --rank (default: 0)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="evaluate every point of the search space behind --rank")

    parser.add_argument("--format", choices=FORMATS, default="shell",
                        help="output format: shell (commands to paste), yaml (a vllm serve --config "
                             "file per node) or json (the deployment and each node's argv). "
                             "Default: shell")

    parser.add_argument("--head-address", default=HEAD_ADDRESS_PLACEHOLDER, metavar="ADDRESS",
                        help="IP address of node 0 for multi-node data parallelism "
                             f"(default: the placeholder {HEAD_ADDRESS_PLACEHOLDER})")
    parser.add_argument("--rpc-port", type=int, default=DEFAULT_RPC_PORT, metavar="PORT",
                        help="TCP port on node 0 for the data-parallel handshake "
                             f"(default: {DEFAULT_RPC_PORT})")

    parser.set_defaults(handler=run)


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NodeCommand:
    """The ``vllm serve`` invocation on one node.

    ``options`` maps long flag names without the leading ``--`` to values, in order. A
    value of True stands for a switch that takes no value.
    """

    node_rank: int
    # "single" for a one-command deployment, else "head" (serves the HTTP API) or "follower".
    role: str
    env: dict[str, str]
    model: str
    options: tuple[tuple[str, Any], ...]

    @property
    def argv(self) -> list[str]:
        argv = ["vllm", "serve", self.model]
        for name, value in self.options:
            argv.append(f"--{name}")
            if value is not True:
                argv.append(_format_value(value))
        return argv

    def config_file(self) -> dict[str, Any]:
        """Return the ``vllm serve --config`` mapping: long flag names without ``--``."""
        return {"model": self.model, **dict(self.options)}


@dataclasses.dataclass(frozen=True)
class OmittedSetting:
    """A setting the cost model assumed that the command does not pass to vLLM."""

    setting: str
    value: Any
    reason: str


@dataclasses.dataclass(frozen=True)
class LaunchCommands:
    """Everything ``kvplan launch`` prints for one deployment."""

    model: str
    nodes: tuple[NodeCommand, ...]
    omitted: tuple[OmittedSetting, ...]
    # Comment lines for the reader of the commands.
    notes: tuple[str, ...]
    # Problems to report on stderr.
    warnings: tuple[str, ...]
    placeholders: tuple[str, ...]


def _format_value(value: Any) -> str:
    # str() of a float is its shortest round-trip form: 0.9, not 0.90000001.
    return str(value)


def build_launch(
    plan: Plan,
    deployment: Deployment,
    *,
    head_address: str = HEAD_ADDRESS_PLACEHOLDER,
    rpc_port: int = DEFAULT_RPC_PORT,
) -> LaunchCommands:
    """Build the ``vllm serve`` commands that run ``deployment`` of ``plan``.

    This function does not evaluate the deployment, so the caller checks that it is
    feasible.
    """
    checkpoint = _read_checkpoint_config(plan)
    engine, warnings = _engine_options(plan, deployment, checkpoint)
    model = plan.model.hf_repo or MODEL_PLACEHOLDER
    nodes, notes = _node_commands(plan, deployment, model, engine, head_address, rpc_port)
    placeholders = _check_placement(plan, deployment, model, nodes, head_address, notes, warnings)

    return LaunchCommands(
        model=model,
        nodes=tuple(nodes),
        omitted=tuple(_omitted_settings(plan, deployment)),
        notes=tuple(notes),
        warnings=tuple(warnings),
        placeholders=tuple(placeholders),
    )


def _check_placement(
    plan: Plan,
    deployment: Deployment,
    model: str,
    nodes: list[NodeCommand],
    head_address: str,
    notes: list[str],
    warnings: list[str],
) -> list[str]:
    """Append notes and warnings about where the commands run, and return the placeholders used."""
    placeholders = []
    if model == MODEL_PLACEHOLDER:
        placeholders.append(MODEL_PLACEHOLDER)
        warnings.append(
            f"model {plan.model.name!r} sets no hf_repo, so the command serves the placeholder "
            f"{MODEL_PLACEHOLDER}. Replace it with the Hugging Face repository or a local path, "
            "or add hf_repo to the model spec"
        )
    if len(nodes) > 1 and head_address == HEAD_ADDRESS_PLACEHOLDER:
        placeholders.append(HEAD_ADDRESS_PLACEHOLDER)
        warnings.append(
            f"replace {HEAD_ADDRESS_PLACEHOLDER} with the IP address of node 0, or pass --head-address"
        )
    if len(nodes) > plan.num_nodes:
        warnings.append(
            f"the deployment needs {len(nodes)} nodes, but the plan has {plan.num_nodes}, because "
            f"each node fits {plan.node.gpus_per_node // (deployment.tp * deployment.pp)} "
            f"replica(s) of tp x pp = {deployment.tp * deployment.pp} GPUs"
        )
    if plan.model.architecture.moe is not None and deployment.dp > 1:
        # For MoE models the expert layers of all data-parallel ranks form one group of
        # dp x tp GPUs (vLLM's docs/serving/data_parallel_deployment.md).
        notes.append(
            "For MoE models vLLM's data parallelism splits the experts across all dp x tp GPUs "
            "and keeps the replicas' forward passes in step, as the cost model assumes; a rank "
            "with no requests still runs dummy forward passes."
        )
    if plan.engine.kv_cache_tokens is not None:
        notes.append("vLLM ignores --gpu-memory-utilization when --kv-cache-memory-bytes is set. "
                     "The cost model still used it to check that the weights fit.")
    return placeholders


def _read_checkpoint_config(plan: Plan) -> dict[str, Any]:
    from kvplan.spec.errors import KvplanError

    path = plan.model.config_path
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise KvplanError(f"failed to read the model's config file {path}: {error}") from None
    return config if isinstance(config, dict) else {}


def _is_fp8_checkpoint(checkpoint: dict[str, Any]) -> bool:
    quantization = checkpoint.get("quantization_config")
    return isinstance(quantization, dict) and quantization.get("quant_method") == "fp8"


def _engine_options(
    plan: Plan, deployment: Deployment, checkpoint: dict[str, Any]
) -> tuple[list[tuple[str, Any]], list[str]]:
    """Return the engine flags every node passes, and warnings about them."""
    model = plan.model
    engine = plan.engine
    workload = plan.workload
    warnings: list[str] = []
    longest_request = workload.prompt_tokens.max_tokens + workload.output_tokens.max_tokens

    options: list[tuple[str, Any]] = [
        ("tensor-parallel-size", deployment.tp),
        ("pipeline-parallel-size", deployment.pp),
        ("data-parallel-size", deployment.dp),
        ("max-num-seqs", deployment.max_num_seqs),
        ("max-num-batched-tokens", deployment.max_num_batched_tokens),
        ("gpu-memory-utilization", deployment.gpu_memory_utilization),
        # The cost model checks the KV cache against the workload's longest request, not
        # against the model's full context window.
        ("max-model-len", longest_request),
        # Activations, and the KV cache under kv_cache_dtype auto, use this dtype.
        ("dtype", "float16" if model.weight_dtype == "float16" else "bfloat16"),
    ]
    if model.kv_cache_dtype == "fp8":
        options.append(("kv-cache-dtype", "fp8"))
    if deployment.enable_expert_parallel:
        options.append(("enable-expert-parallel", True))

    fp8_checkpoint = _is_fp8_checkpoint(checkpoint)
    if model.weight_dtype == "fp8" and not fp8_checkpoint:
        # Online quantization of a 16-bit checkpoint to the fp8 weights the model assumed.
        options.append(("quantization", "fp8"))
    elif model.weight_dtype != "fp8" and fp8_checkpoint:
        warnings.append(
            f"the checkpoint of model {model.name!r} is fp8 (quantization_config.quant_method), but "
            f"the spec sets weight_dtype {model.weight_dtype}. vLLM loads the fp8 weights, so the "
            "predictions assume more weight memory and slower matrix multiplications than it runs"
        )

    if engine.block_size is not None:
        options.append(("block-size", engine.block_size))
    if engine.kv_cache_tokens is not None:
        options.append(("kv-cache-memory-bytes", kv_cache_memory_bytes(plan, deployment)))
    # Newer vLLM leaves async_scheduling unset by default and documents False as the way
    # to turn it off (vllm/config/scheduler.py), so the switch is passed both ways.
    options.append(("async-scheduling" if engine.async_scheduling else "no-async-scheduling", True))

    if deployment.max_num_batched_tokens < deployment.max_num_seqs:
        # vllm/config/scheduler.py (SchedulerConfig.verify_max_model_len) raises on this.
        warnings.append(
            f"vLLM refuses to start when max_num_batched_tokens ({deployment.max_num_batched_tokens}) "
            f"is below max_num_seqs ({deployment.max_num_seqs}). Raise max_num_batched_tokens or "
            "lower max_num_seqs"
        )
    max_positions = checkpoint.get("max_position_embeddings")
    if isinstance(max_positions, int) and longest_request > max_positions:
        warnings.append(
            f"the workload's longest request ({longest_request:,} tokens) exceeds the model's "
            f"max_position_embeddings ({max_positions:,}) in {model.config_path}"
        )
    return options, warnings


def kv_cache_block_size(plan: Plan) -> int:
    """Return the KV block size in tokens that the cost model assumed."""
    from kvplan.costmodel import constants

    if plan.engine.block_size is not None:
        return plan.engine.block_size
    if plan.model.architecture.mla is not None:
        return constants.DEFAULT_MLA_BLOCK_SIZE
    return constants.DEFAULT_BLOCK_SIZE


def kv_cache_memory_bytes(plan: Plan, deployment: Deployment) -> int:
    """Convert the plan's ``kv_cache_tokens`` (per replica) to vLLM's bytes per GPU.

    vLLM's ``--kv-cache-memory-bytes`` is the KV cache size of each GPU in bytes
    (``CacheConfig.kv_cache_memory_bytes``). Every GPU gets the same size, and the stage
    whose layers need the most KV bytes per token sets the replica's block count, so
    that stage's bytes per token fix the size. The token count is rounded up to whole
    blocks.
    """
    from kvplan.costmodel.architecture import parallel_layout
    from kvplan.spec.errors import KvplanError

    tokens = plan.engine.kv_cache_tokens
    if tokens is None:
        raise ValueError("the plan sets no engine.kv_cache_tokens")
    layout = parallel_layout(plan.model, deployment.tp, deployment.pp)
    if not layout.valid:
        raise KvplanError(f"tp={deployment.tp} pp={deployment.pp} is not a valid layout: {layout.reason}")
    bytes_per_token = max(stage.kv_bytes_per_token for stage in layout.stages)
    block_size = kv_cache_block_size(plan)
    blocks = math.ceil(tokens / block_size)
    return blocks * block_size * bytes_per_token


def _node_commands(
    plan: Plan,
    deployment: Deployment,
    model: str,
    engine: list[tuple[str, Any]],
    head_address: str,
    rpc_port: int,
) -> tuple[list[NodeCommand], list[str]]:
    """Split the deployment over nodes and return one command per node, and notes."""
    gpus_per_node = plan.node.gpus_per_node
    replica_gpus = deployment.tp * deployment.pp

    if replica_gpus > gpus_per_node:
        return _ray_command(deployment, model, engine, gpus_per_node)

    replicas_per_node = gpus_per_node // replica_gpus
    node_count = math.ceil(deployment.dp / replicas_per_node)
    if node_count == 1:
        return [NodeCommand(0, "single", {}, model, tuple(engine))], []

    # One vllm serve per node, as in vLLM's docs/serving/data_parallel_deployment.md:
    # node 0 runs the API server and its replicas, the others run theirs headless.
    nodes = []
    for node_rank in range(node_count):
        start_rank = node_rank * replicas_per_node
        local_replicas = min(replicas_per_node, deployment.dp - start_rank)
        options = list(engine)
        if node_rank > 0:
            options.append(("headless", True))
        options.append(("data-parallel-size-local", local_replicas))
        if node_rank > 0:
            options.append(("data-parallel-start-rank", start_rank))
        options.append(("data-parallel-address", head_address))
        options.append(("data-parallel-rpc-port", rpc_port))
        role = "head" if node_rank == 0 else "follower"
        nodes.append(NodeCommand(node_rank, role, {}, model, tuple(options)))
    notes = [f"Run one command on each of {node_count} nodes. Node 0 serves the HTTP API."]
    return nodes, notes


def _ray_command(
    deployment: Deployment, model: str, engine: list[tuple[str, Any]], gpus_per_node: int
) -> tuple[list[NodeCommand], list[str]]:
    """Return the one command of a deployment whose replicas span several nodes."""
    node_count = math.ceil(deployment.gpus / gpus_per_node)
    options = [*engine, ("distributed-executor-backend", "ray")]
    env: dict[str, str] = {}
    notes = [
        f"Each replica needs tp x pp = {deployment.tp * deployment.pp} GPUs, more than one node "
        f"has, so vLLM runs it on a Ray cluster: start Ray on {node_count} nodes "
        "(ray start --head on this one, ray start --address on the others), then run the "
        "command on the head node."
    ]
    if deployment.dp > 1:
        # With the Ray data-parallel backend, replicas that span nodes need the "span"
        # pack strategy (vLLM's docs/serving/data_parallel_deployment.md).
        # NOTE: kvplan has not run this combination, so check the placement vLLM logs.
        options.append(("data-parallel-backend", "ray"))
        env["VLLM_RAY_DP_PACK_STRATEGY"] = "span"
        notes.append("Data-parallel replicas that span nodes use vLLM's Ray data-parallel "
                     "backend with VLLM_RAY_DP_PACK_STRATEGY=span. kvplan has not tested it.")
    return [NodeCommand(0, "single", env, model, tuple(options))], notes


def _omitted_settings(plan: Plan, deployment: Deployment) -> list[OmittedSetting]:
    engine = plan.engine
    omitted = []
    if plan.model.architecture.moe is not None and not deployment.enable_expert_parallel:
        omitted.append(OmittedSetting(
            "enable_expert_parallel", False,
            "--enable-expert-parallel is left out because the deployment does not set it, so the "
            "cost model assumed each expert split in slices across the dp x tp GPUs of its "
            "expert group",
        ))
    omitted.append(OmittedSetting(
        "watermark", engine.watermark,
        "vLLM has no flag for the fraction of KV blocks kept free at admission",
    ))
    omitted.append(OmittedSetting(
        "require_full_prompt_admission", engine.require_full_prompt_admission,
        "vLLM has no flag for it",
    ))
    if deployment.pp > 1:
        in_flight = engine.pp_batches_in_flight or deployment.pp
        omitted.append(OmittedSetting(
            "pp_batches_in_flight", in_flight,
            "vLLM has no flag for the micro-batches in flight under pipeline parallelism",
        ))
    omitted.append(OmittedSetting(
        "prefix_caching", "not modelled",
        "the cost model assumes that no prompt shares cached blocks, so vLLM's default is left as is",
    ))
    return omitted


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def describe_deployment(deployment: Deployment) -> str:
    from kvplan.output import describe_config

    return describe_config(deployment)


def _describe_prediction(ranked: RankedDeployment) -> str:
    from kvplan.formatting import format_count, format_seconds

    metrics = ranked.evaluation.metrics
    parts = []
    if metrics.get("makespan_s") is not None:
        parts.append(f"makespan {format_seconds(metrics['makespan_s'])}")
    parts.append(f"{format_count(metrics.get('output_tokens_per_s'))} output tokens/s")
    ttft = (metrics.get("ttft_s") or {}).get("p99")
    parts.append(f"TTFT p99 {format_seconds(ttft)}")
    parts.append(f"KV cache {format_count(metrics.get('kv_capacity_tokens'))} tokens per replica")
    if ranked.bottleneck:
        parts.append(f"bound by {ranked.bottleneck}")
    return ", ".join(parts)


def _header_lines(plan: Plan, ranked: RankedDeployment, selection: str,
                  commands: LaunchCommands) -> list[str]:
    deployment = ranked.evaluation.config
    lines = [
        f"kvplan launch: plan {plan.name}, {selection}",
        f"Deployment: {describe_deployment(deployment)} ({deployment.gpus} GPUs)",
        f"Predicted: {_describe_prediction(ranked)}",
        "SLA: met" if ranked.sla_met else f"SLA: missed ({'; '.join(ranked.violations)})",
        "Settings of the cost model that are not passed to vLLM:",
    ]
    for setting in commands.omitted:
        lines.append(f"  {setting.setting} = {_format_setting(setting.value)}: {setting.reason}")
    lines.extend(commands.notes)
    return lines


def _format_setting(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def render_shell(header: list[str], commands: LaunchCommands) -> str:
    out = [_comment(header)]
    for node in commands.nodes:
        if node.role != "single":
            role = "head node, serves the HTTP API" if node.role == "head" else "headless"
            out.append(f"\n# Node {node.node_rank} of {len(commands.nodes)} ({role}):\n")
        words = [f"{name}={shlex.quote(value)}" for name, value in node.env.items()]
        argv = [shlex.quote(word) for word in node.argv]
        first = " ".join(words + argv[:3])
        lines = [first] + _pair_flags(argv[3:])
        out.append(" \\\n  ".join(lines) + "\n")
    return "".join(out)


def _pair_flags(words: list[str]) -> list[str]:
    """Group a flag with its value, so that each continuation line contains one setting."""
    lines: list[str] = []
    for word in words:
        if word.startswith("--") or not lines:
            lines.append(word)
        else:
            lines[-1] += f" {word}"
    return lines


def render_yaml(header: list[str], commands: LaunchCommands) -> str:
    import yaml

    out = [_comment(header + [
        "Each document is a vllm serve --config file. Its keys are vLLM's long flag names "
        "without --.",
    ])]
    multi_node = len(commands.nodes) > 1
    for node in commands.nodes:
        file_name = f"vllm-serve-node{node.node_rank}.yaml" if multi_node else "vllm-serve.yaml"
        env = "".join(f"{name}={shlex.quote(value)} " for name, value in node.env.items())
        run_line = f"{env}vllm serve {shlex.quote(node.model)} --config {file_name}"
        where = f" on node {node.node_rank}" if multi_node else ""
        out.append("---\n")
        out.append(f"# Save as {file_name} and run{where}: {run_line}\n")
        out.append(yaml.safe_dump(node.config_file(), sort_keys=False, default_flow_style=False))
    return "".join(out)


def render_json(plan: Plan, ranked: RankedDeployment, selection: dict[str, Any],
                commands: LaunchCommands) -> str:
    document = {
        "schema_version": LAUNCH_SCHEMA_VERSION,
        "plan": {"name": plan.name, "source": plan.source},
        "selection": selection,
        "deployment": ranked.to_dict(),
        "model": commands.model,
        "placeholders": list(commands.placeholders),
        "nodes": [
            {
                "node_rank": node.node_rank,
                "role": node.role,
                "env": node.env,
                "argv": node.argv,
                "config_file": node.config_file(),
            }
            for node in commands.nodes
        ],
        "not_passed": [dataclasses.asdict(setting) for setting in commands.omitted],
        "notes": list(commands.notes),
        "warnings": list(commands.warnings),
    }
    return json.dumps(document, indent=2) + "\n"


# ---------------------------------------------------------------------------------------
# Command-line entry point
# ---------------------------------------------------------------------------------------


def _check_arguments(args: argparse.Namespace) -> None:
    from kvplan.cli import UsageError

    if args.config is not None and len(args.config) > 1:
        # Unlike evaluate, launch starts one deployment, so a second --config is a mistake
        # rather than a second deployment.
        raise UsageError("launch takes one --config; put every setting in it, for example "
                         f"--config {','.join(args.config)}")
    if args.config is not None:
        args.config = args.config[0]
        search_options = []
        if args.trials is not None:
            search_options.append("--trials")
        if args.seed is not None:
            search_options.append("--seed")
        if args.exhaustive:
            search_options.append("--exhaustive")
        if search_options:
            raise UsageError(f"{', '.join(search_options)} applies only to --rank, so drop it or drop --config")
    if args.rank is not None and args.rank < 1:
        raise UsageError(f"--rank must be at least 1, but got {args.rank}")
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, but got {args.trials}")
    if not 1 <= args.rpc_port <= 65535:
        raise UsageError(f"--rpc-port must be a TCP port from 1 to 65535, but got {args.rpc_port}")
    if not args.head_address.strip():
        raise UsageError("--head-address must not be empty")


def _select_deployment(plan: Plan, args: argparse.Namespace) -> tuple[RankedDeployment, str, dict[str, Any]]:
    """Return the chosen deployment, a phrase saying how it was chosen, and the same as JSON."""
    from kvplan.cli import parse_config
    from kvplan.optimizer.search import evaluate, optimize
    from kvplan.spec.errors import KvplanError

    if args.config is not None:
        config = parse_config(args.config)
        ranked = evaluate(plan, [config]).results[0]
        return ranked, f"deployment given with --config {args.config}", {"config": config}

    rank = 1 if args.rank is None else args.rank
    seed = 0 if args.seed is None else args.seed
    result = optimize(plan, trials=args.trials, seed=seed, exhaustive=args.exhaustive).best_per_layout()
    if rank > len(result.results):
        raise KvplanError(
            f"--rank {rank} is out of range because the search ranked {len(result.results)} "
            f"layout(s). Choose a rank from 1 to {len(result.results)}"
        )
    phrase = f"rank {rank} of kvplan optimize (best deployment per layout, {result.method} search)"
    return result.results[rank - 1], phrase, {"rank": rank, "method": result.method, "seed": seed}


def run(args: argparse.Namespace) -> int:
    from kvplan.spec import load_plan
    from kvplan.spec.errors import KvplanError

    from kvplan.optimizer.variants import deployment_plan

    _check_arguments(args)
    plan = load_plan(args.plan)
    ranked, phrase, selection = _select_deployment(plan, args)
    deployment = ranked.evaluation.config
    # The deployment's node type, KV cache dtype, watermark and admission rule, where it
    # sets them, replace the plan's, so the flags and comments match what was predicted.
    plan = deployment_plan(plan, deployment)
    if not ranked.evaluation.feasible:
        raise KvplanError(
            f"deployment {describe_deployment(deployment)} is infeasible: "
            f"{ranked.evaluation.infeasible_reason}; choose another --rank or --config"
        )

    commands = build_launch(plan, deployment, head_address=args.head_address, rpc_port=args.rpc_port)
    if args.format == "json":
        sys.stdout.write(render_json(plan, ranked, selection, commands))
    else:
        header = _header_lines(plan, ranked, phrase, commands)
        render = render_yaml if args.format == "yaml" else render_shell
        sys.stdout.write(render(header, commands))

    if not ranked.sla_met:
        print(f"kvplan launch: warning: the deployment misses the SLA: {'; '.join(ranked.violations)}",
              file=sys.stderr)
    for warning in commands.warnings:
        print(f"kvplan launch: warning: {warning}", file=sys.stderr)
    return 0
