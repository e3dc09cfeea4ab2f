"""Terminal plumbing shared by the commands: logging levels, a tqdm progress callback, and the
machine-readable progress lines (``--progress-format jsonl``) that the Slicer module reads."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from typing import Iterator

from ACATLogic.progress import ProgressCallback, no_progress

log = logging.getLogger("acat")


def configure_logging(quiet: bool, verbose: bool) -> None:
    """Warnings by default; ``--quiet``: errors only; ``--verbose``: debug detail."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("acat")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str) -> Iterator[ProgressCallback]:
    """A ``progress(fraction, message)`` drawing a tqdm bar on a terminal, silent otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield no_progress
        return
    from tqdm import tqdm

    # A terminal that reports no size (e.g. a bare pseudo-terminal) would get a zero-width bar.
    size = shutil.get_terminal_size((80, 24))
    with tqdm(total=1000, desc=description, unit="", bar_format="{desc}: {percentage:3.0f}%|{bar}|",
              leave=False, file=sys.stderr, ncols=min(size.columns or 80, 120), nrows=size.lines or 24) as bar:
        def report(fraction: float, message: str) -> None:
            bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
            bar.set_description_str(f"{description} ({message})" if message else description, refresh=False)
            bar.refresh()

        yield report


def jsonl_line(event: str, **fields) -> None:
    """One JSON object on one stdout line, flushed at once (a reader sees it while the run goes on)."""
    sys.stdout.write(json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def progress_reporter(progress_format: str, enabled: bool, description: str,
                      start: float = 0.0, stop: float = 1.0) -> Iterator[ProgressCallback]:
    """``bar``: `progress_bar` (a terminal bar, silent elsewhere). ``jsonl``: one line per call,
    ``{"event": "progress", "stage": description, "fraction": f, "message": m}`` on stdout, where ``f``
    is the fraction of the whole command: the stage's own fraction mapped into [start, stop]. Written
    whatever ``--quiet`` says: the caller asked for it explicitly."""
    if progress_format != "jsonl":
        with progress_bar(enabled, description) as progress:
            yield progress
        return

    def report(fraction: float, message: str) -> None:
        overall = start + (stop - start) * min(max(float(fraction), 0.0), 1.0)
        jsonl_line("progress", stage=description, fraction=round(overall, 6), message=message)

    yield report
