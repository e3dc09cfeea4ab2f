"""Reading a DICOM series: `ACATLogic.io.read_volume` vs SimpleITK's ImageSeriesReader, same files, same run.

Both produce the volume as a numpy array: ours float32 HU with LPS geometry (header scan, series choice,
slice sorting along the normal, rescale), SimpleITK's as it stores it (GDCM file names sorted, then
``Execute`` and ``GetArrayViewFromImage``). Runs alternate, so the page cache is equally warm for both.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ACATLogic.io import read_volume

from stats import summary


def sitk_read(folder: str) -> tuple[sitk.Image, np.ndarray]:
    """(the image, a numpy view of its voxels): the view is valid only while the image lives."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    image = reader.Execute()
    return image, sitk.GetArrayViewFromImage(image)


def run_reading(case: dict, *, repeats: int, log: Callable[[str], None] = print) -> dict:
    log(f"bench: reading {case['name']} ({case['size_ijk'][2]} slices): ours vs SimpleITK")
    ours, theirs = [], []
    volume = image = array = None
    read_volume(case["path"])  # the page cache: both read from memory
    for _ in range(max(repeats, 7)):  # a read takes 0.3 s: more runs make the median steady
        # each reader starts with the previous 300 MB result freed, as a fresh process would: holding it
        # while the next one is allocated made single runs of either reader up to 3x slower (page faults)
        volume = image = array = None
        gc.collect()
        t0 = time.perf_counter()
        volume = read_volume(case["path"])
        ours.append(time.perf_counter() - t0)
        kept, volume = volume, None
        gc.collect()
        t0 = time.perf_counter()
        image, array = sitk_read(case["path"])
        theirs.append(time.perf_counter() - t0)
        volume = kept
    same = bool(array.shape == volume.voxels_hu.shape and np.array_equal(array.astype(np.float32), volume.voxels_hu))
    return {"case": case["name"], "slices": case["size_ijk"][2], "ours_s": summary(ours), "sitk_s": summary(theirs),
            "ratio": summary([o / t for o, t in zip(ours, theirs)]), "same_voxels": same}
