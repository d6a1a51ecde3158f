"""Run one `kvplan optimize` in this process and print how its wall time splits into
import, spec loading, compilation, search and output, as one JSON line.

Started by time_to_answer.py in a new process for each measurement. Compilation is the
sum of JAX's own duration events (tracing, lowering to MLIR, and the XLA compile or its
load from the persistent cache); search is the rest of ``optimize``.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def main() -> None:
    plan_path = sys.argv[1]
    start = time.perf_counter()
    from kvplan import cli

    cli.configure_compilation_cache()
    import jax

    from kvplan.optimizer.search import optimize
    from kvplan.output import render_result
    from kvplan.spec import load_plan

    imported = time.perf_counter()

    compile_seconds = {name: 0.0 for name in COMPILE_EVENTS}

    def record(event: str, duration: float, **_: object) -> None:
        if event in compile_seconds:
            compile_seconds[event] += duration

    jax.monitoring.register_event_duration_secs_listener(record)

    plan = load_plan(plan_path)
    loaded = time.perf_counter()
    result = optimize(plan, seed=0)
    searched = time.perf_counter()
    text = render_result(result.best_per_layout(), "table", top=10)
    rendered = time.perf_counter()

    compilation = sum(compile_seconds.values())
    best = result.best
    print(json.dumps({
        "plan": plan.name,
        "import_s": imported - start,
        "spec_s": loaded - imported,
        "compile_s": compilation,
        "compile_parts_s": {name.rsplit("/", 1)[-1]: value for name, value in compile_seconds.items()},
        "search_s": searched - loaded - compilation,
        "output_s": rendered - searched,
        "total_in_process_s": rendered - PROCESS_START,
        "evaluated": result.evaluated,
        "best": best.evaluation.config.to_dict() if best else None,
        "output_chars": len(text),
    }))


if __name__ == "__main__":
    main()
