"""The benchmark's CT cases, generated once into a cache folder as real CT DICOM series.

* ``head40``: the phantom pipeline's brain case (the real Cranium head CT with a simulated left MCA
  infarct, `ACATData.phantom`), generated at Cranium's own resolution (0.96 mm, 1.5 mm slices), resampled
  with SimpleITK (linear) to 512 x 512 in-plane and 40 slices of 5 mm centred on the head (air beyond).
* ``head300``: the same case resampled to 512 x 512 x 300 thin slices over the head's extent (0.54 mm).
* ``chest``: Slicer's CTChest sample (PyPI slicerio, `ACATData.sample_data`), resampled to 512 x 512
  in-plane, its own 34 slices, for the lung bundle.

Each is written by the project's own DICOM writer (`ACATLogic.io.write_dicom_series`, int16 HU) and read
back by the benchmark with `ACATLogic.io.read_volume`, as a user's series would be. ``--quick`` makes
small versions (128 x 128 in-plane, few slices) for the test.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from ACATLogic.io import read_volume, write_dicom_series
from ACATLogic.io.atomic import atomic_path
from ACATLogic.io.itk_files import to_sitk
from ACATLogic.volume import CTVolume

AIR_HU = -1024.0


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """name, source ("brain_phantom" or "ctchest"), in-plane size, slices, slice spacing (None: the
    source's extent divided into ``slices``), and the bundle that explains it."""

    name: str
    source: str
    size: int
    slices: Optional[int]  # None: the source's own slices
    spacing_k_mm: Optional[float]
    bundle: str


def case_specs(quick: bool) -> list[CaseSpec]:
    if quick:
        return [CaseSpec("head12", "brain_phantom", 128, 12, 5.0, "brain-stroke-phantom"),
                CaseSpec("head24thin", "brain_phantom", 128, 24, None, "brain-stroke-phantom"),
                CaseSpec("chest", "ctchest", 128, None, None, "lung-covid-phantom")]
    return [CaseSpec("head40", "brain_phantom", 512, 40, 5.0, "brain-stroke-phantom"),
            CaseSpec("head300", "brain_phantom", 512, 300, None, "brain-stroke-phantom"),
            CaseSpec("chest", "ctchest", 512, None, None, "lung-covid-phantom")]


def brain_phantom_source(work: Path, fine: bool = True) -> CTVolume:
    """The demo brain case (left MCA lesion, `ACATData.phantom.demo`) at Cranium's own resolution
    (``fine``), or at the demo's (about 1.1 mm, 5 mm slices: half the time, for ``--quick``)."""
    from ACATData.phantom.brain import BrainParams
    from ACATData.phantom.build import build
    from ACATData.phantom.demo import DEMO_SEED, SIDES, demo_params
    from ACATData.phantom.io import read_manifest

    params = demo_params(dataclasses.replace(BrainParams(), slice_spacing_mm=(1.5,), inplane_spacing_mm=(0.96, 0.96))
                         if fine else None)
    proportions = [0.0] * 4
    proportions[SIDES["left"]] = 1.0
    manifest = build("brain", 1, DEMO_SEED, work, "nrrd", params, workers=1, proportions=proportions,
                     command="Testing/benchmarks/cases.py: the demo case" + (" at 0.96 x 0.96 x 1.5 mm" if fine else ""))
    return read_volume(Path(manifest).parent / read_manifest(manifest)[0]["image"])


def ctchest_source() -> CTVolume:
    from ACATData.sample_data import ctchest_path

    return read_volume(ctchest_path())


def resample(volume: CTVolume, size: int, slices: Optional[int], spacing_k_mm: Optional[float]) -> CTVolume:
    """Linear resampling onto ``size`` x ``size`` in-plane over the same in-plane extent, and ``slices``
    slices of ``spacing_k_mm`` centred on the volume (or over its extent); integer HU, air outside."""
    image = to_sitk(volume)
    n = np.array(image.GetSize(), float)
    spacing = np.array(image.GetSpacing())
    extent = n * spacing  # voxel edge to voxel edge
    k = int(slices or n[2])
    new_spacing = np.array([extent[0] / size, extent[1] / size, spacing_k_mm or extent[2] / k])
    new_size = np.array([size, size, k])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    centre = np.array(image.GetOrigin()) + direction @ ((n - 1) * spacing / 2)
    origin = centre - direction @ ((new_size - 1) * new_spacing / 2)
    reference = sitk.Image([int(v) for v in new_size], sitk.sitkFloat32)
    reference.SetSpacing(tuple(float(v) for v in new_spacing))
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(tuple(float(v) for v in origin))
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, AIR_HU,
                        sitk.sitkFloat32)
    voxels = np.rint(sitk.GetArrayFromImage(out)).astype(np.float32)
    return CTVolume(voxels, tuple(new_spacing), tuple(origin), direction, {"modality": "CT", "kvp": 120.0})


def ensure_cases(root: Path, quick: bool, log: Callable[[str], None] = print) -> dict:
    """The cases under ``root`` (generated when missing): name -> {"path", "bundle", "size_ijk", ...}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / "cases.json"
    specs = case_specs(quick)
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    missing = [s for s in specs if index.get(s.name, {}).get("spec") != dataclasses.asdict(s)
               or not (root / s.name / "image").is_dir()]
    sources: dict[str, CTVolume] = {}
    for spec in missing:
        if spec.source not in sources:
            log(f"bench: generating the {spec.source} source case (once; cached in {root})")
            if spec.source == "brain_phantom":
                work = Path(tempfile.mkdtemp(prefix=".phantom.", dir=root))
                try:
                    sources[spec.source] = brain_phantom_source(work, fine=not quick)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            else:
                sources[spec.source] = ctchest_source()
        volume = resample(sources[spec.source], spec.size, spec.slices, spec.spacing_k_mm)
        log(f"bench: writing {spec.name}: {' x '.join(map(str, volume.size_ijk))} voxels as a DICOM series")
        write_dicom_series(volume, root / spec.name / "image", series_description=f"SIMULATED benchmark {spec.name}",
                           overwrite=True)
        index[spec.name] = {"spec": dataclasses.asdict(spec), "path": str(root / spec.name / "image"),
                            "bundle": spec.bundle, "size_ijk": list(volume.size_ijk),
                            "spacing_mm": [round(float(v), 4) for v in volume.spacing_mm], "source": spec.source}
        with atomic_path(index_path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(index, indent=1) + "\n")
    return {s.name: index[s.name] for s in specs}
