"""Real CT scans that ship inside packages, fetched by package name and cached; never committed.

* Debian ``invesalius-examples``: Cranium, a real adult head CT (108 x 256 x 256, int16 HU,
  0.957 x 0.957 x 1.5 mm). Fetched with ``apt-get download`` (no root needed once the package lists
  exist) and unpacked with ``dpkg -x`` into the cache. Licence: GPL-2 (Debian's copyright file).
* PyPI ``slicerio``: Slicer's CTChest sample (NRRD) with its lung segmentation. Licence: MIT.
* PyPI ``pydicom-data`` (test extra): real CT slices in many transfer syntaxes and broken files.

The cache is ``$ACAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/acat``, else ``~/.cache/acat``.

Command line: ``python -m ACATData.sample_data fetch`` (what ``make test`` runs first), and
``python -m ACATData.sample_data demo-series OUT_DIR`` (the head CT as a DICOM series).
"""

from __future__ import annotations

import argparse
import io
import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from ACATLogic.cache import cache_dir
from ACATLogic.errors import ACATInputError
from ACATLogic.volume import CTVolume, to_canonical

CRANIUM_PACKAGE = "invesalius-examples"
CRANIUM_MEMBER = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"


class SampleDataUnavailable(RuntimeError):
    """A package that holds sample data could not be fetched; the message says how to fix it."""


def debian_package_root(package: str) -> Path:
    """Download (``apt-get download``) and unpack (``dpkg -x``) a Debian package into the cache."""
    target = cache_dir() / "debian" / package
    if (target / ".complete").exists():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise SampleDataUnavailable(f"apt-get/dpkg not found: the Debian package {package} cannot be fetched here")
    work = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=target.parent if target.parent.exists()
                                 else cache_dir()))
    try:
        run = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True)
        if run.returncode != 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            run = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True)
        debs = list(work.glob(f"{package}_*.deb"))
        if run.returncode != 0 or not debs:
            hint = "run 'sudo apt-get update' once, then try again" if os.geteuid() != 0 else \
                "check that Debian's package archive is reachable"
            raise SampleDataUnavailable(
                f"could not download the Debian package {package} ({run.stderr.strip().splitlines()[-1:] or 'no output'}); {hint}")
        unpacked = work / "root"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(unpacked)], check=True, capture_output=True)
        (unpacked / ".complete").write_text(debs[0].name + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def cranium_inv3_path() -> Path:
    """Cranium.inv3 from Debian's invesalius-examples (fetched on first use)."""
    return debian_package_root(CRANIUM_PACKAGE) / CRANIUM_MEMBER


def load_cranium() -> CTVolume:
    """The real Cranium head CT as a `CTVolume` in canonical LPS layout (i->L, j->P, k->S).

    InVesalius stores (slice, row, column) int16 HU with slices from skull base to vertex and the
    face at high row indices. The file has no left/right marker; we take columns to run towards the
    patient's left, as in a standard axial DICOM image (InVesalius flips rows only). The volume is
    centred on LPS (0, 0, 0).
    """
    with tarfile.open(cranium_inv3_path(), "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        plist = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        matrix = plist["matrix"]
        raw = tar.extractfile(members[matrix["filename"]]).read()
    shape = tuple(int(s) for s in matrix["shape"])
    voxels = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]).newbyteorder("<")).reshape(shape)
    spacing = np.array([float(s) for s in plist["spacing"]])
    # As stored: i -> patient left, j -> anterior (face at high rows), k -> superior.
    direction = np.diag([1.0, -1.0, 1.0])
    size = np.array([shape[2], shape[1], shape[0]], dtype=np.float64)
    centre_offset = direction @ (spacing * (size - 1) / 2.0)
    stored = CTVolume(voxels.astype(np.float32), spacing, -centre_offset, direction,
                      {"modality": str(plist.get("modality", "CT")), "source_format": "InVesalius"})
    canonical, _ = to_canonical(stored)
    return canonical


def ctchest_path() -> Path:
    """Slicer's CTChest sample NRRD from the slicerio package."""
    path = Path(str(resources.files("slicerio") / "data" / "CTChest4.nrrd"))
    if not path.exists():
        raise SampleDataUnavailable("slicerio does not contain data/CTChest4.nrrd; reinstall slicerio")
    return path


def ctchest_segmentation_path() -> Path:
    """Slicer's CTChest lung/rib segmentation (.seg.nrrd) from the slicerio package."""
    return ctchest_path().with_name("Segmentation.seg.nrrd")


def pydicom_test_file(name: str) -> Path:
    """A file from pydicom's test files or the pydicom-data package (never downloaded)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if found is None:
        raise SampleDataUnavailable(f"{name} not found: install the 'pydicom-data' package (pip install '.[test]')")
    return Path(found)


def pydicom_test_dir(name: str) -> Path:
    """A folder among pydicom's test files (e.g. 'dicomdirtests')."""
    import pydicom.data

    path = Path(pydicom.data.get_testdata_file("CT_small.dcm", download=False)).parent / name
    if not path.is_dir():
        raise SampleDataUnavailable(f"pydicom's test folder {name} not found")
    return path


def write_cranium_series(out_dir: Path, *, overwrite: bool = False) -> Path:
    """The real Cranium head CT written as a multi-file CT DICOM series in ``out_dir``."""
    from ACATLogic.io import write_dicom_series

    volume = load_cranium()
    volume.metadata.update(slice_thickness_mm=1.5, series_description="Cranium head CT (InVesalius sample)")
    write_dicom_series(volume, out_dir, series_description="Cranium head CT (InVesalius sample)",
                       overwrite=overwrite)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ACATData.sample_data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch and cache every sample data package")
    demo = sub.add_parser("demo-series", help="write the Cranium head CT as a DICOM series")
    demo.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"Cranium head CT: {cranium_inv3_path()}")
            print(f"CTChest:         {ctchest_path()}")
            try:
                print(f"pydicom-data:    {pydicom_test_file('693_J2KR.dcm').parent}")
            except SampleDataUnavailable as exc:
                print(f"pydicom-data:    not installed ({exc})")
        else:
            write_cranium_series(args.out_dir, overwrite=True)
            print(f"wrote {args.out_dir}")
    except (SampleDataUnavailable, ACATInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
