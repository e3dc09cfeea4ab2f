"""Terminal plumbing shared by the commands: logging levels and a tqdm progress callback."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from typing import Iterator

from ..progress import ProgressCallback, no_progress

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
