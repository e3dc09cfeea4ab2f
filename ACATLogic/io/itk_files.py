"""NRRD and NIfTI through SimpleITK, which uses LPS like `CTVolume`: no axis conversion needed.

NRRD keeps geometry as text with 17 significant digits, so a round trip is exact. NIfTI-1 stores
its geometry (sform/qform) as float32: positions come back within float32 precision (about 1e-5 mm
for coordinates of a few hundred mm); voxel values are exact. Use NRRD when geometry must be exact.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ACATInputError
from ..volume import METADATA_KEYS, CTVolume
from .atomic import atomic_path, out_of_space
from .itk_guards import (c_stderr_captured, check_nifti_gzip_stream, check_nifti_orientation, check_nifti_size,
                         check_nrrd_data, check_nrrd_files, library_reason, nrrd_data_file)
from .itk_paths import itk_path
from .limits import check_memory

NRRD_SUFFIXES = (".nrrd", ".nhdr")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_IMAGE_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO"}
_META_PREFIX = "ACAT_"  # our PHI-free metadata travels in NRRD key/value fields


def file_kind(path: Path) -> str | None:
    """'.nrrd', '.nhdr', '.nii' or '.nii.gz' from the name, or None."""
    name = path.name.lower()
    for suffix in (".nii.gz",) + NRRD_SUFFIXES + (".nii",):
        if name.endswith(suffix):
            return suffix
    return None


def _short(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK's messages end with the useful sentence after file/line noise.
    useful = [ln for ln in lines if not ln.startswith(("/", "sitk::ERROR", "itk::ERROR"))] or lines
    text = (useful[-1] if useful else type(exc).__name__).removeprefix("Description: ")
    return text[:160]


_COMPONENT_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
}


def _is_segmentation(reader: sitk.ImageFileReader) -> bool:
    """3D Slicer's .seg.nrrd: label values with Segment<N>_* fields, not Hounsfield units."""
    keys = reader.GetMetaDataKeys()
    return any(k.startswith("Segment0_") or k.startswith("Segmentation_") for k in keys)


def read_itk_file(path: Path) -> CTVolume:
    """Read an NRRD or NIfTI CT volume (HU assumed) into a `CTVolume`."""
    kind = file_kind(path)
    fmt = "NRRD" if kind in NRRD_SUFFIXES else "NIfTI"
    if fmt == "NIfTI":
        check_nifti_orientation(path, compressed=kind == ".nii.gz")
    else:
        check_nrrd_files(path)
    data_file = nrrd_data_file(path) if kind == ".nhdr" else None
    relative = None if data_file is None else os.path.relpath(data_file, path.parent)
    with itk_path(path, data_file=relative) as itk_name:  # SimpleITK aborts on a path that is not UTF-8
        return _read_itk_file(path, itk_name, kind, fmt)


def _read_itk_file(path: Path, itk_name: str, kind: str, fmt: str) -> CTVolume:
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_name)
    reader.SetImageIO(_IMAGE_IO[kind])
    try:
        with c_stderr_captured() as printed:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ACATInputError(f"cannot read the {fmt} file ({library_reason(printed, _short(exc))})", path) from None
    if _is_segmentation(reader):
        raise ACATInputError("a 3D Slicer segmentation (labels), not a CT volume; open the CT scan it was drawn on",
                             path)
    dim, comps = reader.GetDimension(), reader.GetNumberOfComponents()
    size = reader.GetSize()
    if comps != 1:
        raise ACATInputError(f"the {fmt} file holds {comps}-component (colour or vector) voxels, not a CT volume", path)
    if dim == 4 and size[3] == 1:
        pass  # a 3D volume saved with a trailing singleton axis: read below and drop it
    elif dim != 3:
        raise ACATInputError(f"the {fmt} file is {dim}D (size {list(size)}); a CT volume is 3D", path)
    component_bytes = _COMPONENT_BYTES.get(reader.GetPixelID(), 8)
    n_bytes = int(np.prod([int(s) for s in size], dtype=object)) * component_bytes
    shown = " x ".join(str(int(s)) for s in size)
    if fmt == "NRRD":
        check_nrrd_data(path, shown, n_bytes, n_bytes // component_bytes)
    else:
        check_nifti_size(path, kind == ".nii.gz", shown, n_bytes)
    check_memory(tuple(size), component_bytes, path)
    if kind == ".nii.gz":
        check_nifti_gzip_stream(path, shown, n_bytes)
    try:
        with c_stderr_captured() as printed:
            image = reader.Execute()
    except RuntimeError as exc:
        raise ACATInputError(f"cannot read the {fmt} voxel data ({library_reason(printed, _short(exc))})",
                             path) from None
    if dim == 4:
        image = image[:, :, :, 0]
    if image.GetSize()[2] < 2:
        raise ACATInputError(f"the {fmt} file holds a single slice; a volume needs at least 2", path)
    voxels = sitk.GetArrayFromImage(image)
    if voxels.dtype == np.float64:
        finite = voxels[np.isfinite(voxels)]
        if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
            raise ACATInputError("voxel values exceed the float32 range", path)
    if voxels.dtype != np.float32:
        voxels = voxels.astype(np.float32)  # integers up to 64 bits and in-range doubles: finite
    if not np.isfinite(voxels).all():
        bad = int(np.size(voxels) - np.isfinite(voxels).sum())
        raise ACATInputError(f"{bad} voxels are NaN or infinite; the volume is damaged", path)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    meta = {}
    for key in image.GetMetaDataKeys():
        if key.startswith(_META_PREFIX) and key[len(_META_PREFIX):] in METADATA_KEYS:
            value = image.GetMetaData(key)
            name = key[len(_META_PREFIX):]
            meta[name] = float(value) if name in ("slice_thickness_mm", "kvp") else value
    meta["source_format"] = fmt
    notes = []
    lo, hi = float(voxels.min()), float(voxels.max())
    if lo >= 0 and hi <= 4095 and (hi - lo) > 0:
        notes.append(f"voxel values run from {lo:g} to {hi:g}: these do not look like Hounsfield units "
                     "(air is about -1000 HU); check the file")
    try:
        return CTVolume(voxels, image.GetSpacing(), image.GetOrigin(), direction, meta, notes)
    except ACATInputError as exc:
        raise ACATInputError(str(exc), path) from None


def to_sitk(volume: CTVolume) -> sitk.Image:
    """The volume as a float32 SimpleITK image with the same geometry."""
    image = sitk.GetImageFromArray(volume.voxels_hu, isVector=False)
    image.SetSpacing([float(v) for v in volume.spacing_mm])
    image.SetOrigin([float(v) for v in volume.origin_mm])
    image.SetDirection([float(v) for v in volume.direction.reshape(-1)])
    return image


def check_volume_name(path: Path) -> str:
    """The output kind ('.nrrd', '.nii', '.nii.gz') from the name, or `ACATInputError` for any other name."""
    kind = file_kind(path)
    if kind is None or kind == ".nhdr":  # a detached header cannot be renamed into place atomically
        raise ACATInputError("unsupported output type; use a name ending in .nrrd, .nii or .nii.gz", path)
    return kind


def write_itk_file(volume: CTVolume, path: Path, *, overwrite: bool = False, compress: bool = True) -> Path:
    """Write NRRD or NIfTI by the file name's suffix, atomically. Returns the path written."""
    path = Path(path)
    kind = check_volume_name(path)
    image = to_sitk(volume)
    if kind in NRRD_SUFFIXES:
        for key, value in volume.metadata.items():
            if key in METADATA_KEYS:
                image.SetMetaData(_META_PREFIX + key, str(value))
    writer = sitk.ImageFileWriter()
    writer.SetImageIO(_IMAGE_IO[kind])
    writer.SetUseCompression(compress)
    if compress:
        # gzip level 1: on a 512 x 512 x 40 float volume 0.38 s instead of 0.58 s at the default level
        # (docs/BENCHMARKS.md); an explanation writes up to nine of them
        writer.SetCompressionLevel(1)
    try:
        with atomic_path(path, overwrite=overwrite) as tmp, itk_path(tmp) as itk_name:
            writer.SetFileName(itk_name)
            try:
                writer.Execute(image)
            except RuntimeError as exc:  # judged while the partial file still takes its space
                raise _write_error(exc, path) from None
    except FileExistsError:
        raise ACATInputError("the output file exists already; choose another name or allow overwriting", path) from None
    except OSError as exc:
        raise _write_error(exc, path) from None
    return path


def _write_error(exc: BaseException, path: Path) -> ACATInputError:
    if out_of_space(exc, path.parent):
        return ACATInputError("no space left on device; nothing was written - free some space or choose another "
                              "output", path)
    return ACATInputError(f"cannot write the file ({exc.strerror if isinstance(exc, OSError) else _short(exc)})", path)
