"""Print or write the validation report: ``python -m kvplan.validation [--output FILE]``."""

from __future__ import annotations

import argparse
import sys

from kvplan.atomic import check_output_folder, write_text_atomic
from kvplan.cli import EXIT_INTERRUPTED, deliver_dropped_interrupts
from kvplan.validation import render_markdown, results_as_json, run_cases

PROG = "python -m kvplan.validation"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG,
                                     description="Compare kvplan's predictions with measured vLLM behaviour.")
    parser.add_argument("--examples", default="examples",
                        help="folder of the example specs (default: examples)")
    parser.add_argument("--output", help="write the Markdown report to this file instead of stdout")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args(argv)

    try:
        with deliver_dropped_interrupts():
            return _run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    if args.output:
        # The cases take tens of seconds, so a folder that cannot take the report fails first.
        try:
            check_output_folder(args.output)
        except OSError as error:
            print(f"{PROG}: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
            return 1

    results = run_cases(args.examples)
    text = render_markdown(results) if args.format == "markdown" else results_as_json(results) + "\n"
    if args.output:
        try:
            write_text_atomic(args.output, text)
        except OSError as error:
            print(f"{PROG}: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
