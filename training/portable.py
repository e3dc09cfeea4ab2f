"""What a model card says, without the paths of the machine that trained it.

A bundle is published as it is (README, "Your own task"): its card and README must not hold ``/root/...`` or
``/home/<name>/...``. `portable` rewrites every absolute path in a text relative to named folders - ``$BUNDLE``
(the bundle), ``$DATA`` (the dataset's folder), ``$RUN`` (the run folder; any other path is written relative to
it, ``$RUN/../..``) - so the commands keep their shape: run them from the repository root with ``RUN``, ``DATA``
and ``BUNDLE`` set to your folders. Relative paths (``training/configs/brain_cpu.yaml``) stay as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

# an absolute POSIX path: "/" not preceded by a word character, "$", ":", "/", "." or "~" (so "420/90/90",
# "https://", "./x", "$RUN/x" and "~/x" are left alone), up to a space, a quote or a separator
_ABSOLUTE = re.compile(r"(?<![\w$:/.~-])/[^\s'\",;()\[\]{}<>|]+")


def portable(text: str, run_root, *, data_dir=None, bundle_dir=None) -> str:
    """``text`` with each absolute path written as ``$BUNDLE/...``, ``$DATA/...`` or ``$RUN/...``."""
    anchors = [(name, Path(os.path.abspath(base))) for name, base in
               (("$BUNDLE", bundle_dir), ("$DATA", data_dir), ("$RUN", run_root)) if base is not None]
    anchors.sort(key=lambda item: len(item[1].parts), reverse=True)  # the most specific folder first
    run = Path(os.path.abspath(run_root))

    def relative(match: re.Match) -> str:
        path = Path(os.path.normpath(match.group(0)))
        for name, base in anchors:
            if path == base or base in path.parents:
                rest = path.relative_to(base).as_posix()
                return name if rest == "." else f"{name}/{rest}"
        return f"$RUN/{Path(os.path.relpath(path, run)).as_posix()}"

    return _ABSOLUTE.sub(relative, text)


def absolute_paths(text: str) -> list[str]:
    """The absolute paths left in ``text`` (for the tests and a check before writing a card)."""
    return _ABSOLUTE.findall(text)


def dataset_folder(manifest: Optional[str]) -> Optional[Path]:
    """The folder of a data source (a manifest's folder, or the MosMed root itself)."""
    if not manifest:
        return None
    path = Path(manifest)
    return path.parent if path.suffix.lower() == ".csv" else path
