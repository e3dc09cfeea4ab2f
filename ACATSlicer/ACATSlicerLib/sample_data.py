"""The self-test case as Sample Data: a user loads it from Slicer's Sample Data module and presses Explain.

Slicer's Sample Data module downloads a registered source's ``uris`` into its cache, checks the
SHA256 checksum and loads the file with Slicer's own readers. The case here is generated
(`selftest_case.syntheticHeadCT`: a head CT with a 70 HU blob in the patient's LEFT hemisphere, and
that blob as a lesion labelmap for the localisation score), written as NRRD into a local folder and
registered with ``file://`` URIs - nothing is downloaded from the network, and the checksum makes a
stale cached copy be replaced. The module registers it at startup (``registerSampleData`` in
ACATSlicer.py, the scripted-module template's pattern); this file has no Qt and is tested headless.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from .nrrd_exchange import writeNrrd
from .selftest_case import LESION_HU, syntheticHeadCT

CATEGORY = "ACAT"
CT_SAMPLE, LESION_SAMPLE = "ACATSelfTestHeadCT", "ACATSelfTestLesion"
CT_FILE, LESION_FILE = "ACAT-selftest-head-CT.nrrd", "ACAT-selftest-lesion.nrrd"
CT_NODE, LESION_NODE = "ACAT self-test head CT", "ACAT self-test lesion"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def writeSelfTestCase(folder) -> tuple[Path, Path]:
    """(CT file, lesion labelmap file) of the generated case in ``folder`` (rewritten each time: ms)."""
    voxels, ijkToRas = syntheticHeadCT()
    folder = Path(folder)
    ct = writeNrrd(voxels.astype(np.float32), ijkToRas, folder / CT_FILE)
    lesion = writeNrrd((voxels == LESION_HU).astype(np.uint8), ijkToRas, folder / LESION_FILE)
    return ct, lesion


def sampleDataSources(folder, thumbnailFileName: Optional[str] = None) -> list[dict]:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for the CT
    and for its lesion labelmap, after writing both into ``folder``."""
    ct, lesion = writeSelfTestCase(folder)
    common = {"category": CATEGORY, "thumbnailFileName": thumbnailFileName, "loadFileType": "VolumeFile"}
    return [
        dict(common, sampleName=CT_SAMPLE, uris=[ct.resolve().as_uri()], fileNames=[CT_FILE], nodeNames=[CT_NODE],
             checksums=[f"SHA256:{sha256(ct)}"], loadFileProperties={}),
        dict(common, sampleName=LESION_SAMPLE, uris=[lesion.resolve().as_uri()], fileNames=[LESION_FILE],
             nodeNames=[LESION_NODE], checksums=[f"SHA256:{sha256(lesion)}"], loadFileProperties={"labelmap": True}),
    ]
