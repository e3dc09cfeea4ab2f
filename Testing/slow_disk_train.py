"""``python Testing/slow_disk_train.py ARGS``: ``python -m training.train ARGS`` on a slow disk.

Every fsync of a temporary file (``.NAME.*.partial``: a checkpoint, metrics.csv, weights or done.json
being written) first sleeps ``ACAT_TEST_FSYNC_SLEEP_S`` seconds, so a test that sends SIGKILL while such
a file exists kills the run in the middle of writing it. Nothing else changes: the results are those of
``training.train``. Linux only (the file behind a descriptor is read from /proc/self/fd).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SLEEP_S = float(os.environ.get("ACAT_TEST_FSYNC_SLEEP_S", "0.15"))
_fsync = os.fsync


def slow_fsync(fd) -> None:
    try:
        name = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
    except OSError:
        name = ""
    if ".partial" in Path(name).name:
        time.sleep(SLEEP_S)
    _fsync(fd)


if __name__ == "__main__":
    os.fsync = slow_fsync
    from training import train

    sys.exit(train.main(sys.argv[1:]))
