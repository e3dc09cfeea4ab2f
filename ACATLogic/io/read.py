"""`read_volume`: one entry point for every supported input.

* a DICOM folder (searched recursively; one or several series), a DICOMDIR file (its folder),
  a list of DICOM files, a single enhanced multi-frame CT file;
* NRRD (``.nrrd``, ``.nhdr``) and NIfTI (``.nii``, ``.nii.gz``).

Inputs are only ever read: nothing is created or changed next to them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import ACATInputError
from ..progress import ProgressCallback, no_progress, scaled
from ..volume import CTVolume
from . import dicom_scan, dicom_volume
from .itk_files import file_kind, read_itk_file
from .limits import check_geometry
from .walk import list_files

PathLike = Union[str, os.PathLike]


def read_volume(source: Union[PathLike, Sequence[PathLike]], *, series_uid: Optional[str] = None,
                min_slices: int = 2, progress: ProgressCallback = no_progress) -> CTVolume:
    """Read a CT volume (HU, LPS geometry) from ``source``.

    Args:
        source: a folder, a file, or a list of DICOM files.
        series_uid: the SeriesInstanceUID to take from a DICOM folder; default: the largest CT series
            (the choice is recorded in ``metadata["series_selection"]``).
        min_slices: fewer slices than this is an error (a volume needs at least 2).
        progress: ``progress(fraction, message)``.

    Raises:
        ACATInputError: anything wrong with the input, as one line naming the file and the problem.
    """
    volume = _read_any(source, series_uid, min_slices, progress)
    check_geometry(volume.spacing_mm, volume.origin_mm,
                   source if not isinstance(source, (list, tuple)) else Path(source[0]).parent)
    return volume


def check_sources(source: Union[PathLike, Sequence[PathLike]]) -> None:
    """The cheap checks of `read_volume`'s input, made before anything expensive (a model loaded): each
    path exists, a single path is a file or folder that can be opened, several paths are files."""
    if isinstance(source, (list, tuple)):
        files = [Path(p) for p in source]
        if not files:
            raise ACATInputError("no input files were given")
        for f in files:
            if f.is_dir():
                raise ACATInputError(f"a folder among {len(files)} inputs: give one folder (it is searched for the "
                                     "series), or several DICOM files of one series", f)
            if not f.exists():
                raise ACATInputError("no such file" + (" (a broken link)" if f.is_symlink() else ""), f)
            if not f.is_file():
                raise ACATInputError("not a regular file (a pipe, socket or device)", f)
        return
    path = Path(source)
    if not path.exists():
        raise ACATInputError("no such file or folder" + (" (a broken link)" if path.is_symlink() else ""), path)
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise ACATInputError("cannot list the folder (Permission denied); check its permissions", path)
        return
    if not path.is_file():  # opening a pipe or a device could block forever or never end
        raise ACATInputError("not a regular file (a pipe, socket or device); give a file or a folder", path)
    if not os.access(path, os.R_OK):
        raise ACATInputError("permission denied: the file cannot be read", path)


def _read_any(source: Union[PathLike, Sequence[PathLike]], series_uid: Optional[str], min_slices: int,
              progress: ProgressCallback) -> CTVolume:
    check_sources(source)
    if isinstance(source, (list, tuple)):
        files = [Path(p) for p in source]
        return _read_dicom(files, Path(os.path.commonpath([str(f.parent) for f in files])), series_uid,
                           min_slices, progress)
    path = Path(source)
    if path.is_dir():
        try:
            listing = list_files(path)
        except OSError as exc:
            raise ACATInputError(f"cannot list the folder ({exc.strerror or exc}); check its permissions", path) from None
        if listing.unreadable:
            # what is behind it may be part of the series: reading the rest would give a shorter scan, silently
            folder, why = listing.unreadable[0]
            more = f" (and {len(listing.unreadable) - 1} more folders)" if len(listing.unreadable) > 1 else ""
            raise ACATInputError(f"a folder inside the input cannot be read ({why}){more}; its files may belong to "
                                 "the series - fix the permissions, or give a folder without it", folder)
        return _read_dicom(listing.files, path, series_uid, min_slices, progress)
    if file_kind(path) is not None:
        volume = read_itk_file(path)
        if volume.voxels_hu.shape[0] < min_slices:
            raise ACATInputError(f"only {volume.voxels_hu.shape[0]} slices; a volume needs at least {min_slices}", path)
        return volume
    if path.name.upper() == "DICOMDIR":
        return _read_any(path.parent, series_uid, min_slices, progress)
    return _read_dicom([path], path, series_uid, min_slices, progress)


def _read_dicom(files: list[Path], source: Path, series_uid: Optional[str], min_slices: int,
                progress: ProgressCallback) -> CTVolume:
    with dicom_scan.lenient_pydicom():
        return _read_dicom_quietly(files, source, series_uid, min_slices, progress)


def _read_dicom_quietly(files: list[Path], source: Path, series_uid: Optional[str], min_slices: int,
                        progress: ProgressCallback) -> CTVolume:
    scan = dicom_scan.scan(files, progress=scaled(progress, 0.0, 0.3))
    if scan.damaged:
        # A damaged file may be a slice of the series we would read: refuse rather than guess.
        path, why = scan.damaged[0]
        more = f" ({len(scan.damaged) - 1} more damaged files)" if len(scan.damaged) > 1 else ""
        raise ACATInputError(f"{why}{more}; repair or remove the file and read again", path)
    records, how = dicom_volume.select_series(scan, source, series_uid)
    volume = dicom_volume.build_volume(records, min_slices=min_slices, progress=scaled(progress, 0.3, 1.0))
    volume.metadata["series_selection"] = how
    return volume
