"""A progress bar on stderr for searches: trials done and the best objective value so far.

A multi-objective search shows the size of its Pareto front so far instead.

The bar is drawn with tqdm (a dependency of Optuna) and only when stderr is a terminal,
so logs, pipes and CI output stay free of control characters. It appears after
``SHOW_AFTER_S`` seconds, so quick searches print nothing, and it is erased when the
search ends, so the result table follows the command line directly.
"""

from __future__ import annotations

import sys
from typing import Any

from kvplan.formatting import format_count, format_seconds

# Seconds a search runs before its bar appears.
SHOW_AFTER_S = 1.0


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        # A replaced or closed stderr.
        return False


def format_best(objective: str, value: float | None) -> str:
    """Describe the best objective value so far, such as ``best makespan 684 s``."""
    if value is None:
        return "no deployment meets the SLA yet"
    if objective == "makespan_s":
        return f"best makespan {format_seconds(value)}"
    if objective == "output_tokens_per_s":
        return f"best {format_count(value)} tok/s"
    if objective == "output_tokens_per_s_per_gpu":
        return f"best {format_count(value)} tok/s/GPU"
    if objective == "cost_per_million_tokens":
        return f"best ${value:.3g} per M tok"
    return f"best {objective} {value:.4g}"


def format_front_size(size: int | None) -> str:
    """Describe the Pareto front so far, such as ``front size 13``."""
    if not size:
        return "no deployment meets the SLA yet"
    return f"front size {size}"


class SearchProgress:
    """A callable ``progress(done, total, best)`` for :func:`kvplan.optimize` that draws a bar.

    With ``pareto``, ``best`` is the size of the Pareto front so far. It draws nothing
    unless ``enabled``. Use it as a context manager so the bar is erased however the
    search ends.
    """

    def __init__(self, objective: str, *, enabled: bool, description: str | None = None,
                 pareto: bool = False) -> None:
        self.objective = objective
        self.enabled = enabled
        self.pareto = pareto
        self.description = description or "search"
        self._bar: Any = None

    def __call__(self, done: int, total: int, best: float | None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.description, unit="trial", file=sys.stderr,
                             delay=SHOW_AFTER_S, leave=False, dynamic_ncols=True)
        if self.pareto:
            postfix = format_front_size(best)
        else:
            postfix = format_best(self.objective, best)
        self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> SearchProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def search_progress(objective: str, *, quiet: bool, description: str | None = None,
                    pareto: bool = False) -> SearchProgress:
    """Return the progress reporter of a search: a bar on a terminal unless ``quiet``.

    ``pareto`` makes the bar show the size of a multi-objective search's front.
    """
    return SearchProgress(objective, enabled=not quiet and stderr_is_terminal(), description=description,
                          pareto=pareto)
