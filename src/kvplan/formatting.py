"""Human-readable formatting of durations and counts for tables and messages."""

from __future__ import annotations


def format_seconds(value: float | None) -> str:
    """Format a duration with a unit that keeps three significant digits or so."""
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.2f} h"
    if value >= 100:
        return f"{value:,.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def format_count(value: float | None) -> str:
    """Format a count as 1,234, 56k or 7.89M."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:,.0f}"
