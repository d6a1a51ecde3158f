"""Command-line interface: argument parsing and output only.

Results go to stdout (table, JSON, CSV or Markdown); logs and errors go to stderr.
Exit codes: 0 success, 1 invalid input or no feasible deployment that meets the SLA,
2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

FORMATS = ("table", "json", "csv", "markdown")
DEFAULT_TOP = 10
CONFIG_KEYS = ("dp", "tp", "pp", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization")

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
                          help="Optuna trials before the local polish (default: 200)")
    optimize.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    optimize.add_argument("--top", type=int, default=None,
                          help="rows to print (default: 10, or every row with --all)")
    optimize.add_argument("--exhaustive", action="store_true",
                          help="evaluate every point of the search space instead of sampling")
    optimize.add_argument("--all", action="store_true", dest="all_deployments",
                          help="list every evaluated deployment, not only the best one of each "
                               "(dp, tp, pp) layout")
    optimize.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")

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
    plan = load_plan(args.plan)
    logger.info("searching plan %s", plan.name)
    result = optimize(plan, trials=args.trials, seed=args.seed, exhaustive=args.exhaustive)
    top = args.top
    if not args.all_deployments:
        result = result.best_per_layout()
        top = top or DEFAULT_TOP
    sys.stdout.write(render_result(result, args.format, top=top))
    return _exit_code_for(result)


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


def main(argv: Sequence[str] | None = None) -> int:
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
