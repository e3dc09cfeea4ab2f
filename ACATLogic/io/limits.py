"""Sanity limits that stop a damaged header from costing all memory or yielding absurd geometry.

A header is a few bytes that can declare anything: 65535 x 65535 pixels, 2000^3 voxels in a 1 kB
gzip stream, a pixel spacing of 1e308 mm. Readers check what a header declares against these limits
*before* allocating or decoding, so such a file is refused in milliseconds with one clear line
instead of exhausting memory (a MemoryError or the kernel's OOM killer) or running for minutes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ACATInputError

#: Deflate (gzip, zlib) expands at most about 1032:1 (a 258-byte match coded in 2 bits, RFC 1951):
#: a gzip stream of n bytes can never hold more than this many times n bytes of voxels.
GZIP_MAX_RATIO = 1032
#: A volume may take at most this share of the computer's physical memory as float32 plus its
#: stored copy; the rest is for the model and the explanation.
MEMORY_FRACTION = 0.5
#: Voxel sizes outside this range (mm) are not a CT scan: a damaged or mis-scaled header.
SPACING_RANGE_MM = (1e-4, 1e4)
#: Patient coordinates farther than 1 km from the scanner's origin are a damaged header.
MAX_COORDINATE_MM = 1e6


def physical_memory_bytes() -> Optional[int]:
    """Installed memory in bytes, or None where the platform does not say (then no limit applies)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(shape: tuple[int, ...], stored_bytes_per_voxel: int, path: Path | str) -> None:
    """Refuse a volume of ``shape`` whose float32 copy plus stored copy would not fit in memory."""
    n_voxels = int(np.prod([int(s) for s in shape], dtype=object))
    needed = n_voxels * (4 + int(stored_bytes_per_voxel))
    total = physical_memory_bytes()
    if total is not None and needed > MEMORY_FRACTION * total:
        size = " x ".join(str(int(s)) for s in shape)
        raise ACATInputError(
            f"the header declares {size} voxels ({needed / 2**30:.1f} GiB to read), more than this computer's "
            f"memory allows ({total / 2**30:.1f} GiB installed); the header is damaged or the scan is too large",
            path)


def check_geometry(spacing_mm, origin_mm, path: Path | str) -> None:
    """Refuse voxel sizes or positions that no CT scanner produces (a damaged or mis-scaled header)."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    lo, hi = SPACING_RANGE_MM
    if np.any(spacing < lo) or np.any(spacing > hi):
        shown = ", ".join(f"{v:.4g}" for v in spacing)
        raise ACATInputError(f"implausible voxel spacing ({shown} mm; a CT voxel is {lo:g} to {hi:g} mm); "
                             "the header is damaged", path)
    if np.any(np.abs(np.asarray(origin_mm, dtype=np.float64)) > MAX_COORDINATE_MM):
        raise ACATInputError("implausible patient position (more than 1 km from the scanner's origin); "
                             "the header is damaged", path)
