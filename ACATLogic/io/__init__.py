"""Reading and writing CT volumes: DICOM, NRRD, NIfTI. See `read_volume` and `write_volume`."""

from __future__ import annotations

from pathlib import Path

from ..volume import CTVolume
from .dicom_write import write_dicom_series
from .itk_files import write_itk_file
from .read import read_volume


def write_volume(volume: CTVolume, path, *, overwrite: bool = False) -> Path:
    """Write ``volume`` as NRRD (``.nrrd``) or NIfTI (``.nii``, ``.nii.gz``), atomically."""
    return write_itk_file(volume, Path(path), overwrite=overwrite)


__all__ = ["read_volume", "write_volume", "write_dicom_series"]
