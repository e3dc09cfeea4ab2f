"""Summaries of repeated measurements and the markdown tables the benchmark prints."""

from __future__ import annotations

import statistics
from typing import Iterable, Optional, Sequence


def summary(values: Iterable[Optional[float]]) -> Optional[dict]:
    """{"median", "min", "max", "runs"} of the values that are not None; None when there are none."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept), "runs": len(kept)}


def median(s: Optional[dict]) -> Optional[float]:
    return None if s is None else s["median"]


def fmt(value: Optional[float], digits: int = 2) -> str:
    """A number for a table cell ("-" for None)."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def fmt_range(s: Optional[dict], digits: int = 2) -> str:
    """"median (min-max)", or the one value when there was one run."""
    if s is None:
        return "-"
    if s["runs"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
