"""How time and memory grow with the size of the search space and with the number of
length-distribution bins.

Each setting runs in a new process (this script with --worker), so its peak resident
memory is its own. Space sizes grow the qwen-32b-8xh200 plan's max_num_seqs and
max_num_batched_tokens lists and are evaluated exhaustively; bin counts set the number
of points that every length distribution is discretized into and padded to (64 in
kvplan), for the default search and for 1,024 configurations.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PLAN = common.EXAMPLE_PLAN_DIR / "qwen-32b-8xh200.yaml"
# (max_num_seqs values, max_num_batched_tokens values); with the plan's 20 layouts and
# one gpu_memory_utilization these give 200 to 51,200 deployments.
SPACES = ((5, 2), (10, 4), (20, 8), (40, 16), (80, 32))
QUICK_SPACES = ((5, 2), (10, 4), (20, 8))
BINS = (8, 16, 32, 64, 128)
QUICK_BINS = (16, 64)
THROUGHPUT_ROWS = 1_024


def _plan_with(seqs_count: int, tokens_count: int):
    import yaml

    import kvplan

    data = yaml.safe_load(PLAN.read_text())
    data["search"]["max_num_seqs"] = sorted({max(1, round(16 * 2 ** (i * 8 / seqs_count))) for i in range(seqs_count)})
    data["search"]["max_num_batched_tokens"] = sorted(
        {round(2048 * 2 ** (i * 4 / tokens_count)) for i in range(tokens_count)})
    return kvplan.load_plan_from_dict(data, base_dir=PLAN.parent)


def worker_space(seqs_count: int, tokens_count: int) -> dict:
    import kvplan

    plan = _plan_with(seqs_count, tokens_count)
    kvplan.optimize(plan, trials=1)  # compiles the model
    start = time.perf_counter()
    result = kvplan.optimize(plan, exhaustive=True)
    seconds = time.perf_counter() - start
    return {"space_size": result.space_size, "exhaustive_s": seconds,
            "deployments_per_s": result.space_size / seconds, "peak_rss_mib": common.peak_rss_mib()}


def worker_bins(bins: int) -> dict:
    import jax

    import kvplan
    from kvplan.costmodel import evaluate as evaluate_module
    from kvplan.costmodel import inputs as inputs_module
    from kvplan.optimizer.space import build_search_space
    from kvplan.spec import distributions, types

    for module in (types, distributions, inputs_module):
        module.DISTRIBUTION_BINS = bins

    plan = kvplan.load_plan(PLAN)
    space = build_search_space(plan)
    model = evaluate_module.CostModel(plan, {l.tp for l in space.layouts}, {l.pp for l in space.layouts})
    deployments = space.deployments()
    rows = (deployments * (THROUGHPUT_ROWS // len(deployments) + 1))[:THROUGHPUT_ROWS]
    batch = jax.tree_util.tree_map(jax.numpy.asarray, model.config_batch(rows))

    start = time.perf_counter()
    compiled = evaluate_module.evaluate_arrays.lower(model.inputs, batch, mode=plan.workload.arrival_mode).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(model.inputs, batch))
    times = common.time_repeated(lambda: jax.block_until_ready(compiled(model.inputs, batch)), min_runs=3)

    kvplan.optimize(plan, trials=1)
    start = time.perf_counter()
    kvplan.optimize(plan, seed=0)
    search_s = time.perf_counter() - start
    return {"bins": bins, "compile_s": compile_s, "configs_per_s": THROUGHPUT_ROWS / min(times),
            "default_search_s": search_s, "peak_rss_mib": common.peak_rss_mib()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, values = sys.argv[2], [int(value) for value in sys.argv[3:]]
        result = worker_space(*values) if kind == "space" else worker_bins(*values)
        print(json.dumps(result))
        return

    args = common.parse_output_argument()
    env = common.clean_environment(KVPLAN_NO_CACHE="1")

    def run_worker(*arguments: object) -> dict:
        run = common.run_measured([sys.executable, __file__, "--worker", *map(str, arguments)], env=env)
        if run["returncode"] != 0:
            return {"arguments": list(arguments), "error": run["stderr"][-1500:]}
        result = json.loads(run["stdout"].strip().splitlines()[-1])
        result["process_wall_s"] = run["wall_s"]
        result["process_peak_rss_mib"] = run["peak_rss_mib"]
        return result

    spaces = []
    for seqs_count, tokens_count in QUICK_SPACES if args.quick else SPACES:
        spaces.append(run_worker("space", seqs_count, tokens_count))
        print(f"space: {spaces[-1]}", flush=True)
    bins = []
    for count in QUICK_BINS if args.quick else BINS:
        bins.append(run_worker("bins", count))
        print(f"bins: {bins[-1]}", flush=True)
    common.write_json(args.output, {"plan": str(PLAN.relative_to(common.REPO_ROOT)), "spaces": spaces,
                                    "bins": bins,
                                    "peak_rss_mib": max(entry.get("process_peak_rss_mib") or 0
                                                        for entry in spaces + bins)})


if __name__ == "__main__":
    main()
