"""The bad-input corpus (issue 9): real broken files that packages ship, plus inputs we construct.

Each case builds its input under a scratch folder, runs ``acat info --json INPUT`` (or ``acat explain
INPUT --out OUT``) and judges the run. The script below runs the installed ``acat`` in a subprocess for
every case, with a time limit; the tests do so for the `END_TO_END` cases and call ``acat``'s ``main()``
in their own process for the others (the same code and the same judge, with stdout and stderr captured
down to the file descriptors, without a Python start-up per case). Expected is one of:

* a correct result: exit 0 and the geometry the case knows independently (size, spacing, origin,
  direction; from the volume that was written, or from SimpleITK's own GDCM/NRRD readers);
* a clear error: exit 2 and exactly one line on stderr, ``acat: error: PATH: problem``, that names
  the file or folder and says the expected problem.

Whatever the expectation, a run must never print a traceback, never run past its time limit, never
change the input folder (every name, byte and link is compared before and after), never write into
its working folder, and a failed ``explain`` must leave no output, not even a partial one.

Used by ``Testing/test_bad_input_corpus.py`` (``make test``) and as a script that prints one line
per case and the counts quoted in docs/RELIABILITY.md:

    .venv/bin/python Testing/bad_input_corpus.py               # a line per case, then the counts
    .venv/bin/python Testing/bad_input_corpus.py --markdown    # the docs table, then the counts
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pydicom
import SimpleITK as sitk

from ACATData import sample_data
from ACATLogic import CTVolume, write_dicom_series, write_volume
from ACATLogic.io.itk_files import write_itk_file

INFO_TIMEOUT_S = 120  # far above the slowest case (2000 slices: ~10 s on a busy 2-core machine)
EXPLAIN_TIMEOUT_S = 300
SOURCES = ("pydicom", "pydicom-data", "slicerio", "constructed")


# ------------------------------------------------------------------------------------------------
# What a case is
# ------------------------------------------------------------------------------------------------
@dataclass
class Built:
    """A case's input on disk and what it must give.

    ``geometry``: for a case that must succeed, the `acat info --json` fields it must report.
    ``names``: for a case that must fail, the path its one-line error must name (default: the input).
    """

    input: Union[Path, list[Path]]
    geometry: Optional[dict] = None
    names: Optional[Path] = None


#: The cases the tests run as the installed ``acat`` in a subprocess too: the command's exit code and one-line
#: contract end to end (refusals and reads of DICOM and of a missing path, both ``acat explain``s), and the
#: inputs that once hung or crashed the interpreter (named pipes, symlink loops, ITK's NRRD and NIfTI
#: readers, the gzip bomb), which only a separate process with a time limit can guard.
END_TO_END = {"pkg-mr", "pkg-small-ct-series", "missing-path", "explain-ok", "explain-truncated-slice",
              "fifo-in-series", "fifo-alone", "nhdr-data-fifo", "symlink-loop-dir", "symlink-loop-file",
              "nrrd-ascii-binary", "nrrd-gzip-bomb", "nifti-bad-dim", "nifti-sform-inf", "nrrd-long-field"}


@dataclass(frozen=True)
class Case:
    id: str
    source: str  # one of SOURCES: the package that ships the file, or "constructed"
    what: str  # the input, for the table
    behaviour: str  # the expected behaviour, for the table
    build: Callable[["Corpus", Path], Built]
    ok: bool  # True: a correct result; False: a clear error matching ``match``
    match: str = ""
    command: str = "info"  # or "explain"
    also: str = ""  # an in-process test of the same input, where one exists

    @property
    def end_to_end(self) -> bool:
        return self.id in END_TO_END


@dataclass
class Outcome:
    case: Case
    verdict: str  # "correct", "clear error", "crash", "hang", "wrong"
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    returncode: Optional[int] = None
    stderr: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict == ("correct" if self.case.ok else "clear error")

    def report(self) -> str:
        details = "".join(f"\n  - {p}" for p in self.problems)
        stderr = f"\n  stderr: {self.stderr[-2000:]}" if self.problems else ""
        return f"{self.case.id}: {self.verdict} (exit {self.returncode}, {self.seconds:.1f} s){details}{stderr}"


# ------------------------------------------------------------------------------------------------
# Shared real data
# ------------------------------------------------------------------------------------------------
def geometry_of(volume: CTVolume) -> dict:
    return {"size_ijk": list(volume.size_ijk), "spacing_mm": volume.spacing_mm.tolist(),
            "origin_lps_mm": volume.origin_mm.tolist(), "direction_lps": volume.direction.tolist()}


def sitk_geometry(image: sitk.Image) -> dict:
    return {"size_ijk": list(image.GetSize()), "spacing_mm": list(image.GetSpacing()),
            "origin_lps_mm": list(image.GetOrigin()),
            "direction_lps": np.array(image.GetDirection()).reshape(3, 3).tolist()}


def sitk_series_geometry(folder: Path) -> dict:
    """The geometry that SimpleITK's GDCM series reader (an independent implementation) finds."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk_geometry(reader.Execute())


def sitk_file_geometry(path: Path) -> dict:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {"size_ijk": list(reader.GetSize()), "spacing_mm": list(reader.GetSpacing()),
            "origin_lps_mm": list(reader.GetOrigin()),
            "direction_lps": np.array(reader.GetDirection()).reshape(3, 3).tolist()}


class Corpus:
    """Scratch space plus the real data the cases are built from (loaded once, on first use)."""

    def __init__(self, root: Path, *, cranium: Optional[CTVolume] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if cranium is not None:
            self.__dict__["cranium"] = cranium

    def dir(self, name: str) -> Path:
        path = self.root / "cases" / name
        path.mkdir(parents=True)
        return path

    @cached_property
    def cranium(self) -> CTVolume:
        """The real Cranium head CT (Debian invesalius-examples)."""
        return sample_data.load_cranium()

    @staticmethod
    def dcm(name: str) -> Path:
        return sample_data.pydicom_test_file(name)

    @cached_property
    def dicomdirtests(self) -> Path:
        return sample_data.pydicom_test_dir("dicomdirtests")

    @cached_property
    def small_head(self) -> CTVolume:
        """12 axial slices of the real head CT at a quarter of the in-plane resolution (64 x 64)."""
        c = self.cranium
        spacing = c.spacing_mm * np.array([4.0, 4.0, 1.0])
        return CTVolume(c.voxels_hu[40:52, ::4, ::4].copy(), spacing, c.index_to_lps([0, 0, 40]), c.direction,
                        dict(c.metadata))

    @cached_property
    def small_head_series(self) -> Path:
        folder = self.root / "shared" / "small_head"
        write_dicom_series(self.small_head, folder, series_description="Cranium head CT (small)")
        return folder

    def small_head_copy(self, dest: Path) -> Path:
        shutil.copytree(self.small_head_series, dest)
        return dest

    @cached_property
    def bundle(self) -> Path:
        """Tiny random-weight models of the real architectures (plumbing only, never accuracy)."""
        from bundles import make_random_bundle

        return make_random_bundle(self.root / "shared" / "bundle", steps=1)


def series_files(folder: Path) -> list[Path]:
    """A series' files in slice order (by position along the normal)."""
    def along(p):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        return float(np.array(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))
    return sorted((p for p in folder.iterdir() if p.is_file()), key=along)


def edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)
    return path


def series_from_slice(src: Path, folder: Path, n: int = 3, step_mm: float = 5.0) -> Path:
    """n copies of one real slice stacked along its normal: a real encoded series."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        ds = pydicom.dcmread(src)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        ipp = np.array(ds.ImagePositionPatient, dtype=float) + k * step_mm * np.cross(iop[:3], iop[3:])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{k}.dcm")
    return folder


def with_voxels(volume: CTVolume, voxels: np.ndarray) -> CTVolume:
    return CTVolume(voxels, volume.spacing_mm, volume.origin_mm, volume.direction)


NRRD_HEAD = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: %d %d %d\nencoding: %s\nendian: little\n"
             b"space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n")


# ------------------------------------------------------------------------------------------------
# The builders: real files from packages
# ------------------------------------------------------------------------------------------------
def package_file(name: str) -> Callable[[Corpus, Path], Built]:
    return lambda c, d: Built(c.dcm(name))


def package_dir(*parts: str, geometry: bool = False) -> Callable[[Corpus, Path], Built]:
    def build(c: Corpus, d: Path) -> Built:
        folder = c.dicomdirtests.joinpath(*parts)
        return Built(folder, sitk_series_geometry(folder) if geometry else None)
    return build


def build_dicomdir_file(c: Corpus, d: Path) -> Built:
    return Built(c.dicomdirtests / "DICOMDIR", sitk_series_geometry(c.dicomdirtests / "98892001" / "CT5N"))


def build_whole_dicomdirtests(c: Corpus, d: Path) -> Built:
    return Built(c.dicomdirtests, sitk_series_geometry(c.dicomdirtests / "98892001" / "CT5N"))


def build_enhanced_ct(c: Corpus, d: Path) -> Built:
    path = c.dcm("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    spacing = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    # IOP (-1,0,0 / 0,1,0): the slice normal is -z, so the slice with the higher z comes first
    return Built(path, {"size_ijk": [512, 512, 2], "spacing_mm": [spacing[1], spacing[0], abs(z[0] - z[1])],
                        "origin_lps_mm": [99.5, -301.5, max(z)], "direction_lps": np.diag([-1.0, 1.0, -1.0]).tolist(),
                        "warning": "RescaleType"})


def build_slice_series(name: str) -> Callable[[Corpus, Path], Built]:
    def build(c: Corpus, d: Path) -> Built:
        folder = series_from_slice(c.dcm(name), d / "series")
        return Built(folder, sitk_series_geometry(folder))
    return build


def build_truncated_ct_slice(c: Corpus, d: Path) -> Built:
    folder = series_from_slice(c.dcm("693_UNCR.dcm"), d / "series")
    victim = folder / "1.dcm"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # cut inside the pixel data
    return Built(folder, names=victim)


def build_truncated_ct_header(c: Corpus, d: Path) -> Built:
    folder = series_from_slice(c.dcm("693_UNCR.dcm"), d / "series")
    victim = folder / "2.dcm"
    victim.write_bytes(victim.read_bytes()[:700])  # cut inside the header
    return Built(folder, names=victim)


def build_ctchest(c: Corpus, d: Path) -> Built:
    path = sample_data.ctchest_path()
    return Built(path, sitk_file_geometry(path))


def slicerio_file(name: str) -> Callable[[Corpus, Path], Built]:
    return lambda c, d: Built(sample_data.ctchest_path().with_name(name))


# ------------------------------------------------------------------------------------------------
# The builders: constructed inputs (most from the real head CT)
# ------------------------------------------------------------------------------------------------
def build_small_head(c: Corpus, d: Path) -> Built:
    return Built(c.small_head_copy(d / "series"), geometry_of(c.small_head))


def build_mixed_series(c: Corpus, d: Path) -> Built:
    folder = d / "study"
    c.small_head_copy(folder / "head")
    shutil.copytree(c.dicomdirtests / "98892003" / "MR700", folder / "mr")
    (folder / "single").mkdir()
    shutil.copy(c.dcm("CT_small.dcm"), folder / "single" / "CT_small.dcm")
    shutil.copy(c.dicomdirtests / "DICOMDIR", folder / "DICOMDIR")
    (folder / "notes.txt").write_text("report to follow\n")
    (folder / "empty.dcm").write_bytes(b"")
    return Built(folder, dict(geometry_of(c.small_head), selection="the largest CT series (12 images) of 3 series"))


def build_duplicate_copy(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    shutil.copy(series_files(folder)[4], folder / "copy_of_slice_4.dcm")
    return Built(folder, dict(geometry_of(c.small_head), warning="1 duplicate copies of the same image"))


def build_duplicate_position(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    twin = folder / "second_acquisition.dcm"
    shutil.copy(series_files(folder)[4], twin)
    edit(twin, lambda ds: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid()))
    return Built(folder)


def build_mixed_orientation(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    victim = series_files(folder)[5]
    edit(victim, lambda ds: setattr(ds, "ImageOrientationPatient", ["0", "1", "0", "0", "0", "-1"]))  # sagittal
    return Built(folder, names=victim)


def build_gantry_tilt(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    drift = 0.25 * c.small_head.spacing_mm[1]  # a quarter row per slice along j: atan(0.957/1.5) = 32.5 deg
    for k, path in enumerate(series_files(folder)):
        def tilt(ds, k=k):
            ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array(ds.ImagePositionPatient, float) + [0, k * drift, 0]]
            ds.GantryDetectorTilt = "32.5"
        edit(path, tilt)
    return Built(folder, dict(geometry_of(c.small_head), warning="gantry tilt of 32.5"))


def build_2000_slices(c: Corpus, d: Path) -> Built:
    cr = c.cranium
    voxels = cr.voxels_hu[np.arange(2000) % cr.voxels_hu.shape[0], ::16, ::16]
    volume = CTVolume(voxels, cr.spacing_mm * np.array([16.0, 16.0, 0.5]), cr.origin_mm, cr.direction)
    write_dicom_series(volume, d / "series")
    return Built(d / "series", dict(geometry_of(volume), hu=(float(voxels.min()), float(voxels.max()))))


def build_one_slice_dicom(c: Corpus, d: Path) -> Built:
    (d / "series").mkdir()
    one = shutil.copy(series_files(c.small_head_series)[6], d / "series" / "only.dcm")
    return Built(d / "series", names=Path(one))


def build_one_slice_nrrd(c: Corpus, d: Path) -> Built:
    h = c.small_head
    return Built(write_volume(CTVolume(h.voxels_hu[:1], h.spacing_mm, h.origin_mm, h.direction), d / "one.nrrd"))


def build_nrrd_with(value: float) -> Callable[[Corpus, Path], Built]:
    def build(c: Corpus, d: Path) -> Built:
        voxels = c.small_head.voxels_hu.copy()
        voxels[3, 10, 10:14] = value
        return Built(write_volume(with_voxels(c.small_head, voxels), d / "scan.nrrd"))
    return build


def build_unsigned_rescale(c: Corpus, d: Path) -> Built:
    """uint16 storage with intercept -1024 and a pixel at 65535: HU 64511, never a wrapped int16."""
    folder = c.small_head_copy(d / "series")
    for k, path in enumerate(series_files(folder)):
        def to_unsigned(ds, k=k):
            stored = (ds.pixel_array.astype(np.int32) + 1024).astype(np.uint16)
            if k == 0:
                stored[0, 0] = 65535
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = "-1024"
            ds.PixelData = stored.tobytes()
        edit(path, to_unsigned)
    h = c.small_head
    return Built(folder, dict(geometry_of(h), hu=(float(h.voxels_hu.min()), 64511.0)))


def build_rescale(slope: str) -> Callable[[Corpus, Path], Built]:
    def build(c: Corpus, d: Path) -> Built:
        folder = c.small_head_copy(d / "series")
        for path in series_files(folder):
            edit(path, lambda ds: setattr(ds, "RescaleSlope", slope))
        return Built(folder, names=series_files(folder)[0])
    return build


def build_empty_file(c: Corpus, d: Path) -> Built:
    (d / "slice.dcm").write_bytes(b"")
    return Built(d / "slice.dcm")


def build_empty_files(c: Corpus, d: Path) -> Built:
    for name in ("a.dcm", "b.dcm", "c"):
        (d / name).write_bytes(b"")
    return Built(d)


def build_empty_file_in_series(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    (folder / "zz_empty.dcm").write_bytes(b"")
    return Built(folder, geometry_of(c.small_head))


def build_non_dicom_dir(c: Corpus, d: Path) -> Built:
    from PIL import Image

    (d / "notes.txt").write_text("not an image\n")
    (d / "report.json").write_text(json.dumps({"finding": "none"}))
    (d / "script.py").write_text("print('hello')\n")
    (d / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "picture.png")
    return Built(d)


def build_random_dcm(c: Corpus, d: Path) -> Built:
    (d / "slice.dcm").write_bytes(np.random.default_rng(1).bytes(4096))
    return Built(d / "slice.dcm")


def build_empty_dir(c: Corpus, d: Path) -> Built:
    return Built(d)


def build_dir_loop(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "scan" / "series")
    (folder / "loop").symlink_to(folder.parent, target_is_directory=True)  # scan/series/loop -> scan
    return Built(d / "scan", geometry_of(c.small_head))


def build_file_loop(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    (folder / "x.dcm").symlink_to("y.dcm")
    (folder / "y.dcm").symlink_to("x.dcm")
    return Built(folder, names=folder / "x.dcm")


def build_broken_link(c: Corpus, d: Path) -> Built:
    (d / "scan").symlink_to(d / "moved-away")
    return Built(d / "scan")


def build_unicode(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "Schädel CT ünïcode" / "série 1 (Kopf)")
    return Built(folder, geometry_of(c.small_head))


def build_fifo_in_series(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    os.mkfifo(folder / "pipe")
    return Built(folder, geometry_of(c.small_head))


def build_fifo(c: Corpus, d: Path) -> Built:
    os.mkfifo(d / "pipe")
    return Built(d / "pipe")


def build_huge_rows(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    for path in series_files(folder):
        edit(path, lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)))
    return Built(folder)


def build_zero_orientation(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    victim = series_files(folder)[3]
    edit(victim, lambda ds: setattr(ds, "ImageOrientationPatient", ["0"] * 6))
    return Built(folder, names=victim)


def build_huge_spacing(c: Corpus, d: Path) -> Built:
    folder = c.small_head_copy(d / "series")
    for path in series_files(folder):
        edit(path, lambda ds: setattr(ds, "PixelSpacing", ["1e308", "1e308"]))
    return Built(folder)


def build_nrrd_bomb(c: Corpus, d: Path) -> Built:
    (d / "bomb.nrrd").write_bytes(NRRD_HEAD % (2000, 2000, 2000, b"gzip") + bytes(1000))
    return Built(d / "bomb.nrrd")


def build_nrrd_truncated(c: Corpus, d: Path) -> Built:
    path = write_itk_file(c.small_head, d / "scan.nrrd", compress=False)
    path.write_bytes(path.read_bytes()[:-5000])
    return Built(path)


def build_nrrd_ascii_binary(c: Corpus, d: Path) -> Built:
    """Found by `make fuzz`: 'encoding: ascii' over binary voxels overflowed teem's reader (a segfault)."""
    path = write_itk_file(c.small_head, d / "scan.nrrd", compress=False)
    path.write_bytes(path.read_bytes().replace(b"encoding: raw", b"encoding: ascii", 1))
    return Built(path)


def build_nrrd_long_field(c: Corpus, d: Path) -> Built:
    """Found by `make fuzz` (issue 17): a 'space directions' line of 1000 characters that NrrdIO cannot parse
    overflowed the buffer of its error message: a segmentation fault."""
    path = write_itk_file(c.small_head, d / "scan.nrrd", compress=False)
    raw = path.read_bytes()
    start = raw.index(b"space directions: (") + len(b"space directions: (")
    path.write_bytes(raw[:start] + b"7" * 1000 + raw[start:])
    return Built(path)


def build_nhdr_pointing_to(target: str) -> Callable[[Corpus, Path], Built]:
    """A detached header whose 'data file' is a named pipe, or a list of files."""
    def build(c: Corpus, d: Path) -> Built:
        raw = write_itk_file(c.small_head, d / "scan.nrrd", compress=False).read_bytes()
        (d / "scan.nrrd").unlink()
        header = raw[: raw.index(b"\n\n") + 1]
        if target == "fifo":
            os.mkfifo(d / "voxels.raw")
            header += b"data file: voxels.raw\n"
        else:  # one file per slice, listed: a valid multi-file NRRD that ACAT does not read
            data, n = raw[raw.index(b"\n\n") + 2:], c.small_head.voxels_hu.shape[0]
            header += b"data file: LIST\n"
            for k in range(n):
                (d / f"slice{k}.raw").write_bytes(data[k * len(data) // n:(k + 1) * len(data) // n])
                header += f"slice{k}.raw\n".encode()
        (d / "scan.nhdr").write_bytes(header + (b"\n" if target == "fifo" else b""))
        return Built(d / "scan.nhdr", names=d / "voxels.raw" if target == "fifo" else d / "scan.nhdr")
    return build


def build_nrrd_garbage(c: Corpus, d: Path) -> Built:
    (d / "scan.nrrd").write_text("this is not an NRRD header\n")
    return Built(d / "scan.nrrd")


def build_fake_nifti(c: Corpus, d: Path) -> Built:
    (d / "scan.nii.gz").write_bytes(b"not gzip at all")
    return Built(d / "scan.nii.gz")


def build_nifti_bad_dim(c: Corpus, d: Path) -> Built:
    """NIfTI whose dim[1] is 0: the NIfTI C library prints '** ERROR' lines of its own on stderr."""
    path = write_volume(c.small_head, d / "scan.nii")
    raw = bytearray(path.read_bytes())
    raw[42:44] = (0).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    return Built(path)


def build_nifti_sform_inf(c: Corpus, d: Path) -> Built:
    """Found by `make fuzz`: an sform holding infinity made ITK's NIfTI reader loop forever."""
    path = write_volume(c.small_head, d / "scan.nii")
    raw = bytearray(path.read_bytes())
    raw[254:256] = (1).to_bytes(2, "little")  # sform_code: scanner
    raw[320:324] = np.float32(np.inf).tobytes()  # srow_z[2]
    path.write_bytes(bytes(raw))
    return Built(path)


def build_nifti(c: Corpus, d: Path) -> Built:
    return Built(write_volume(c.small_head, d / "scan.nii.gz"), geometry_of(c.small_head))


def build_missing(c: Corpus, d: Path) -> Built:
    return Built(d / "no-such-scan")


# ------------------------------------------------------------------------------------------------
# The corpus
# ------------------------------------------------------------------------------------------------
P, PD, S, C = "pydicom", "pydicom-data", "slicerio", "constructed"
REJ = "test_dicom_rejections.py::"
RD = "test_dicom_read.py::"
IMG = "test_image_files.py::"

CASES: list[Case] = [
    # --- real files that packages ship --------------------------------------------------------------
    Case("pkg-truncated-mr", P, "MR_truncated.dcm (a truncated file)", "refused: MR, not CT",
         package_file("MR_truncated.dcm"), False, r"MR images, not CT", also=REJ + "test_real_truncated_file"),
    Case("pkg-truncated-rtplan", P, "rtplan_truncated.dcm (a truncated non-image object)", "refused: no image",
         package_file("rtplan_truncated.dcm"), False, r"RTPLAN data without images, not CT"),
    Case("pkg-bad-sequence-alone", PD, "bad_sequence.dcm (an invalid sequence), alone", "refused: one slice",
         package_file("bad_sequence.dcm"), False, r"only 1 slice: a volume needs at least 2"),
    Case("pkg-bad-sequence-series", PD, "bad_sequence.dcm stacked into a 3-slice series",
         "read; geometry = SimpleITK/GDCM's", build_slice_series("bad_sequence.dcm"), True,
         also=RD + "test_transfer_syntaxes_decode_like_gdcm"),
    Case("pkg-no-file-meta", P, "no_meta.dcm (missing file meta)", "refused: not DICOM",
         package_file("no_meta.dcm"), False, r"not a DICOM file", also=REJ + "test_no_file_meta_is_not_an_image"),
    Case("pkg-no-meta-explicit", P, "ExplVR_LitEndNoMeta.dcm (no file meta, explicit VR)", "refused: no image",
         package_file("ExplVR_LitEndNoMeta.dcm"), False, r"RTPLAN data without images"),
    Case("pkg-no-meta-group-length", P, "no_meta_group_length.dcm", "refused: damaged header",
         package_file("no_meta_group_length.dcm"), False, r"damaged DICOM header"),
    Case("pkg-j2k-bitdepth-14-in-16", P, "693_J2KI.dcm (JPEG 2000: BitsStored 14, codestream 16 bit) x 3",
         "read; geometry = SimpleITK/GDCM's", build_slice_series("693_J2KI.dcm"), True,
         also=RD + "test_transfer_syntaxes_decode_like_gdcm"),
    Case("pkg-j2k-bitdepth-16-in-14", PD, "693_J2KR.dcm (JPEG 2000: BitsStored 16, codestream 14 bit) x 3",
         "read; geometry = SimpleITK/GDCM's", build_slice_series("693_J2KR.dcm"), True,
         also=RD + "test_jpeg2000_lossless_equals_uncompressed"),
    Case("pkg-j2k-sign-mismatch", P, "J2K_pixelrep_mismatch.dcm (JPEG 2000 unsigned, header signed) x 3",
         "read; geometry = SimpleITK/GDCM's", build_slice_series("J2K_pixelrep_mismatch.dcm"), True,
         also=RD + "test_transfer_syntaxes_decode_like_gdcm"),
    Case("pkg-j2k-too-short", PD, "emri_small_jpeg_2k_lossless_too_short.dcm", "refused: MR, not CT",
         package_file("emri_small_jpeg_2k_lossless_too_short.dcm"), False, r"MR images, not CT"),
    Case("pkg-enhanced-ct", PD, "eCT_Supplemental.dcm (enhanced multi-frame CT)",
         "read; per-frame geometry; RescaleType warning", build_enhanced_ct, True,
         also=RD + "test_enhanced_multiframe_ct"),
    Case("pkg-small-ct-series", P, "dicomdirtests CT5N (a real 5-slice GE CT series)",
         "read; geometry = SimpleITK/GDCM's", package_dir("98892001", "CT5N", geometry=True), True,
         also=RD + "test_real_small_ct_series_from_pydicom_data"),
    Case("pkg-series-gap", P, "dicomdirtests CT2 (a series with a missing-slice gap)", "refused: names the gap",
         package_dir("77654033", "CT2"), False, r"slices are missing or irregular: a gap of 202.5 mm",
         also=RD + "test_real_series_with_missing_slice_gap_is_refused"),
    Case("pkg-dicomdir-tree", P, "the whole dicomdirtests tree (CR, MR, CT, localizers, DICOMDIRs)",
         "read the one usable CT series", build_whole_dicomdirtests, True),
    Case("pkg-dicomdir-file", P, "dicomdirtests/DICOMDIR (the index file)", "read its folder's CT series",
         build_dicomdir_file, True, also=RD + "test_folder_with_several_series_takes_the_largest_ct"),
    Case("pkg-dicomdir-renamed", P, "DICOMDIR-bigEnd (an index file given alone)", "refused: no images in it",
         lambda c, d: Built(c.dicomdirtests / "DICOMDIR-bigEnd"), False, r"a DICOMDIR index file holds no images"),
    Case("pkg-no-pixels", P, "dicomdirtests TINY_ALPHA (images without pixel data)", "refused: no pixel data",
         package_dir("TINY_ALPHA"), False, r"no usable CT series here; found 1 series: no pixel data",
         also=REJ + "test_missing_pixel_data_real_files"),
    Case("pkg-bad-vr", P, "badVR.dcm (NumberOfFrames '1A')", "refused: damaged header (was a crash)",
         package_file("badVR.dcm"), False, r"damaged DICOM header \(NumberOfFrames is not a whole number\)"),
    Case("pkg-one-slice", P, "CT_small.dcm (a 1-slice volume)", "refused: one slice",
         package_file("CT_small.dcm"), False, r"only 1 slice",
         also=REJ + "test_single_slice_where_a_volume_is_required"),
    Case("pkg-mr", P, "MR_small.dcm", "refused: MR, not CT", package_file("MR_small.dcm"), False,
         r"MR images, not CT", also=REJ + "test_non_ct_modality_single_file"),
    Case("pkg-secondary-capture", PD, "SC_rgb.dcm", "refused: a screenshot", package_file("SC_rgb.dcm"), False,
         r"secondary capture", also=REJ + "test_secondary_capture_rgb"),
    Case("pkg-rtdose-multiframe", P, "rtdose.dcm (multi-frame, no functional groups)", "refused: RTDOSE, not CT",
         package_file("rtdose.dcm"), False, r"RTDOSE images, not CT"),
    Case("pkg-seg-frames-mismatch", P, "liver_1frame.dcm (SEG declaring 1 frame, describing 3)",
         "refused: SEG, not CT", package_file("liver_1frame.dcm"), False, r"SEG images, not CT"),
    Case("pkg-un-sequence", P, "UN_sequence.dcm", "refused: damaged header", package_file("UN_sequence.dcm"), False,
         r"damaged DICOM header"),
    Case("pkg-waveform", P, "waveform_ecg.dcm", "refused: no image", package_file("waveform_ecg.dcm"), False,
         r"ECG data without images"),
    Case("pkg-ctchest-nrrd", S, "CTChest4.nrrd (Slicer's sample CT)", "read; geometry = the NRRD header's",
         build_ctchest, True, also=IMG + "test_ctchest_geometry_matches_an_independent_nrrd_parser"),
    Case("pkg-seg-nrrd", S, "Segmentation.seg.nrrd (a label map)", "refused: a segmentation, not CT",
         slicerio_file("Segmentation.seg.nrrd"), False, r"a 3D Slicer segmentation \(labels\), not a CT volume"),
    Case("pkg-seg-nrrd-layers", S, "SegmentationOverlapping.seg.nrrd (4D label layers)", "refused: a segmentation",
         slicerio_file("SegmentationOverlapping.seg.nrrd"), False, r"a 3D Slicer segmentation"),
    Case("pkg-truncated-ct-slice", C, "693_UNCR.dcm x 3, one cut inside its pixel data", "refused: names the file",
         build_truncated_ct_slice, False, r"cannot decode the pixel data",
         also=REJ + "test_truncated_pixel_data_names_the_file"),
    Case("pkg-truncated-ct-header", C, "693_UNCR.dcm x 3, one cut inside its header", "refused: names the file",
         build_truncated_ct_header, False, r"damaged DICOM header",
         also=REJ + "test_truncated_header_is_refused_not_skipped"),
    # --- constructed inputs -------------------------------------------------------------------------
    Case("mixed-series", C, "head CT + MR series + 1-slice CT + DICOMDIR + text + empty file in one folder",
         "read the largest CT series", build_mixed_series, True,
         also=RD + "test_folder_with_several_series_takes_the_largest_ct"),
    Case("duplicate-copy", C, "a series with a second copy of one file", "read; duplicate ignored, warned",
         build_duplicate_copy, True, also=REJ + "test_duplicate_copies_of_the_same_file_are_ignored"),
    Case("duplicate-position", C, "two different images at one slice position", "refused: names both",
         build_duplicate_position, False, r"2 images share one slice position",
         also=REJ + "test_two_images_at_one_position"),
    Case("mixed-orientation", C, "one sagittal slice in an axial series", "refused: names the slice",
         build_mixed_orientation, False, r"slice orientation differs within the series",
         also=REJ + "test_inconsistent_orientation_within_series"),
    Case("gantry-tilt", C, "slice origins drifting along y (32.5 degree gantry tilt)",
         "read; resampled onto a perpendicular grid, warned", build_gantry_tilt, True,
         also=RD + "test_gantry_tilt_is_corrected_onto_a_perpendicular_grid"),
    Case("2000-slices", C, "2000 slices of 16 x 16", "read; geometry exact", build_2000_slices, True),
    Case("one-slice-dicom-folder", C, "a folder holding one slice", "refused: one slice",
         build_one_slice_dicom, False, r"only 1 slice: a volume needs at least 2"),
    Case("one-slice-nrrd", C, "a 1-slice NRRD", "refused: one slice", build_one_slice_nrrd, False,
         r"holds a single slice; a volume needs at least 2"),
    Case("nan-nrrd", C, "NRRD with NaN voxels", "refused: NaN/inf", build_nrrd_with(float("nan")), False,
         r"4 voxels are NaN or infinite", also=IMG + "test_nan_and_infinite_voxels_are_refused"),
    Case("inf-nrrd", C, "NRRD with +inf voxels", "refused: NaN/inf", build_nrrd_with(float("inf")), False,
         r"4 voxels are NaN or infinite", also=IMG + "test_nan_and_infinite_voxels_are_refused"),
    Case("rescale-unsigned", C, "uint16 pixels up to 65535, intercept -1024", "read; HU max 64511 (no int16 wrap)",
         build_unsigned_rescale, True),
    Case("rescale-overflow", C, "RescaleSlope 1e38 (HU beyond float32)", "refused (was a volume of inf)",
         build_rescale("1e38"), False, r"beyond the float32 range"),
    Case("rescale-zero", C, "RescaleSlope 0", "refused: every pixel equal", build_rescale("0"), False,
         r"RescaleSlope is 0"),
    Case("zero-byte-file", C, "a zero-byte .dcm file", "refused: empty", build_empty_file, False,
         r"the file is empty \(0 bytes\)"),
    Case("zero-byte-folder", C, "a folder of zero-byte files", "refused: no DICOM", build_empty_files, False,
         r"no DICOM images found \(3 files looked at: 3 the file is empty\)"),
    Case("zero-byte-in-series", C, "a zero-byte file inside a series", "read; the empty file passed over",
         build_empty_file_in_series, True),
    Case("non-dicom-folder", C, "a folder of text, JSON, PNG, Python and random bytes", "refused: no DICOM",
         build_non_dicom_dir, False, r"no DICOM images found \(5 files looked at: 5 not a DICOM file\)",
         also=REJ + "test_folder_without_dicom"),
    Case("random-bytes-dcm", C, "4 kB of random bytes named slice.dcm", "refused: not DICOM", build_random_dcm,
         False, r"not a DICOM file"),
    Case("empty-folder", C, "an empty folder", "refused: empty", build_empty_dir, False,
         r"the folder is empty", also=REJ + "test_empty_folder"),
    Case("symlink-loop-dir", C, "a folder link pointing to its own parent (a cycle)", "read; the cycle not followed",
         build_dir_loop, True, also=REJ + "test_symlink_loop_and_unicode_path"),
    Case("symlink-loop-file", C, "two file links pointing at each other inside a series", "refused: names the link",
         build_file_loop, False, r"Too many levels of symbolic links"),
    Case("broken-link", C, "a link to a folder that was moved", "refused: a broken link", build_broken_link, False,
         r"no such file or folder \(a broken link\)"),
    Case("unicode-spaces", C, "a series under 'Schädel CT ünïcode/série 1 (Kopf)'", "read; geometry exact",
         build_unicode, True, also=REJ + "test_symlink_loop_and_unicode_path"),
    Case("fifo-in-series", C, "a named pipe inside a series folder", "read; the pipe never opened (no hang)",
         build_fifo_in_series, True),
    Case("fifo-alone", C, "a named pipe given as the input", "refused: not a regular file (no hang)", build_fifo,
         False, r"not a regular file"),
    Case("huge-rows", C, "headers declaring 65535 x 65535 pixels", "refused before decoding: over the memory budget "
         "(was a MemoryError)", build_huge_rows, False, r"12 x 65535 x 65535 voxels, which would need .* GiB of memory, "
         r"more than ACAT's budget"),
    Case("zero-orientation", C, "ImageOrientationPatient all zero in one slice", "refused (was a ValueError)",
         build_zero_orientation, False, r"invalid ImageOrientationPatient"),
    Case("huge-spacing", C, "PixelSpacing 1e308", "refused: implausible spacing", build_huge_spacing, False,
         r"implausible voxel spacing"),
    Case("nrrd-gzip-bomb", C, "NRRD declaring 2000^3 voxels in 1 kB of gzip", "refused at once (was 70 s)",
         build_nrrd_bomb, False, r"more than its 1000 bytes of compressed data can hold"),
    Case("nrrd-truncated", C, "raw NRRD cut short by 5000 bytes", "refused: truncated", build_nrrd_truncated, False,
         r"but the file holds only \d+ bytes of voxel data"),
    Case("nrrd-ascii-binary", C, "raw NRRD relabelled 'encoding: ascii' (found by fuzzing)",
         "refused (was a segfault in ITK's NRRD reader)", build_nrrd_ascii_binary, False,
         r"says the voxels are ASCII text, but the data holds a run of more than 64 characters"),
    Case("nrrd-long-field", C, "NRRD whose 'space directions' holds a 1000-digit number (found by fuzzing)",
         "refused (was a segfault in ITK's NRRD reader)", build_nrrd_long_field, False,
         r"the NRRD header's line 'space directions: \.\.\.' is \d+ characters long"),
    Case("nhdr-data-fifo", C, ".nhdr whose data file is a named pipe", "refused, never opened (no hang)",
         build_nhdr_pointing_to("fifo"), False, r"the NRRD data file is not a regular file"),
    Case("nhdr-data-list", C, ".nhdr with 'data file: LIST'", "refused: one data file only",
         build_nhdr_pointing_to("list"), False, r"lists several data files"),
    Case("nrrd-garbage", C, "a text file named scan.nrrd", "refused: cannot read", build_nrrd_garbage, False,
         r"cannot read the NRRD file", also=IMG + "test_garbage_nrrd_is_one_clear_line"),
    Case("nifti-not-gzip", C, "scan.nii.gz that is not gzip", "refused: cannot read", build_fake_nifti, False,
         r"cannot read the NIfTI file"),
    Case("nifti-bad-dim", C, "NIfTI with dim[1] = 0", "refused in one line (the C library's own stderr lines "
         "were printed too)", build_nifti_bad_dim, False,
         r"cannot read the NIfTI file \(nifti_convert_nhdr2nim: bad dim\[1\]\)"),
    Case("nifti-sform-inf", C, "NIfTI whose sform holds infinity (found by fuzzing)", "refused at once (was a hang "
         "inside ITK)", build_nifti_sform_inf, False, r"orientation \(sform\) holds NaN or infinite values"),
    Case("nifti-ok", C, "the head CT as .nii.gz", "read; geometry within float32", build_nifti, True,
         also=IMG + "test_nifti_round_trip"),
    Case("missing-path", C, "a path that does not exist", "refused: no such file", build_missing, False,
         r"no such file or folder", also=REJ + "test_missing_path"),
    # --- acat explain: a good scan, and bad ones that must leave no output --------------------------
    Case("explain-ok", C, "acat explain on the head CT series", "explained; saliency.nrrd on the input's grid",
         build_small_head, True, command="explain"),
    Case("explain-truncated-slice", C, "acat explain on a series with a truncated slice",
         "refused; no output folder, no partial file", build_truncated_ct_slice, False,
         r"cannot decode the pixel data", command="explain"),
]


# ------------------------------------------------------------------------------------------------
# Running and judging
# ------------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file contents (sha256), link targets, folders, special files.

    Never opens anything but regular files (a pipe would block) and never follows links (a loop).
    """
    out: dict[str, str] = {}
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            key = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[key] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[key] = f"type:{stat.S_IFMT(st.st_mode)}"
    return out


def _watched(built: Built) -> Path:
    """The input folder: the folder given, else the folder holding the file(s)."""
    first = Path(built.input[0] if isinstance(built.input, list) else built.input)
    return first if first.is_dir() and not first.is_symlink() else first.parent


def _close(actual, expected, atol: float) -> bool:
    return np.allclose(np.asarray(actual, float), np.asarray(expected, float), atol=atol, rtol=0)


def _check_geometry(report: dict, expected: dict, atol_mm: float) -> list[str]:
    problems = []
    if report.get("size_ijk") != expected["size_ijk"]:
        problems.append(f"size {report.get('size_ijk')} != {expected['size_ijk']}")
    for key, atol in (("spacing_mm", atol_mm), ("origin_lps_mm", atol_mm), ("direction_lps", 1e-5)):
        if not _close(report.get(key), expected[key], atol):
            problems.append(f"{key} {report.get(key)} != {expected[key]}")
    if "hu" in expected and not _close([report.get("hu_min"), report.get("hu_max")], expected["hu"], 1e-3):
        problems.append(f"HU range {report.get('hu_min')}..{report.get('hu_max')} != {expected['hu']}")
    if "warning" in expected and not any(expected["warning"] in w for w in report.get("warnings", [])):
        problems.append(f"no warning containing {expected['warning']!r}: {report.get('warnings')}")
    if "selection" in expected and expected["selection"] not in report.get("metadata", {}).get("series_selection", ""):
        problems.append(f"series selection {report.get('metadata', {}).get('series_selection')!r}")
    return problems


def run_in_process(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``acat ARGV`` through ``ACATCli.main.main`` in this process, in ``cwd``: its exit code, and what it wrote
    on stdout and stderr - Python's and C libraries' (file descriptors 1 and 2) - as a subprocess would see.
    An exception escaping ``main`` is a crash: exit 1 and its traceback on stderr."""
    import traceback

    from ACATCli.main import main

    py_out, py_err = io.StringIO(), io.StringIO()
    saved, old_cwd = (os.dup(1), os.dup(2)), os.getcwd()
    with tempfile.TemporaryFile() as fd_out, tempfile.TemporaryFile() as fd_err:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.dup2(fd_out.fileno(), 1)
            os.dup2(fd_err.fileno(), 2)
            os.chdir(cwd)
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                try:
                    code = main(argv)
                except SystemExit as exc:  # argparse's usage errors
                    code = exc.code if isinstance(exc.code, int) else 2
                except BaseException:  # noqa: BLE001 - what a subprocess would die of
                    traceback.print_exc()
                    code = 1
        finally:
            os.chdir(old_cwd)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        fd_out.seek(0)
        fd_err.seek(0)
        stdout = py_out.getvalue() + fd_out.read().decode("utf-8", "replace")
        stderr = py_err.getvalue() + fd_err.read().decode("utf-8", "replace")
    return subprocess.CompletedProcess(argv, code, stdout, stderr)


def run_case(case: Case, built: Built, corpus: Corpus, *, in_process: bool = False) -> Outcome:
    """Run ``acat`` on a built case - in a subprocess, or ``in_process`` (`run_in_process`) - and judge it
    (see the module docstring)."""
    acat = Path(sys.executable).with_name("acat")
    inputs = [str(p) for p in (built.input if isinstance(built.input, list) else [built.input])]
    cwd = corpus.root / "cwd" / case.id
    cwd.mkdir(parents=True)
    out = corpus.root / "out" / case.id
    if case.command == "explain":
        args = ["explain", *inputs, "--out", str(out), "--model", str(corpus.bundle), "--method", "gradient",
                "--device", "cpu"]
        timeout = EXPLAIN_TIMEOUT_S
    else:
        args = ["info", "--json", *inputs]
        timeout = INFO_TIMEOUT_S
    watched = _watched(built)
    before = snapshot(watched)
    t0 = time.perf_counter()
    if in_process:
        proc = run_in_process(args, cwd)
    else:
        try:
            proc = subprocess.run([str(acat), *args], cwd=cwd, capture_output=True, text=True, encoding="utf-8",
                                  errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            return Outcome(case, "hang", [f"still running after {timeout} s"], time.perf_counter() - t0, None,
                           str(exc.stderr or ""))
    seconds = time.perf_counter() - t0
    return judge(case, built, proc, seconds, watched=watched, before=before, cwd=cwd, out=out,
                 inputs=inputs)


def judge(case: Case, built: Built, proc: subprocess.CompletedProcess, seconds: float, *, watched: Path,
          before: dict, cwd: Path, out: Path, inputs: list[str]) -> Outcome:
    """The verdict on one finished run (the module docstring's rules)."""
    outcome = Outcome(case, "", [], seconds, proc.returncode, proc.stderr)
    problems = outcome.problems
    if snapshot(watched) != before:
        problems.append(f"the input folder {watched} changed")
    if any(cwd.iterdir()):
        problems.append(f"wrote into the working folder: {sorted(p.name for p in cwd.iterdir())}")
    if "Traceback" in proc.stderr or "Traceback" in proc.stdout or proc.returncode not in (0, 2):
        outcome.verdict = "crash"
        problems.insert(0, f"exit {proc.returncode}" + (", a traceback" if "Traceback" in proc.stderr else ""))
        return outcome
    leftovers = [p.name for p in out.parent.glob(f".{out.name}*")] if out.parent.exists() else []
    if leftovers:
        problems.append(f"partial output left beside the output folder: {leftovers}")

    if proc.returncode == 2:
        lines = proc.stderr.strip("\n").splitlines()
        line = lines[-1] if lines else ""
        if case.ok:
            problems.append(f"refused an input that must be read: {line}")
        if len(lines) != 1:
            problems.append(f"stderr has {len(lines)} lines, not one")
        if not line.startswith("acat: error: "):
            problems.append("stderr does not start with 'acat: error: '")
        named = str(built.names or inputs[0])
        if named not in line:
            problems.append(f"the message does not name {named}")
        if case.match and not re.search(case.match, line):
            problems.append(f"the message does not say {case.match!r}")
        if out.exists() and any(out.iterdir()):
            problems.append(f"output written although the input was refused: {sorted(p.name for p in out.iterdir())}")
        outcome.verdict = "wrong" if problems else "clear error"
        return outcome

    if not case.ok:
        problems.append("read an input that must be refused")
    elif case.command == "explain":
        saliency = out / "saliency.nrrd"
        if not saliency.is_file():
            problems.append("no saliency.nrrd written")
        else:
            problems += _check_geometry(sitk_file_geometry(saliency), built.geometry, 1e-4)
    else:
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError:
            problems.append("stdout is not the JSON report")
        else:
            atol = 1e-3 if str(inputs[0]).endswith((".nii", ".nii.gz")) else 1e-4
            problems += _check_geometry(report, built.geometry, atol)
    outcome.verdict = "wrong" if problems else "correct"
    return outcome


def run_cases(cases: list[Case], corpus: Corpus, *, workers: int = 2,
              in_process: Callable[[Case], bool] = lambda case: False) -> dict[str, Outcome]:
    """Build every case (in this process), run ``acat`` on the ``in_process`` ones here, one after the
    other, then on the rest in subprocesses, ``workers`` at a time."""
    built: dict[str, Built] = {}
    results: dict[str, Outcome] = {}
    for case in cases:
        try:
            built[case.id] = case.build(corpus, corpus.dir(case.id))
        except Exception as exc:  # noqa: BLE001 - a broken builder fails its own case, loudly
            results[case.id] = Outcome(case, "wrong", [f"building the input failed: {type(exc).__name__}: {exc}"])
    if any(c.command == "explain" for c in cases if c.id in built):
        corpus.bundle  # noqa: B018 - made once, before the runs share it
    for case in cases:
        if case.id in built and in_process(case):
            results[case.id] = run_case(case, built[case.id], corpus, in_process=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(run_case, c, built[c.id], corpus): c.id for c in cases
                   if c.id in built and not in_process(c)}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return results


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    return {
        "inputs tried": len(outcomes),
        "handled correctly": sum(o.verdict == "correct" for o in outcomes),
        "clear errors": sum(o.verdict == "clear error" for o in outcomes),
        "crashes": sum(o.verdict in ("crash", "hang") for o in outcomes),
        "wrong results": sum(o.verdict == "wrong" for o in outcomes),
    }


def markdown_table(outcomes: list[Outcome]) -> str:
    rows = ["| input | source | expected behaviour | result | test |", "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        c = o.case
        test = f"`test_bad_input_corpus.py::test_input[{c.id}]`" + (f"<br>`{c.also}`" if c.also else "")
        command = "" if c.command == "info" or c.what.startswith("acat explain") else " (`acat explain`)"
        rows.append(f"| {c.what}{command} | {c.source} | {c.behaviour} | {o.verdict} | {test} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the docs table (docs/RELIABILITY.md)")
    parser.add_argument("--workers", type=int, default=2, help="acat runs at a time (default 2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="acat-corpus-") as tmp:
        results = run_cases(CASES, Corpus(Path(tmp)), workers=args.workers)
    outcomes = [results[c.id] for c in CASES]
    if args.markdown:
        print(markdown_table(outcomes))
        print()
    else:
        for o in outcomes:
            print(f"{'ok  ' if o.passed else 'FAIL'} {o.case.id:28s} {o.verdict:12s} exit {o.returncode} "
                  f"{o.seconds:5.1f} s" + ("".join(f"\n     - {p}" for p in o.problems)))
    n = counts(outcomes)
    print("; ".join(f"{k}: {v}" for k, v in n.items()))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
