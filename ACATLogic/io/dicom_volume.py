"""Choose a DICOM series and stack its slices into a `CTVolume` with exact geometry.

Slices are sorted by their position along the slice normal (the cross product of the two
ImageOrientationPatient vectors), never by file name or InstanceNumber. Two irregular acquisitions
are handled explicitly, each with a warning on the volume:

* **Gantry tilt** (slice origins drift in-plane along the stack): every slice is shifted in-plane by
  bilinear interpolation onto a grid perpendicular to the slices, as 3D Slicer's "acquisition
  geometry regularization" and dcm2niix do. Shifts smaller than 5% of a pixel, or a drift below
  0.1 degree, are rounding in the header (positions and orientation cosines written to few decimals)
  and are ignored.
* **Non-uniform spacing**: when every slice lies on the uniform grid from the first to the last slice
  (within 1% of the spacing, or within the 0.1 mm to which headers often round positions - at most a
  fifth of the spacing), the spacing is that grid's, exactly the mean gap. Otherwise, when the gaps
  stay between 0.49x and 2.01x the median (at most one missing slice in a row), slices are linearly
  resampled to the median spacing. Larger gaps mean an incomplete series and are refused: interpolating
  many missing slices would invent anatomy.
* **Duplicates**: a copy of an image (the same SOPInstanceUID and frame at the same position) is read
  once; two images at different positions that share a SOPInstanceUID (a damaged header) are both kept.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import ACATInputError, short_reason
from ..progress import ProgressCallback, no_progress
from ..volume import CTVolume
from .dicom_scan import VALUE_ERRORS, ScanResult, SliceRecord, describe_skipped, optional
from .dicom_bounds import check_pixel_cost, declared_pixel_bytes, read_dataset_file
from .itk_guards import c_stderr_captured
from .limits import check_memory

ORIENTATION_TOL = 1e-3  # difference between unit vectors still counted as "the same orientation"
SPACING_REL_TOL = 0.01  # gaps within 1% of the median are uniform
MIN_GAP_FACTOR, MAX_GAP_FACTOR = 0.49, 2.01  # beyond these (x median gap) the series is refused
TILT_MIN_SHIFT_PX = 0.05  # in-plane drift below this (pixels) is rounding in the header, not tilt
TILT_MIN_DEG = 0.1  # nor is a drift below this angle: orientation cosines written to 3 decimals are off by ~0.06
# Header positions are often written to 0.1 or 0.01 mm: slice positions within this of a uniform grid (but never
# more than a fifth of the spacing) are that grid - not an irregular series to resample
POSITION_ROUNDING_MM = 0.1
DUPLICATE_POSITION_MM = 1e-3


# ------------------------------------------------------------------------------------------------
# Series selection
# ------------------------------------------------------------------------------------------------
def _series_kind(records: list[SliceRecord]) -> str:
    """Why a series cannot be used as a CT volume ('' when it can)."""
    usable = [r for r in records if not r.is_localizer]
    if not usable:
        return "localizer (scout) images only"
    first = usable[0]
    if any(r.is_secondary_capture for r in usable):
        return "secondary capture (screenshot) images, not CT image data"
    if any(r.is_colour for r in usable):
        return f"colour ({first.photometric}) images, not greyscale CT"
    if not any(r.is_ct for r in usable):
        what = "images" if any(r.rows and r.columns for r in usable) else "data without images"
        return f"{first.modality or 'unknown modality'} {what}, not CT"
    if all(r.rows == 0 or r.columns == 0 for r in usable):
        return "no pixel data"
    return ""


def _series_summary(records: list[SliceRecord]) -> str:
    mods = Counter(r.modality or "?" for r in records)
    return "/".join(mods) + f", {len(records)} image{'s' if len(records) != 1 else ''}"


def select_series(scan: ScanResult, source: Path, series_uid: Optional[str] = None) -> tuple[list[SliceRecord], str]:
    """Pick ``series_uid``, or else the largest usable CT series. Returns (records, how it was chosen)."""
    single_file = scan.files_seen == 1 and source.is_file()
    where = source if not single_file else None
    if not scan.series:
        if single_file and scan.skipped:
            path, reason = scan.skipped[0]
            if reason.startswith("DICOMDIR"):
                reason = "a DICOMDIR index file holds no images; open the folder that holds it"
            raise ACATInputError(reason, path)
        if scan.files_seen == 0:
            raise ACATInputError("the folder is empty: no DICOM files found", source)
        raise ACATInputError(
            f"no DICOM images found ({scan.files_seen} files looked at: {describe_skipped(scan.skipped)})", source)

    if series_uid is not None:
        if series_uid not in scan.series:
            found = "; ".join(f"{uid} ({_series_summary(r)})" for uid, r in list(scan.series.items())[:5])
            raise ACATInputError(f"series {series_uid} is not here; found: {found}", source)
        records = scan.series[series_uid]
        kind = _series_kind(records)
        if kind:
            raise ACATInputError(f"series {series_uid} has {kind}; ACAT needs a CT series", where or source)
        return records, f"series {series_uid} as requested"

    usable, unusable = {}, Counter()
    for uid, records in scan.series.items():
        kind = _series_kind(records)
        if kind:
            unusable[kind] += 1
        else:
            usable[uid] = records
    if not usable:
        if single_file:
            only = next(iter(scan.series.values()))
            raise ACATInputError(f"the file holds {_series_kind(only)}; ACAT explains CT scans only", only[0].path)
        total = sum(unusable.values())
        found = "; ".join(f"{kind} ({n})" if len(unusable) > 1 else kind for kind, n in unusable.most_common())
        raise ACATInputError(f"no usable CT series here; found {total} series: {found}" + passed_over(scan), source)

    def size(item):
        uid, records = item
        return (len({(r.sop_instance_uid, r.frame, None if r.position is None else tuple(np.round(r.position, 1)))
                     for r in records if not r.is_localizer}), uid)

    uid, records = max(usable.items(), key=size)
    if len(scan.series) == 1:
        how = f"the only series ({size((uid, records))[0]} images)"
    else:
        how = (f"the largest CT series ({size((uid, records))[0]} images) of {len(scan.series)} series; "
               "choose another with --series UID")
    return records, how + passed_over(scan)


def passed_over(scan: ScanResult) -> str:
    """'; 20000 other files passed over (20000 not a DICOM file)', or '' when every file was an image."""
    if not scan.skipped:
        return ""
    return f"; {len(scan.skipped)} other files passed over ({describe_skipped(scan.skipped)})"


# ------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------
def _orthonormal_axes(records: list[SliceRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    first = records[0]
    for r in records:
        if r.row_dir is None and r.frame is None and r.header.get("ImageOrientationPatient") is not None:
            raise ACATInputError("invalid ImageOrientationPatient (not two direction vectors): the slice cannot "
                                 "be placed in the patient", r.path)
        if r.position is None or r.row_dir is None or r.col_dir is None:
            raise ACATInputError(
                "no ImagePositionPatient/ImageOrientationPatient: the slice cannot be placed in the patient",
                r.path)
    row = first.row_dir / np.linalg.norm(first.row_dir)
    col = first.col_dir / np.linalg.norm(first.col_dir)
    for r in records[1:]:
        rr = r.row_dir / np.linalg.norm(r.row_dir)
        cc = r.col_dir / np.linalg.norm(r.col_dir)
        if np.abs(rr - row).max() > ORIENTATION_TOL or np.abs(cc - col).max() > ORIENTATION_TOL:
            raise ACATInputError(
                f"slice orientation differs within the series ({_fmt(r.row_dir)}/{_fmt(r.col_dir)} vs "
                f"{_fmt(first.row_dir)}/{_fmt(first.col_dir)} in {first.path.name}); "
                "the series mixes image planes and cannot form one volume", r.path)
    dot = float(row @ col)
    if abs(dot) > 1e-3:
        raise ACATInputError(f"ImageOrientationPatient vectors are not perpendicular (cosine {dot:.4f})", first.path)
    col = col - dot * row
    col /= np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def _check_uniform_images(records: list[SliceRecord]) -> tuple[float, float]:
    sizes = Counter((r.rows, r.columns) for r in records)
    if len(sizes) > 1:
        desc = ", ".join(f"{c}x{rw} ({n} images)" for (rw, c), n in sizes.most_common())
        raise ACATInputError(f"the series mixes image sizes: {desc}; it cannot form one volume",
                             records[0].path.parent)
    for r in records:
        if r.pixel_spacing is None:
            raise ACATInputError("no valid PixelSpacing: the pixel size is unknown", r.path)
    ref = np.array(records[0].pixel_spacing)
    for r in records[1:]:
        if np.abs(np.array(r.pixel_spacing) - ref).max() > 1e-4 * ref.max():
            raise ACATInputError(
                f"pixel spacing differs within the series ({r.pixel_spacing} vs {tuple(ref)} mm)", r.path)
    return float(ref[0]), float(ref[1])


# ------------------------------------------------------------------------------------------------
# Pixels
# ------------------------------------------------------------------------------------------------
def _read_pixels(path: Path, header: Optional[pydicom.Dataset] = None) -> np.ndarray:
    """All frames of one file as (F, rows, columns), as stored (before rescale).

    ``header``: the file's header as scanned; what it declares is checked against the memory budget
    before the file is read (`ACATLogic.io.dicom_bounds`), and again what the file itself says.
    """
    declared = 0
    if header is not None:
        check_pixel_cost(header, path)
        declared = declared_pixel_bytes(header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = read_dataset_file(path, force=True, pixel_bytes=declared)
        except ACATInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - damaged file: any parser error
            raise ACATInputError(f"cannot read the file ({short_reason(exc)})", path) from None
        if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise ACATInputError("the file has no pixel data (or it is cut short: a truncated file?)", path)
        meta = ds.file_meta if hasattr(ds, "file_meta") else pydicom.dataset.FileMetaDataset()
        if "TransferSyntaxUID" not in meta:  # a raw dataset without Part 10 header
            little = getattr(ds, "is_little_endian", True) is not False
            implicit = getattr(ds, "is_implicit_VR", True) is not False
            meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (
                ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            ds.file_meta = meta
        check_pixel_cost(ds, path)  # before the decoder allocates what the header (or the codestream) declares
        try:
            with c_stderr_captured():  # a Rust decoder's panic message and backtrace, printed on fd 2
                pixels = ds.pixel_array
        except BaseException as exc:  # noqa: BLE001 - codecs raise many types
            # pylibjpeg-rle is Rust: on damaged data it panics, and PyO3's PanicException is a BaseException
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise  # Ctrl+C, SIGTERM, SystemExit
            ts = getattr(meta.get("TransferSyntaxUID"), "name", "unknown transfer syntax")
            raise ACATInputError(f"cannot decode the pixel data ({ts}): {short_reason(exc)}", path) from None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except VALUE_ERRORS:
        raise ACATInputError("damaged DICOM header (NumberOfFrames is not a whole number)", path) from None
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3 or pixels.shape[0] != frames or pixels.dtype.kind not in "uif":
        raise ACATInputError(f"unexpected pixel array shape {pixels.shape} (colour or damaged image)", path)
    return pixels



_NATIVE_LITTLE_ENDIAN = {str(ExplicitVRLittleEndian): True, str(ImplicitVRLittleEndian): False}  # -> explicit VR


def _read_native_pixels(record: SliceRecord) -> Optional[np.ndarray]:
    """(1, rows, columns) read straight from the file, for the common single-frame, uncompressed,
    little-endian, 16-bit greyscale image whose Pixel Data is the file's last element; else None.

    The header was parsed once already (`dicom_scan`); parsing the whole file again through pydicom's
    decoder took most of the time of reading a series. The element's own header (tag, VR, length) must
    sit exactly before the last rows x columns x 2 bytes of the file, so a file that is cut short, padded,
    or laid out any other way goes to pydicom (`_read_pixels`), with its error messages. Values are as
    pydicom gives them, including its correction of the bits above Bits Stored.
    """
    ds = record.header
    meta = getattr(ds, "file_meta", None)
    explicit = _NATIVE_LITTLE_ENDIAN.get(str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    if explicit is None or record.frame is not None or record.samples_per_pixel != 1 or not record.rows:
        return None
    try:
        bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
        bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
        signed = int(ds.get("PixelRepresentation", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except VALUE_ERRORS:
        return None
    if bits_allocated != 16 or not 1 <= bits_stored <= 16 or signed not in (0, 1) or frames != 1:
        return None
    count = record.rows * record.columns
    if 2 * count > 0xFFFFFFFE:  # more than one element can hold (a damaged header): pydicom says why
        return None
    length = (2 * count).to_bytes(4, "little")
    head_size = 12 if explicit else 8
    try:
        with open(record.path, "rb") as fh:
            start = fh.seek(0, 2) - 2 * count - head_size
            if start < 0:
                return None
            fh.seek(start)
            head = fh.read(head_size)
            if head[:4] != b"\xe0\x7f\x10\x00" or head[-4:] != length or (
                    explicit and head[4:8] not in (b"OW\x00\x00", b"OB\x00\x00")):
                return None
            pixels = np.fromfile(fh, dtype="<i2" if signed else "<u2", count=count)
    except (OSError, ValueError):
        return None
    if pixels.size != count:
        return None
    pixels = pixels.reshape(1, record.rows, record.columns)
    if bits_stored < 16:  # pydicom's correct_unused_bits: the high bits are not part of the value
        np.left_shift(pixels, 16 - bits_stored, out=pixels)
        np.right_shift(pixels, 16 - bits_stored, out=pixels)
    return pixels


def _pixels_of(record: SliceRecord) -> np.ndarray:
    """All frames of the record's file as (F, rows, columns), as stored (before rescale)."""
    pixels = _read_native_pixels(record)
    return pixels if pixels is not None else _read_pixels(record.path, record.header)


def _stored_bytes(record: SliceRecord) -> int:
    """Bytes per stored pixel as the header declares (BitsAllocated), 2 when it does not say."""
    bits = optional(record.header, "BitsAllocated", 16)
    try:
        return max(1, (int(bits) + 7) // 8)
    except (TypeError, ValueError):
        return 2


def _integer_hu(frame: np.ndarray, record: SliceRecord) -> bool:
    """Whether ``frame * slope + intercept`` is an integer below 2**24 in magnitude for every pixel."""
    return (frame.dtype.kind in "iu" and frame.itemsize <= 2 and record.slope == 1.0
            and float(record.intercept).is_integer() and abs(record.intercept) <= 2 ** 23)


def _shift_along(image: np.ndarray, shift: float, axis: int, fill: float) -> np.ndarray:
    """Move ``image`` by ``shift`` pixels along ``axis`` (linear interpolation, ``fill`` outside)."""
    length = image.shape[axis]
    src = np.arange(length, dtype=np.float64) - shift
    i0 = np.floor(src).astype(np.int64)
    frac = (src - i0).astype(np.float32)
    shape = [1, 1]
    shape[axis] = length
    a = np.take(image, np.clip(i0, 0, length - 1), axis=axis)
    b = np.take(image, np.clip(i0 + 1, 0, length - 1), axis=axis)
    a = np.where(((i0 >= 0) & (i0 < length)).reshape(shape), a, fill)
    b = np.where(((i0 + 1 >= 0) & (i0 + 1 < length)).reshape(shape), b, fill)
    f = frac.reshape(shape)
    return (a * (1 - f) + b * f).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# The volume
# ------------------------------------------------------------------------------------------------
def build_volume(records: Sequence[SliceRecord], *, min_slices: int = 2,
                 progress: ProgressCallback = no_progress) -> CTVolume:
    """Stack the images of one series into a `CTVolume` (HU, LPS). See the module docstring.

    The steps: the usable images (localizers and duplicate copies left out), sorted along the slice normal
    and checked (enough slices, one image per position); the in-plane drift of their origins (gantry tilt);
    the slice spacing (resampled when irregular); the rescale; the pixels decoded to HU; the tilt corrected.
    """
    notes: list[str] = []
    images = _usable_images(records, notes)
    row_spacing, col_spacing = _check_uniform_images(images)
    row_dir, col_dir, normal = _orthonormal_axes(images)
    images, along, positions = _sorted_along(images, normal, min_slices)
    shift_i, shift_j, tilt_deg = _in_plane_drift(positions, along, normal, row_dir, col_dir, row_spacing,
                                                 col_spacing)
    spacing_k, target = _slice_positions(along, images)
    if target is not None:
        gaps = np.diff(along)
        notes.append(
            f"slice spacing was not uniform (gaps {gaps.min():.3g} to {gaps.max():.3g} mm); "
            f"resampled to {spacing_k:.4g} mm by linear interpolation between slices")
    _check_rescale(images, notes)
    voxels = _decode_hu(images, progress)
    if tilt_deg is not None:
        _shift_slices(voxels, shift_i, shift_j)
        notes.append(f"gantry tilt of {tilt_deg:.2f} degrees was corrected by shifting each slice in-plane "
                     "onto a grid perpendicular to the slices")
    if target is not None:
        voxels = _resample_slices(voxels, along, target)

    first = images[0]
    return CTVolume(
        voxels_hu=voxels,
        spacing_mm=(col_spacing, row_spacing, spacing_k),
        origin_mm=positions[0],
        direction=np.stack([row_dir, col_dir, normal], axis=1) + 0.0,  # no negative zeros
        metadata=_metadata(first.header),
        warnings=notes,
    )


def _usable_images(records: Sequence[SliceRecord], notes: list[str]) -> list[SliceRecord]:
    """The images to stack: localizer (scout) images and duplicate copies of one image left out (said in
    ``notes``); an image without pixel data, in colour or a secondary capture is refused."""
    images = [r for r in records if not r.is_localizer]
    if len(images) < len(records):
        notes.append(f"{len(records) - len(images)} localizer (scout) images were left out")
    # A copy = the same SOP instance (and frame) at the same position; one UID at two positions is a damaged
    # or rewritten header, not a copy - both images are slices of the scan and both are kept.
    kept: dict[tuple[str, Optional[int]], list[SliceRecord]] = {}
    copies = shared = 0
    for r in images:
        same_uid = kept.setdefault((r.sop_instance_uid, r.frame), [])
        if _is_copy(r, same_uid):
            copies += 1
            continue
        shared += bool(same_uid)
        same_uid.append(r)
    if copies:
        notes.append(f"{copies} duplicate copies of the same image were ignored")
    if shared:
        notes.append(f"{shared} images share their SOPInstanceUID with an image at another slice position "
                     "(a damaged or rewritten header); each was kept as its own slice")
    images = [r for group in kept.values() for r in group]
    for r in images:
        if r.rows == 0 or r.columns == 0:
            raise ACATInputError("the file has no pixel data (no image rows/columns)", r.path)
        if r.is_colour or r.is_secondary_capture:
            raise ACATInputError("a colour or secondary capture image, not CT image data", r.path)
    return images


def _is_copy(r: SliceRecord, same_uid: list[SliceRecord]) -> bool:
    """Whether ``r`` is a copy of one of the images with its SOPInstanceUID (and frame): one without a position
    is, and so is one at the same position within the rounding a rewritten header adds (`POSITION_ROUNDING_MM`)."""
    if not same_uid:
        return False
    if r.position is None or any(o.position is None for o in same_uid):
        return True
    others = np.array([o.position for o in same_uid], dtype=float)
    return bool((np.linalg.norm(others - np.asarray(r.position, float), axis=1) <= POSITION_ROUNDING_MM).any())


def _sorted_along(images: list[SliceRecord], normal: np.ndarray,
                  min_slices: int) -> tuple[list[SliceRecord], np.ndarray, np.ndarray]:
    """(images, their positions along ``normal`` in mm, their origins (n, 3)) in slice order - by position
    along the normal, never by file name or InstanceNumber. Refuses too few slices and two images at one
    position (several acquisitions or phases in one series)."""
    positions = np.array([r.position for r in images])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    images = [images[i] for i in order]
    along = along[order]
    positions = positions[order]

    if len(images) < min_slices:
        raise ACATInputError(
            f"only {len(images)} slice{'s' if len(images) != 1 else ''}: a volume needs at least {min_slices}; "
            "open the folder that holds the whole series", images[0].path)
    gaps = np.diff(along)
    if len(gaps) and gaps.min() < DUPLICATE_POSITION_MM:
        i = int(np.argmin(gaps))
        n_dup = int(np.sum(gaps < DUPLICATE_POSITION_MM))
        raise ACATInputError(
            f"{n_dup + 1} images share one slice position ({images[i].path.name} and {images[i + 1].path.name}): "
            "the series holds several acquisitions or phases; export them as separate series",
            images[0].path.parent)
    return images, along, positions


def _in_plane_drift(positions: np.ndarray, along: np.ndarray, normal: np.ndarray, row_dir: np.ndarray,
                    col_dir: np.ndarray, row_spacing: float,
                    col_spacing: float) -> tuple[np.ndarray, np.ndarray, Optional[float]]:
    """(shift along i, shift along j, in pixels per slice; the tilt in degrees, or None when there is none):
    the in-plane drift of the slice origins along the stack = gantry tilt (or a sheared acquisition)."""
    offsets = positions - positions[0] - np.outer(along - along[0], normal)
    shift_i = offsets @ row_dir / col_spacing  # along i (columns): DICOM column spacing
    shift_j = offsets @ col_dir / row_spacing
    # the steepest drift of any slice from the first (a drift that is not linear, or that comes back, still counts)
    drift_mm = np.linalg.norm(offsets[1:], axis=1)
    tilt_deg = float(np.degrees(np.arctan2(drift_mm, along[1:] - along[0])).max()) if len(along) > 1 else 0.0
    tilted = bool(max(np.abs(shift_i).max(), np.abs(shift_j).max()) > TILT_MIN_SHIFT_PX and tilt_deg > TILT_MIN_DEG)
    # Header values carry ~1e-6 mm of rounding: a shift within 1e-3 pixel of a whole pixel is whole.
    shift_i = np.where(np.abs(shift_i - np.rint(shift_i)) < 1e-3, np.rint(shift_i), shift_i)
    shift_j = np.where(np.abs(shift_j - np.rint(shift_j)) < 1e-3, np.rint(shift_j), shift_j)
    return shift_i, shift_j, (tilt_deg if tilted else None)


def _check_rescale(images: list[SliceRecord], notes: list[str]) -> None:
    """A RescaleSlope of 0 is refused; pixel values that are not HU (DICOM RescaleType) are said in ``notes``."""
    for r in images:
        if r.slope == 0:
            raise ACATInputError("RescaleSlope is 0: every pixel would have the same value; the header is damaged",
                                 r.path)
    rescale_types = {r.rescale_type for r in images} - {"", "HU"}
    if rescale_types:
        notes.append(f"pixel values are in {'/'.join(sorted(rescale_types))} (DICOM RescaleType), "
                     "not Hounsfield units")


def _decode_hu(images: list[SliceRecord], progress: ProgressCallback) -> np.ndarray:
    """(K, J, I) float32 HU of the sorted images.

    Decoded one file at a time (a multi-frame file once) and rescaled to HU in float64: no integer
    overflow. The first file is decoded before the volume is allocated, so a header that declares more
    pixels than its file holds fails on its own data, not on a huge allocation."""
    nk = len(images)
    # the whole volume against the memory budget before anything is decoded (a compressed file's decoder
    # allocates what its header declares)
    check_memory((nk, images[0].rows, images[0].columns), _stored_bytes(images[0]), images[0].path.parent)
    cache: dict[Path, np.ndarray] = {images[0].path: _pixels_of(images[0])}
    try:
        voxels = np.empty((nk, images[0].rows, images[0].columns), dtype=np.float32)
    except MemoryError:
        raise ACATInputError(f"not enough memory to read {nk} slices of {images[0].columns}x{images[0].rows}",
                             images[0].path.parent) from None
    f32 = np.finfo(np.float32)
    for k, r in enumerate(images):
        if k % 8 == 0:
            progress(k / nk, "decoding slices")
        if r.path not in cache:
            cache.clear()
            cache[r.path] = _pixels_of(r)
        frames = cache[r.path]
        frame = frames[r.frame or 0]
        if frame.shape != (r.rows, r.columns):
            raise ACATInputError(f"pixel data is {frame.shape[1]}x{frame.shape[0]} but the header says "
                                 f"{r.columns}x{r.rows}", r.path)
        if _integer_hu(frame, r):
            # The common case (slope 1, whole-number intercept, 8/16-bit pixels): every value is an integer
            # below 2**24, exact in float32, finite and in range - the float64 path's result, in one pass.
            np.add(frame, np.float32(r.intercept), out=voxels[k])
            continue
        hu = frame.astype(np.float64) * r.slope + r.intercept
        if not np.all(np.isfinite(hu)):
            raise ACATInputError("the pixel values contain NaN or infinity", r.path)
        if np.abs(hu).max() > f32.max:
            raise ACATInputError(f"RescaleSlope {r.slope:g} and RescaleIntercept {r.intercept:g} give values beyond "
                                 "the float32 range; the header is damaged", r.path)
        voxels[k] = hu
    progress(1.0, "decoding slices")
    return voxels


def _shift_slices(voxels: np.ndarray, shift_i: np.ndarray, shift_j: np.ndarray) -> None:
    """Shift each slice in-plane (in place) by its drift: onto a grid perpendicular to the slices."""
    fill = float(voxels.min())
    for k in range(len(voxels)):
        if abs(shift_i[k]) > 1e-6:
            voxels[k] = _shift_along(voxels[k], float(shift_i[k]), axis=1, fill=fill)
        if abs(shift_j[k]) > 1e-6:
            voxels[k] = _shift_along(voxels[k], float(shift_j[k]), axis=0, fill=fill)


def _slice_positions(along: np.ndarray, images: list[SliceRecord]) -> tuple[float, Optional[np.ndarray]]:
    """(spacing, None) when uniform; (spacing, target positions) when resampling is needed."""
    if len(along) == 1:  # one slice (allowed by min_slices=1): its thickness is its extent
        thickness = optional(images[0].header, "SliceThickness")
        try:
            return (float(thickness) if thickness and float(thickness) > 0 else 1.0), None
        except (TypeError, ValueError):
            return 1.0, None
    gaps = np.diff(along)
    median = float(np.median(gaps))
    # uniform: every position within the tolerance of the grid from the first to the last slice (rounding in
    # the header moves single positions, not the grid; a missing slice moves the rest by a whole gap)
    spacing = float((along[-1] - along[0]) / (len(along) - 1))
    grid = along[0] + spacing * np.arange(len(along))
    tolerance = max(SPACING_REL_TOL * spacing, min(POSITION_ROUNDING_MM, 0.2 * spacing), 1e-3)
    if np.abs(along - grid).max() <= tolerance:
        return spacing, None
    worst = int(np.argmax(np.abs(gaps - median)))
    if gaps.max() > MAX_GAP_FACTOR * median or gaps.min() < MIN_GAP_FACTOR * median:
        raise ACATInputError(
            f"slices are missing or irregular: a gap of {gaps[worst]:.4g} mm between {images[worst].path.name} "
            f"and {images[worst + 1].path.name} where the spacing is {median:.4g} mm; "
            "the series is incomplete - export the complete series",
            images[0].path.parent)
    n = int(round((along[-1] - along[0]) / median)) + 1
    return median, along[0] + median * np.arange(n)


def _resample_slices(voxels: np.ndarray, along: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear interpolation along k from slices at ``along`` to slices at ``target`` (both ascending)."""
    upper = np.clip(np.searchsorted(along, target, side="right"), 1, len(along) - 1)
    lower = upper - 1
    w = np.clip((target - along[lower]) / (along[upper] - along[lower]), 0.0, 1.0).astype(np.float32)
    out = np.empty((len(target),) + voxels.shape[1:], dtype=np.float32)
    for q in range(len(target)):
        out[q] = voxels[lower[q]] * (1 - w[q]) + voxels[upper[q]] * w[q]
    return out


def _metadata(ds: pydicom.Dataset) -> dict:
    """PHI-free description from the first image's header (never names, IDs, dates)."""
    def text(keyword):
        value = optional(ds, keyword)
        return None if value in (None, "") else " ".join(str(value).split())

    def number(keyword, groups=()):
        value = optional(ds, keyword)
        for seq_name in groups:  # enhanced CT keeps some values in functional groups
            if value not in (None, ""):
                break
            shared = optional(ds, "SharedFunctionalGroupsSequence")
            item = optional(shared[0], seq_name) if shared else None
            value = optional(item[0], keyword) if item else None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if np.isfinite(number) else None

    kernel = optional(ds, "ConvolutionKernel")
    if kernel is not None and not isinstance(kernel, str):
        kernel = "\\".join(str(k) for k in kernel)
    meta = {
        "modality": text("Modality"),
        "series_description": text("SeriesDescription"),
        "series_instance_uid": text("SeriesInstanceUID"),
        "study_instance_uid": text("StudyInstanceUID"),
        "slice_thickness_mm": number("SliceThickness", ("PixelMeasuresSequence",)),
        "kvp": number("KVP", ("CTXRayDetailsSequence",)),
        "manufacturer": text("Manufacturer"),
        "manufacturer_model": text("ManufacturerModelName"),
        "convolution_kernel": kernel or None,
        "source_format": "DICOM",
    }
    return {k: v for k, v in meta.items() if v is not None}
