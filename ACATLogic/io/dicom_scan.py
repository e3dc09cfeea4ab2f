"""Find DICOM images, read their headers, and group them into series.

Only headers are read here (``stop_before_pixels``); pixels are decoded later, for the chosen series
only (`ACATLogic.io.dicom_volume`). Each image frame becomes a `SliceRecord`; an enhanced multi-frame
file contributes one record per frame, from its functional groups (PS3.3 C.7.6.16).
"""

from __future__ import annotations

import contextlib
import logging
import stat
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import pydicom
import pydicom.config
from pydicom.errors import BytesLengthException, InvalidDicomError

from ..errors import ACATInputError, short_reason
from ..progress import ProgressCallback, no_progress
from .dicom_bounds import read_dataset_file
from .walk import list_files

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = {CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_ENHANCED_CT_IMAGE_STORAGE}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR index file: no image in it
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC, multi-frame SC (.7.1 - .7.4)


@dataclass
class SliceRecord:
    """One 2D image (a file, or one frame of a multi-frame file) and the header facts we need.

    ``row_dir`` is the LPS direction of increasing column index (i), ``col_dir`` that of increasing
    row index (j): DICOM's ImageOrientationPatient. ``pixel_spacing`` is DICOM's (row spacing, column
    spacing) = (spacing along j, spacing along i).
    """

    path: Path
    frame: Optional[int]
    series_uid: str
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    rows: int
    columns: int
    position: Optional[np.ndarray]
    row_dir: Optional[np.ndarray]
    col_dir: Optional[np.ndarray]
    pixel_spacing: Optional[tuple[float, float]]
    slope: float
    intercept: float
    rescale_type: str
    samples_per_pixel: int
    photometric: str
    is_localizer: bool
    header: pydicom.Dataset = field(repr=False)

    @property
    def is_secondary_capture(self) -> bool:
        return self.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX)

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT" or (not self.modality and self.sop_class_uid in CT_SOP_CLASSES)

    @property
    def is_colour(self) -> bool:
        return self.samples_per_pixel != 1 or not self.photometric.startswith("MONOCHROME")


@dataclass
class ScanResult:
    """What a folder scan found: slices grouped by SeriesInstanceUID, and the files passed over."""

    series: dict[str, list[SliceRecord]]
    skipped: list[tuple[Path, str]]  # not DICOM, empty, DICOMDIR: passed over silently
    damaged: list[tuple[Path, str]]  # DICOM that cannot be parsed or opened: the read is refused
    files_seen: int


@contextlib.contextmanager
def lenient_pydicom() -> Iterator[None]:
    """Accept odd-but-readable values (as hospitals' files have) without pydicom's warnings.

    We judge each file by what we need from it and report problems ourselves, in one line.
    """
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode
    logger = logging.getLogger("pydicom")
    saved_level = logger.level
    settings.reading_validation_mode = pydicom.config.IGNORE
    logger.setLevel(logging.ERROR + 10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = saved
        logger.setLevel(saved_level)


def _floats(value, n: int) -> Optional[np.ndarray]:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


#: What pydicom's lazy conversion of one damaged value raises: a US element of odd length, "1A" as IS,
#: an unknown VR (NotImplementedError), an unknown character set (LookupError), a short binary value.
VALUE_ERRORS = (TypeError, ValueError, OverflowError, NotImplementedError, LookupError, struct.error,
                BytesLengthException)
#: ... and what odd nesting (an item that is not a dataset) adds.
_HEADER_VALUE_ERRORS = VALUE_ERRORS + (AttributeError,)


def optional(ds: pydicom.Dataset, keyword: str, default=None):
    """An attribute we can do without: its value, or ``default`` when absent or damaged."""
    try:
        value = ds.get(keyword, default)
    except _HEADER_VALUE_ERRORS:
        return default
    return default if value is None else value


def _orientation(value) -> Optional[np.ndarray]:
    """ImageOrientationPatient as 6 floats, or None when either direction vector has no length."""
    iop = _floats(value, 6)
    if iop is None or np.linalg.norm(iop[:3]) < 1e-3 or np.linalg.norm(iop[3:]) < 1e-3:
        return None
    return iop


def _int(ds: pydicom.Dataset, keyword: str, default: int, path: Path) -> int:
    """An integer attribute; a value that is not a whole number (e.g. '1A') is a damaged header."""
    try:
        value = ds.get(keyword)
        if value in (None, ""):
            return default
        number = int(value)
    except VALUE_ERRORS:
        raise ACATInputError(f"damaged DICOM header ({keyword} is not a whole number)", path) from None
    if number < 0:
        raise ACATInputError(f"damaged DICOM header ({keyword} is negative: {number})", path)
    return number or default


def _float(value, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _item(ds, sequence: str):
    seq = ds.get(sequence)
    return seq[0] if seq else None


def _functional(frame_groups, shared_groups, sequence: str):
    """The first item of a functional-group sequence, per-frame first, then shared (PS3.3 C.7.6.16)."""
    for groups in (frame_groups, shared_groups):
        if groups is not None:
            item = _item(groups, sequence)
            if item is not None:
                return item
    return None


def _base_record(ds: pydicom.Dataset, path: Path) -> dict:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return dict(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        modality=str(ds.get("Modality", "") or "").upper(),
        sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
        rows=_int(ds, "Rows", 0, path),
        columns=_int(ds, "Columns", 0, path),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1, path),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper(),
        is_localizer="LOCALIZER" in image_type,
        header=ds,
    )


def records_from_dataset(ds: pydicom.Dataset, path: Path) -> list[SliceRecord]:
    """The `SliceRecord`s of one parsed header: one, or one per frame of a multi-frame image."""
    base = _base_record(ds, path)
    sop_uid = str(ds.get("SOPInstanceUID", "") or path)
    n_frames = _int(ds, "NumberOfFrames", 1, path)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    is_ct = base["modality"] == "CT" or (not base["modality"] and base["sop_class_uid"] in CT_SOP_CLASSES)
    if not is_ct and (n_frames > 1 or per_frame is not None):
        # A cine loop, a segmentation or a multi-frame screenshot beside the CT: never read as CT (its
        # series is refused by kind), so one record stands for the whole file and it never blocks the folder.
        return [SliceRecord(frame=None, sop_instance_uid=sop_uid, position=None, row_dir=None, col_dir=None,
                            pixel_spacing=None, slope=1.0, intercept=0.0, rescale_type="", **base)]
    if per_frame is None and n_frames > 1:
        raise ACATInputError(
            f"multi-frame CT image with {n_frames} frames but no per-frame geometry (no per-frame functional "
            "groups); export the series as single-frame CT images", path)
    if per_frame is None and shared is None:
        iop = _orientation(ds.get("ImageOrientationPatient"))
        return [SliceRecord(
            frame=None, sop_instance_uid=sop_uid,
            position=_floats(ds.get("ImagePositionPatient"), 3),
            row_dir=None if iop is None else iop[:3], col_dir=None if iop is None else iop[3:],
            pixel_spacing=_pixel_spacing(ds.get("PixelSpacing")),
            slope=_float(ds.get("RescaleSlope"), 1.0), intercept=_float(ds.get("RescaleIntercept"), 0.0),
            rescale_type=str(ds.get("RescaleType", "") or "").upper(), **base)]
    if per_frame is not None and len(per_frame) != n_frames:
        raise ACATInputError(
            f"the file declares {n_frames} frames but describes {len(per_frame)}; the file is damaged", path)
    records = []
    for f in range(n_frames):
        frame_groups = per_frame[f] if per_frame is not None else None
        pos = _functional(frame_groups, shared, "PlanePositionSequence")
        ori = _functional(frame_groups, shared, "PlaneOrientationSequence")
        meas = _functional(frame_groups, shared, "PixelMeasuresSequence")
        pvt = _functional(frame_groups, shared, "PixelValueTransformationSequence")
        iop = None if ori is None else _orientation(ori.get("ImageOrientationPatient"))
        records.append(SliceRecord(
            frame=f, sop_instance_uid=sop_uid,
            position=None if pos is None else _floats(pos.get("ImagePositionPatient"), 3),
            row_dir=None if iop is None else iop[:3], col_dir=None if iop is None else iop[3:],
            pixel_spacing=None if meas is None else _pixel_spacing(meas.get("PixelSpacing")),
            slope=_float(None if pvt is None else pvt.get("RescaleSlope"), _float(ds.get("RescaleSlope"), 1.0)),
            intercept=_float(None if pvt is None else pvt.get("RescaleIntercept"),
                             _float(ds.get("RescaleIntercept"), 0.0)),
            rescale_type=str((pvt.get("RescaleType") if pvt is not None else None) or ds.get("RescaleType", "") or "").upper(),
            **base))
    return records


def _pixel_spacing(value) -> Optional[tuple[float, float]]:
    arr = _floats(value, 2)
    if arr is None or np.any(arr <= 0):
        return None
    return float(arr[0]), float(arr[1])


def _looks_like_raw_dataset(path: Path) -> bool:
    """A DICOM dataset written without the Part 10 header usually starts with a group 0x0008 tag."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head[:2] in (b"\x08\x00", b"\x00\x08")


def read_header(path: Path) -> pydicom.Dataset:
    """Parse a DICOM header (no pixels). Raises `ACATInputError` naming the problem."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ACATInputError(f"cannot open the file ({exc.strerror or exc})", path) from None
    if not stat.S_ISREG(info.st_mode):  # a pipe or device would block or never end: never opened
        raise ACATInputError("not a regular file (a pipe, socket or device)", path)
    size = info.st_size
    if size == 0:
        raise ACATInputError("the file is empty (0 bytes)", path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every odd element; we judge the result instead
        try:
            ds = read_dataset_file(path, stop_before_pixels=True)
        except ACATInputError:
            raise
        except InvalidDicomError:
            if not _looks_like_raw_dataset(path):
                raise ACATInputError("not a DICOM file", path) from None
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:  # noqa: BLE001 - any parser failure means "not readable"
                raise ACATInputError("not a DICOM file", path) from None
            if not (ds.get("SOPClassUID") or (ds.get("Rows") and ds.get("Modality"))):
                raise ACATInputError(
                    "not a readable DICOM image (no DICOM file header, and no image attributes)", path) from None
            return ds
        except OSError as exc:
            raise ACATInputError(f"cannot read the file ({exc.strerror or exc})", path) from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
            raise ACATInputError(f"damaged DICOM header ({short_reason(exc)})", path) from None
    # pydicom stops quietly at the end of a truncated file: a Part 10 file that announces a stored
    # object but holds no SOP Class in its data set was cut short.
    media_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    if media_class and media_class != MEDIA_STORAGE_DIRECTORY and not ds.get("SOPClassUID"):
        raise ACATInputError("damaged DICOM header (the file ends inside its header: truncated?)", path)
    # Cut a little later, it still parses: but a CT image always has a SeriesInstanceUID (type 1).
    # Without one the file would form a series of its own and the slice quietly drop out of its series.
    if CT_SOP_CLASSES & {media_class, str(ds.get("SOPClassUID", "") or "")} and not ds.get("SeriesInstanceUID"):
        raise ACATInputError("damaged DICOM header (no SeriesInstanceUID: the file may be truncated)", path)
    return ds


#: Files that are passed over silently in a folder: they cannot be a slice of any series.
HARMLESS_REASONS = ("not a DICOM file", "the file is empty", "not a readable DICOM image", "not a regular file",
                    "not a DICOM image")


def _not_an_image(ds: pydicom.Dataset) -> bool:
    """A file with DICOM's magic but none of what any image has (SOP class, series, image size): e.g. a
    preamble and "DICM" followed by junk. Grouped by their (empty) series, 20,000 such files read as
    "1 series"; they are counted as passed over instead."""
    return not (optional(ds, "SOPClassUID") or optional(ds, "SeriesInstanceUID") or optional(ds, "Rows")
                or optional(ds, "Modality"))


def iter_candidate_files(root: Path) -> Iterable[Path]:
    """Every file under ``root``, sorted, never following directory symlinks (no loops), without recursion.

    Folders that cannot be listed are passed over here; `ACATLogic.io.walk.list_files` reports them.
    """
    yield from list_files(root).files


def scan(paths: Sequence[Path], progress: ProgressCallback = no_progress) -> ScanResult:
    """Read the headers of ``paths`` (files) and group their images by SeriesInstanceUID."""
    series: dict[str, list[SliceRecord]] = {}
    skipped: list[tuple[Path, str]] = []
    damaged: list[tuple[Path, str]] = []
    n = len(paths)
    for index, path in enumerate(paths):
        if index % 32 == 0:
            progress(index / max(n, 1), "reading DICOM headers")
        try:
            ds = read_header(path)
            media_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
            if media_class == MEDIA_STORAGE_DIRECTORY or ds.get("DirectoryRecordSequence") is not None:
                skipped.append((path, "DICOMDIR index file"))
                continue
            if _not_an_image(ds):
                skipped.append((path, "not a DICOM image (no SOP class, series or image size)"))
                continue
            records = records_from_dataset(ds, path)
        except ACATInputError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            harmless = reason.startswith(HARMLESS_REASONS)
            (skipped if harmless else damaged).append((path, reason))
            continue
        except _HEADER_VALUE_ERRORS as exc:  # pydicom converts values lazily: a bad one surfaces here
            damaged.append((path, f"damaged DICOM header ({short_reason(exc)})"))
            continue
        for rec in records:
            series.setdefault(rec.series_uid, []).append(rec)
    progress(1.0, "reading DICOM headers")
    return ScanResult(series=series, skipped=skipped, damaged=damaged, files_seen=n)


def describe_skipped(skipped: list[tuple[Path, str]]) -> str:
    """'3 not DICOM, 1 empty' — a short tally of why files were passed over."""
    reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
    return ", ".join(f"{count} {reason}" for reason, count in reasons.most_common(4))
