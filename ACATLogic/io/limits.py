"""Sanity limits that stop a damaged header from costing all memory or yielding absurd geometry.

A header is a few bytes that can declare anything: 65535 x 65535 pixels, 2000^3 voxels in a 1 kB
gzip stream, a pixel spacing of 1e308 mm. Readers check what a header declares against these limits
*before* allocating or decoding, so such a file is refused in milliseconds with one clear line
instead of exhausting memory (a MemoryError or the kernel's OOM killer) or running for minutes.

The memory budget: what one reader may allocate for one volume (its stored copy, its float32 copy,
the decoded bytes of a compressed file). By default the smaller of `DEFAULT_BUDGET_GIB` and half the
computer's memory; ``acat ... --max-memory-gb N`` or the environment variable ``ACAT_MAX_MEMORY_GB``
raise (or lower) it for scans that are really that large.
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
#: DICOM RLE (PS3.5 G.3.1) expands at most 128 bytes from 2 (a run of 128 repeats of one byte), per
#: segment, plus its 64-byte header per frame: 64:1.
RLE_MAX_RATIO = 64
#: A volume may take at most this share of the computer's physical memory as float32 plus its
#: stored copy; the rest is for the model and the explanation.
MEMORY_FRACTION = 0.5
#: The default budget, whatever the computer: 8 GiB holds a 512 x 512 x 5000 CT as float32 plus its
#: 16-bit stored copy (a large scan is 512 x 512 x 1000: 1.5 GiB).
DEFAULT_BUDGET_GIB = 8.0
#: The environment variable that sets the budget in GiB (``--max-memory-gb`` sets it for one command).
BUDGET_ENV = "ACAT_MAX_MEMORY_GB"
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


def parse_budget_gib(text: str, source: str = BUDGET_ENV) -> float:
    """A budget in GiB from text ("16", "0.5"); `ACATInputError` for anything that is not a positive number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and 0 < value <= 1 << 20):
        raise ACATInputError(f"{source} must be a memory size in GiB greater than 0 (e.g. 16), not {text!r}")
    return value


def memory_budget_bytes() -> int:
    """The memory budget in bytes (see the module docstring)."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        return int(parse_budget_gib(text) * 2**30)
    total = physical_memory_bytes()
    default = int(DEFAULT_BUDGET_GIB * 2**30)
    return default if total is None else min(default, int(MEMORY_FRACTION * total))


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


def over_budget(needed: int, what: str, path: Path | str) -> ACATInputError:
    """The one message for any reader asked to allocate more than the budget."""
    budget = memory_budget_bytes()
    return ACATInputError(
        f"{what} would need {_gib(needed)} of memory, more than ACAT's budget of {_gib(budget)}; the header "
        f"is damaged, or the scan is really that large: then raise the budget with --max-memory-gb or "
        f"{BUDGET_ENV}", path)


def check_bytes(needed: int, what: str, path: Path | str) -> None:
    """Refuse to allocate or decode ``needed`` bytes when they are over the memory budget."""
    if int(needed) > memory_budget_bytes():
        raise over_budget(int(needed), what, path)


def check_memory(shape: tuple[int, ...], stored_bytes_per_voxel: int, path: Path | str) -> None:
    """Refuse a volume of ``shape`` whose float32 copy plus stored copy would be over the memory budget."""
    n_voxels = int(np.prod([int(s) for s in shape], dtype=object))
    needed = n_voxels * (4 + int(stored_bytes_per_voxel))
    size = " x ".join(str(int(s)) for s in shape)
    check_bytes(needed, f"the header declares {size} voxels, which", path)


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
