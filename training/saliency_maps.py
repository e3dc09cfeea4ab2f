"""The saliency stage's maps on disk: ``saliency/maps/chunk_%05d.npy``, read back memory-mapped.

Chunk ``i`` holds the (n, S, 1, H, W) float32 maps of cache rows ``[i*n, (i+1)*n)``, n = ``chunk_scans``
(`training.stages.saliency` writes them). Both the stage and the run folder's bookkeeping
(`training.run_folder.stage_status`: are the maps complete?) read this layout, so it lives here, below both:
it imports neither.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np


class StageFolders(Protocol):
    """What the maps need of a run: `training.run_folder.RunFolder` is one."""

    def stage_dir(self, stage: str) -> Path: ...


def chunk_path(run: StageFolders, i: int) -> Path:
    return run.stage_dir("saliency") / "maps" / f"chunk_{i:05d}.npy"


def chunk_ok(path: Path, rows: int, shape: tuple) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == (rows,) + tuple(shape) and arr.dtype == np.float32


def chunk_rows(i: int, chunk_scans: int, n_rows: int) -> range:
    return range(i * chunk_scans, min((i + 1) * chunk_scans, n_rows))


def maps_complete(run: StageFolders, done: dict) -> bool:
    """Every chunk that done.json announces exists with the right shape (headers only are read)."""
    n, cs, shape = int(done["n_rows"]), int(done["chunk_scans"]), tuple(done["map_shape"])
    return all(chunk_ok(chunk_path(run, i), len(chunk_rows(i, cs, n)), shape) for i in range(math.ceil(n / cs)))


class SaliencyMaps:
    """maps[row] -> (S, 1, H, W) float32 saliency of a cache row (chunks memory-mapped on first use)."""

    def __init__(self, run: StageFolders, chunk_scans: int) -> None:
        self.run = run
        self.chunk_scans = int(chunk_scans)
        self._open: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {"run": self.run, "chunk_scans": self.chunk_scans, "_open": {}}

    def __getitem__(self, row: int) -> np.ndarray:
        i = row // self.chunk_scans
        if i not in self._open:
            self._open[i] = np.load(chunk_path(self.run, i), mmap_mode="r")
        return self._open[i][row - i * self.chunk_scans]
