"""Shared fixtures: real CT data from packages, and helpers to build DICOM series variants from it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ACATData import sample_data
from ACATLogic.io import write_dicom_series


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and the list of names): proves a folder was not touched."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def cranium():
    """The real Cranium head CT (Debian invesalius-examples) in canonical LPS layout."""
    return sample_data.load_cranium()


@pytest.fixture(scope="session")
def cranium_series(tmp_path_factory, cranium) -> Path:
    """The real head CT written by our writer as a 108-file CT DICOM series (read-only for tests)."""
    out = tmp_path_factory.mktemp("cranium") / "series"
    write_dicom_series(cranium, out, series_description="Cranium head CT")
    return out


@pytest.fixture
def cranium_copy(tmp_path, cranium_series) -> Path:
    """A private, modifiable copy of the head CT series."""
    dst = tmp_path / "series"
    shutil.copytree(cranium_series, dst)
    return dst


@pytest.fixture(scope="session")
def ctchest_path() -> Path:
    return sample_data.ctchest_path()


@pytest.fixture(scope="session")
def dcm():
    """name -> path of a file in pydicom's test files / pydicom-data."""
    return sample_data.pydicom_test_file


@pytest.fixture(scope="session")
def dicomdirtests() -> Path:
    return sample_data.pydicom_test_dir("dicomdirtests")


def sorted_series_files(folder: Path) -> list[Path]:
    """The files of a series in slice order (by position along the normal), for building variants."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    def along(p):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        return float(np.array(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))
    return sorted(files, key=along)


def run_acat(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``acat`` console script for real: exit code, stdout and stderr."""
    exe = Path(sys.executable).with_name("acat")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=300)
