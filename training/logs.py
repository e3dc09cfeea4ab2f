"""What a stage reports: train.log (text), metrics.csv (one row per epoch), TensorBoard scalars.

Only rank 0 creates a `StageLog` that writes; other ranks get a silent one (``enabled=False``).
metrics.csv is rewritten whole from the checkpoint's history after every checkpoint, so it always
agrees with the checkpoint a resumed run starts from: a run killed between the two writes never ends
up with a missing or a doubled row. Wall-clock times go to train.log and TensorBoard, not to the CSV,
which therefore is identical for a resumed and an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Optional

from .checkpoint import atomic_write_text


class StageLog:
    """Text, CSV and TensorBoard logging of one stage (no-ops when ``enabled`` is False)."""

    def __init__(self, folder: Path, *, enabled: bool, tensorboard: bool = True, purge_step: Optional[int] = None,
                 echo: bool = True, filename: str = "train.log") -> None:
        self.folder = Path(folder)
        self.filename = filename
        self.enabled = enabled
        self.echo = echo
        self._writer = None
        if enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # tensorboard is the optional 'train' extra
                    self.info("tensorboard is not installed: metrics go to metrics.csv only "
                              "(pip install tensorboard)")
                else:
                    # purge_step drops events a killed run logged after its last checkpoint
                    self._writer = SummaryWriter(str(self.folder / "tensorboard"), purge_step=purge_step)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.echo:
            print(line, file=sys.stderr, flush=True)
        try:
            with open(self.folder / self.filename, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            pass  # a full disk must not turn a log line into the error; the checkpoint writes report it

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and name not in ("epoch",):
                self._writer.add_scalar(f"{prefix}{name}", float(value), step)
        self._writer.flush()

    def write_csv(self, history: list[dict]) -> None:
        """metrics.csv from the full history (atomic)."""
        if not self.enabled or not history:
            return
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.folder / "metrics.csv", buf.getvalue())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
