"""Command-line interface: argument parsing and output only.

Results go to stdout (table, JSON, CSV or Markdown); logs and errors go to stderr.
Exit codes: 0 success, 1 invalid input or no feasible deployment that meets the SLA,
2 usage error, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
from typing import Any, Iterator, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# After Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130

# Largest --trials of any command. A search stops once it has evaluated every point of
# its space, and TPE's time per trial grows with the trials done: 1,000 trials of the
# qwen-32b example took 69 s on a 2-core x86 machine.
MAX_TRIALS = 100_000
# --seed seeds NumPy's generator in Optuna's samplers, which accepts 0 to 2^32 - 1.
MAX_SEED = 2**32 - 1

FORMATS = ("table", "json", "csv", "markdown")
DEFAULT_TOP = 10
CONFIG_KEYS = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "node",
               "kv_cache_dtype", "watermark", "require_full_prompt_admission", "enable_expert_parallel")
# --config keys whose values are text or true/false rather than numbers.
# Values of --config kv_cache_dtype (the Model spec's kv_cache_dtype values).
KV_CACHE_DTYPE_CHOICES = ("auto", "fp8")
_TEXT_CONFIG_KEYS = ("node", "kv_cache_dtype")
_BOOLEAN_CONFIG_KEYS = ("require_full_prompt_admission", "enable_expert_parallel")

# Modules that each define one more subcommand: ``add_parser(subparsers)`` adds its
# parser and sets ``handler`` to a function that takes the parsed arguments and returns
# the exit code. They are imported only to build the parser; keep their top-level
# imports light.
COMMAND_MODULES: tuple[str, ...] = (
    "kvplan.commands.launch",
    "kvplan.commands.schema",
    "kvplan.commands.check",
    "kvplan.commands.sweep",
    "kvplan.commands.size",
    "kvplan.commands.plot",
    "kvplan.commands.explain",
    "kvplan.commands.bench_plan",
    "kvplan.commands.calibrate",
    "kvplan.commands.study",
    "kvplan.commands.simulate",
)

logger = logging.getLogger("kvplan")


class UsageError(Exception):
    """A command-line argument that cannot be used; exits with code 2."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse calls this for usage errors
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    from kvplan import __version__

    parser = _ArgumentParser(
        prog="kvplan",
        description="Plan vLLM deployments of large language models on GPU nodes.",
    )
    parser.add_argument("--version", action="version", version=f"kvplan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress to stderr and show a traceback for internal errors")
    parser.add_argument("--traceback", action="store_true",
                        help="show a traceback for every error, including errors in the input")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)

    validate = commands.add_parser(
        "validate", help="check spec files against the kvplan/v1 schemas",
        description="Check spec files (or folders of them) and report every problem with its "
                    "file, line, column and path. Exit code 0 when all are valid, 1 otherwise.",
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="spec file or folder")
    validate.add_argument("--format", choices=("text", "json"), default="text",
                          help="output format (default: text)")

    optimize = commands.add_parser(
        "optimize", help="search the plan's space and rank deployments",
        description="Search the deployments the plan allows and print them ranked by its "
                    "objective, SLA-meeting ones first.",
    )
    optimize.add_argument("plan", metavar="PLAN", help="path of a Plan spec")
    optimize.add_argument("--trials", type=int, default=None,
                          help="Optuna trials before the local polish, at most 100,000; the search stops "
                               "earlier once it has evaluated every point of the space (default: 200)")
    optimize.add_argument("--seed", type=int, default=0,
                          help="seed of the sampler, from 0 to 4,294,967,295 (default: 0)")
    optimize.add_argument("--top", type=int, default=None,
                          help="rows to print (default: 10, or every row with --all)")
    optimize.add_argument("--exhaustive", action="store_true",
                          help="evaluate every point of the search space instead of sampling")
    optimize.add_argument("--all", action="store_true", dest="all_deployments",
                          help="list every evaluated deployment, not only the best one of each "
                               "(dp, tp, pp) layout")
    optimize.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    optimize.add_argument("--objective", action="append", dest="objectives", metavar="METRIC",
                          help="a metric to optimize, such as output_tokens_per_s_per_gpu or ttft_p99; "
                               "give two or three for a multi-objective search that prints the Pareto "
                               "front instead of a ranking")
    optimize.add_argument("--output", metavar="FILE",
                          help="write the result to FILE (replaced atomically) instead of stdout")
    from kvplan.commands.study import add_search_arguments

    add_search_arguments(optimize)

    evaluate = commands.add_parser(
        "evaluate", help="predict the metrics of given deployments",
        description="Predict the metrics of the deployments given with --config; settings "
                    "left out come from the plan's engine section or vLLM's defaults.",
    )
    evaluate.add_argument("plan", metavar="PLAN", help="path of a Plan spec")
    evaluate.add_argument("--config", action="append", required=True, metavar="KEY=VALUE,...",
                          help="a deployment, for example dp=4,tp=2,pp=1,max_num_seqs=2048; repeat "
                               "for several")
    evaluate.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")

    validate.set_defaults(handler=_run_validate)
    optimize.set_defaults(handler=_run_optimize)
    evaluate.set_defaults(handler=_run_evaluate)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(commands)
    return parser


def parse_config(text: str) -> dict[str, Any]:
    """Parse ``dp=4,tp=2,gpu_memory_utilization=0.9`` into a dict of numbers."""
    config: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator or not key or not value.strip():
            raise UsageError(f"invalid --config item {item!r}; write KEY=VALUE, for example tp=2")
        if key not in CONFIG_KEYS:
            raise UsageError(f"--config has an unknown key {key!r}; allowed: {', '.join(CONFIG_KEYS)}")
        if key in config:
            raise UsageError(f"--config sets {key} twice in {text!r}")
        value = value.strip()
        if key == "kv_cache_dtype" and value not in KV_CACHE_DTYPE_CHOICES:
            raise UsageError(f"--config kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPE_CHOICES)}, "
                             f"but got {value!r}")
        if key in _TEXT_CONFIG_KEYS:
            config[key] = value
            continue
        if key in _BOOLEAN_CONFIG_KEYS:
            if value.lower() not in ("true", "false"):
                raise UsageError(f"--config {key} must be true or false, but got {value!r}")
            config[key] = value.lower() == "true"
            continue
        if key == "watermark":
            try:
                config[key] = float(value)
            except ValueError:
                raise UsageError(f"--config watermark must be a number, but got {value!r}") from None
            if not 0 <= config[key] < 1:
                raise UsageError(f"--config watermark must be in [0, 1), but got {value}")
            continue
        try:
            config[key] = float(value) if key == "gpu_memory_utilization" else int(value)
        except ValueError:
            kind = "a number" if key == "gpu_memory_utilization" else "an integer"
            raise UsageError(f"--config {key} must be {kind}, but got {value!r}") from None
        if key == "gpu_memory_utilization" and not 0 < config[key] <= 1:
            raise UsageError(f"--config gpu_memory_utilization must be in (0, 1], but got {value}")
        if key != "gpu_memory_utilization" and config[key] < 1:
            raise UsageError(f"--config {key} must be at least 1, but got {value}")
    if not config:
        raise UsageError(f"--config {text!r} sets nothing; write for example dp=1,tp=8")
    return config


def _run_validate(args: argparse.Namespace) -> int:
    from kvplan.output import render_validation
    from kvplan.spec.loader import validate_files

    report = validate_files(args.paths)
    issues = list(report.issues)
    sys.stdout.write(render_validation(args.paths, issues, args.format, files=report.files))
    if issues:
        files = len({issue.file for issue in issues})
        print(f"kvplan: {len(issues)} problem(s) in {files} file(s)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _run_optimize(args: argparse.Namespace) -> int:
    from kvplan.optimizer.search import optimize
    from kvplan.output import render_result
    from kvplan.spec import load_plan

    if args.top is not None and args.top < 1:
        raise UsageError(f"--top must be at least 1, but got {args.top}")
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be at least 1, but got {args.trials}")
    from kvplan.commands._progress import search_progress
    from kvplan.commands.study import check_search_arguments, report_interrupted, search_options
    from kvplan.optimizer.studies import SearchInterrupted

    check_search_arguments(args)
    check_output_path(args.output)
    if args.objectives:
        from kvplan.commands._pareto import run_pareto_optimize

        return run_pareto_optimize(args, lambda text: write_output(args.output, text))
    plan = load_plan(args.plan)
    logger.info("searching plan %s", plan.name)
    interrupted = None
    with search_progress(plan.objective, quiet=args.quiet) as progress:
        try:
            result = optimize(plan, trials=args.trials, seed=args.seed, exhaustive=args.exhaustive,
                              progress=progress, **search_options(args))
        except SearchInterrupted as error:
            interrupted = error
            result = error.result
    top = args.top
    if not args.all_deployments:
        result = result.best_per_layout()
        top = top or DEFAULT_TOP
    write_output(args.output, render_result(result, args.format, top=top))
    if interrupted is not None:
        return report_interrupted("optimize", interrupted)
    return _exit_code_for(result)


def check_output_path(path: str | None) -> None:
    """Raise KvplanError when ``path`` lies in a folder that is missing or not writable.

    Called before a search, so that a mistyped ``--output`` fails before the work.
    """
    if path is None:
        return
    from kvplan.atomic import check_output_folder
    from kvplan.spec.errors import KvplanError

    try:
        check_output_folder(path)
    except OSError as error:
        raise KvplanError(f"cannot write {path}: {error.strerror or error}") from None


def write_output(path: str | None, text: str) -> None:
    """Print ``text`` to stdout, or write it atomically to ``path`` when one is given."""
    if path is None:
        sys.stdout.write(text)
        return
    from kvplan.atomic import write_text_atomic
    from kvplan.spec.errors import KvplanError

    try:
        write_text_atomic(path, text)
    except OSError as error:
        raise KvplanError(f"cannot write {path}: {error.strerror or error}; check that the folder "
                          "exists and is writable") from None
    print(f"kvplan: wrote {path}", file=sys.stderr)


def _run_evaluate(args: argparse.Namespace) -> int:
    from kvplan.optimizer.search import evaluate
    from kvplan.output import render_result
    from kvplan.spec import load_plan

    configs = [parse_config(text) for text in args.config]
    plan = load_plan(args.plan)
    result = evaluate(plan, configs)
    sys.stdout.write(render_result(result, args.format, top=None))
    return _exit_code_for(result)


def _exit_code_for(result) -> int:
    if result.best is not None:
        return EXIT_OK
    if not any(r.evaluation.feasible for r in result.results):
        print("kvplan: no feasible deployment; see the reasons above", file=sys.stderr)
    else:
        print("kvplan: no deployment meets the SLA; see the violations above", file=sys.stderr)
    return EXIT_FAILURE


# Options of the top-level parser that may also follow the subcommand.
GLOBAL_FLAGS = ("-v", "--verbose", "--traceback")


def configure_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at kvplan's cache folder; return the folder.

    Compiling the cost model takes seconds, and a later run with the same plan shapes
    loads the compiled model from this folder instead. KVPLAN_CACHE_DIR sets the folder
    (default: $XDG_CACHE_HOME/kvplan/jax, else ~/.cache/kvplan/jax), KVPLAN_NO_CACHE=1
    turns the cache off, and without KVPLAN_CACHE_DIR a JAX_COMPILATION_CACHE_DIR set by
    the caller is kept. JAX reads these settings from the environment when it is
    imported, so a program that imported JAX before calling ``main`` keeps its own JAX
    settings (returns None).
    """
    if "jax" in sys.modules:
        return None
    if os.environ.get("KVPLAN_NO_CACHE", "") not in ("", "0"):
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        return None
    folder = os.environ.get("KVPLAN_CACHE_DIR")
    if not folder:
        if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            return os.environ["JAX_COMPILATION_CACHE_DIR"]
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "kvplan", "jax")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    return folder


def check_search_limits(args: argparse.Namespace) -> None:
    """Raise UsageError for a ``--trials`` or ``--seed`` of any command outside what a search can use."""
    trials = getattr(args, "trials", None)
    if trials is not None and trials > MAX_TRIALS:
        raise UsageError(f"--trials must be at most {MAX_TRIALS:,}, but got {trials:,}; a search stops by "
                         "itself once it has evaluated every point of the space")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be from 0 to {MAX_SEED:,}, but got {seed:,}")


@contextlib.contextmanager
def deliver_dropped_interrupts() -> Iterator[None]:
    """Send SIGINT again when Python drops the KeyboardInterrupt of a Ctrl-C.

    Ctrl-C raises KeyboardInterrupt in the Python code running at that moment. When that
    is a garbage-collection callback (JAX registers one), Python prints the exception as
    "Exception ignored in ..." with a traceback, and the command runs on to its end. This
    context replaces ``sys.unraisablehook`` so that such a KeyboardInterrupt marks SIGINT
    pending again, and the command gets it once the callback has returned.
    """
    previous = sys.unraisablehook

    def redeliver(unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            # From a new thread: in this thread the handler would run inside the hook, where
            # its KeyboardInterrupt is dropped again. threading.Thread.start would wait for
            # the thread here, and run the handler while it waits.
            _thread.start_new_thread(_thread.interrupt_main, (signal.SIGINT,))
            return
        previous(unraisable)

    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        sys.unraisablehook = previous


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while the parser is built or the command ends; commands report their own.
        print("kvplan: interrupted by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    arguments = [a for a in arguments if a in GLOBAL_FLAGS] + [a for a in arguments if a not in GLOBAL_FLAGS]
    parser = _build_parser()
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="kvplan: %(message)s",
        stream=sys.stderr,
    )
    # JAX logs backend discovery at INFO; only kvplan's own messages are wanted.
    logging.getLogger("jax").setLevel(logging.WARNING)
    cache_folder = configure_compilation_cache()
    logger.info("JAX compilation cache: %s", cache_folder or "not set by kvplan")
    from kvplan.spec.errors import KvplanError

    try:
        check_search_limits(args)
        with deliver_dropped_interrupts():
            return args.handler(args)
    except UsageError as error:
        print(f"kvplan {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KvplanError as error:
        if args.traceback:
            raise
        print(f"kvplan {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader of stdout (for example `head`) went away; nothing is left to say.
        return EXIT_OK
    except KeyboardInterrupt:
        # Ctrl-C outside a search, which reports its own interruption.
        print(f"kvplan {args.command}: interrupted by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.verbose or args.traceback:
            raise
        print(f"kvplan {args.command}: internal error: {type(error).__name__}: {error}; rerun with "
              "--traceback and report it with the output", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    # Under ``python -m kvplan.cli`` this file runs as ``__main__``, a second copy of the
    # module; the command modules import ``kvplan.cli``, so call that copy's ``main`` to
    # keep one ``UsageError`` class.
    from kvplan.cli import main as _main

    raise SystemExit(_main())
