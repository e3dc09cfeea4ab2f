"""Progress reporting: a callback, never prints (house style, habit 8).

``progress(fraction, message)`` with ``fraction`` in [0, 1]. The CLI turns it into a tqdm bar on a
terminal; the Slicer module and the web viewer turn it into their progress bars.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001 - the null callback
    """The default callback: report nothing."""


def scaled(progress: Optional[ProgressCallback], start: float, stop: float) -> ProgressCallback:
    """A callback reporting into the sub-range [start, stop] of ``progress``."""
    if progress is None:
        return no_progress

    def report(fraction: float, message: str) -> None:
        progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), message)

    return report


def is_cancelled(cancel) -> bool:
    """True when ``cancel`` (None, an object with ``is_set()`` such as threading.Event, or a callable
    returning bool) asks the loop to stop."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())
