"""DICOM decoding with its cost bounded *before* anything is inflated or decoded.

A few bytes can make a decoder allocate gigabytes: an RLE file of 3.5 kB whose header says 40000 x 40000
pixels (3.2 GiB decoded before the size was checked), a JPEG 2000 codestream larger than the DICOM header
admits, a deflated data set of 1.5 MB that inflates to 1.5 GB (pydicom inflates the whole file to read
its header). Here:

* `read_dataset_file`: like ``pydicom.dcmread``, but a Deflated Explicit VR Little Endian file
  (PS3.5 A.5) is inflated by us, in steps, never past a limit: `HEADER_INFLATE_LIMIT` for a header,
  the declared pixel bytes plus that for the pixels.
* `check_pixel_cost`: frames x rows x columns x samples x bytes against the memory budget
  (`ACATLogic.io.limits`), then, for compressed pixel data, what the compressed bytes can hold: RLE
  expands at most 64:1, and every JPEG / JPEG-LS / JPEG 2000 frame must not declare more pixels in its
  own header (SOF / SIZ marker) than the DICOM header does, since those decoders allocate by the
  codestream's size.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import FileDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless

from ..errors import ACATInputError
from .limits import RLE_MAX_RATIO, check_bytes

#: A deflated file's header is inflated at most this far: even an enhanced CT of thousands of frames has
#: a header of a few MB. The pixels are inflated up to the size the header declares (plus this).
HEADER_INFLATE_LIMIT = 32 << 20
_DEFLATED = str(DeflatedExplicitVRLittleEndian)
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_CHUNK = 1 << 20


def _maybe_deflated(path: Path) -> bool:
    """Whether the file meta might name the deflated transfer syntax (a cheap look at the first 4 kB;
    a false alarm only takes the careful path)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return head[128:132] == b"DICM" and _DEFLATED.encode() in head


def _inflate(fh, limit: int) -> tuple[bytes, bool]:
    """Inflate a raw deflate stream from ``fh`` to at most ``limit`` bytes: (data, whether there was more)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while not inflater.eof:
        chunk = inflater.unconsumed_tail or fh.read(_CHUNK)
        if not chunk:
            break
        room = limit + 1 - len(out)  # never 0: zlib reads max_length=0 as "no limit"
        out += inflater.decompress(chunk, room)
        if len(out) > limit:
            return bytes(out[:limit]), True
    return bytes(out), False


def _read_deflated(path: Path, stop_before_pixels: bool, limit: int) -> FileDataset:
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    with open(path, "rb") as fh:
        preamble = read_preamble(fh, False)
        meta = _read_file_meta_info(fh)
        if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED:  # a false alarm: read as usual
            fh.seek(0)
            return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
        try:
            data, more = _inflate(fh, limit)
        except zlib.error as exc:
            raise ACATInputError(f"damaged DICOM file: the deflated data set cannot be inflated ({exc})", path) \
                from None
    if more and not stop_before_pixels:
        raise ACATInputError(f"damaged DICOM file: the deflated data set inflates to more than {limit >> 20} MB, far "
                             "beyond the pixels its header declares", path)
    if more and b"\xe0\x7f\x10\x00" not in data:  # no Pixel Data tag within the limit: the header alone is larger
        raise ACATInputError(f"damaged DICOM header (the deflated data set's header inflates to more than "
                             f"{HEADER_INFLATE_LIMIT >> 20} MB)", path)
    stop = (lambda tag, vr, length: tag in _PIXEL_TAGS) if stop_before_pixels else None
    dataset = read_dataset(io.BytesIO(data), False, True, stop_when=stop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what it is, now that it is inflated
    return FileDataset(str(path), dataset, preamble=preamble, file_meta=meta, is_implicit_VR=False,
                       is_little_endian=True)


def read_dataset_file(path: Path, *, stop_before_pixels: bool = False, force: bool = False,
                      pixel_bytes: int = 0) -> pydicom.Dataset:
    """``pydicom.dcmread`` with a bounded inflate for deflated files (see the module docstring).

    ``pixel_bytes``: what the header declares (for reading the pixels of a deflated file).
    """
    if _maybe_deflated(path):
        limit = HEADER_INFLATE_LIMIT + (0 if stop_before_pixels else int(pixel_bytes))
        return _read_deflated(path, stop_before_pixels, limit)
    return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=force)


def _whole(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        number = int(value) if value not in (None, "") else default
    except (TypeError, ValueError, OverflowError):
        raise ACATInputError(f"damaged DICOM header ({keyword} is not a whole number)") from None
    return max(number, 0)


def declared_pixel_bytes(ds: pydicom.Dataset) -> int:
    """frames x rows x columns x samples x bytes per sample, as the header declares them."""
    rows, columns = _whole(ds, "Rows", 0), _whole(ds, "Columns", 0)
    frames = _whole(ds, "NumberOfFrames", 1) or 1
    samples = _whole(ds, "SamplesPerPixel", 1) or 1
    bits = _whole(ds, "BitsAllocated", 16) or 16
    return frames * rows * columns * samples * ((bits + 7) // 8)


def _frames(data: bytes, n_frames: int) -> list[bytes]:
    from pydicom.encaps import generate_frames

    try:
        return list(generate_frames(data, number_of_frames=n_frames))
    except Exception:  # noqa: BLE001 - damaged encapsulation: the decoder says why, within the budget
        return []


def _jpeg_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG / JPEG-LS frame's SOF marker, or None."""
    i = frame.find(b"\xff\xd8")
    if i < 0:
        return None
    i += 2
    while i + 4 <= len(frame):
        if frame[i] != 0xFF:
            i += 1
            continue
        marker = frame[i + 1]
        if marker in (0xFF, 0x01) or 0xD0 <= marker <= 0xD7:  # fill byte, TEM, RSTn: no length
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack_from(">H", frame, i + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            if i + 10 > len(frame):
                return None
            rows, columns = struct.unpack_from(">HH", frame, i + 5)
            return rows, columns, frame[i + 9]
        if marker == 0xDA:  # start of scan before any frame header: not a JPEG we can size
            return None
        i += 2 + length
    return None


def _j2k_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 codestream's SIZ marker, or None."""
    i = frame.find(b"\xff\x4f\xff\x51")
    if i < 0 or i + 42 > len(frame):
        return None
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", frame, i + 8)
    components = struct.unpack_from(">H", frame, i + 40)[0]
    return max(ysiz - y0, 0), max(xsiz - x0, 0), components


def check_pixel_cost(ds: pydicom.Dataset, path: Path) -> None:
    """Refuse pixel data whose decoding would cost more than the budget or more than it can hold."""
    try:
        expected = declared_pixel_bytes(ds)
    except ACATInputError as exc:
        raise ACATInputError(str(exc), path) from None
    # the decoded frames, and the float64 copy made while rescaling to HU (one frame at a time)
    check_bytes(expected, "decoding the pixel data", path)
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        encapsulated = bool(getattr(uid, "is_encapsulated", False))
    except ValueError:  # not a transfer syntax at all: the decoder says so
        return
    if uid is None or not encapsulated or "PixelData" not in ds:
        return
    data = ds.PixelData
    n_frames = _whole(ds, "NumberOfFrames", 1) or 1
    if str(uid) == str(RLELossless):
        if expected > RLE_MAX_RATIO * len(data):
            raise ACATInputError(
                f"the RLE-compressed pixel data ({len(data)} bytes) cannot hold the {expected} bytes of pixels that "
                "the header declares (RLE expands at most 64:1); the file is damaged", path)
        return
    rows, columns = _whole(ds, "Rows", 0), _whole(ds, "Columns", 0)
    samples = _whole(ds, "SamplesPerPixel", 1) or 1
    name = getattr(uid, "name", str(uid))
    sizer = _j2k_size if "2000" in name or "HTJ2K" in name or "High-Throughput" in name else _jpeg_size
    for index, frame in enumerate(_frames(data, n_frames)):
        try:
            size = sizer(frame)
        except struct.error:
            size = None
        if size is not None and size[0] * size[1] * max(size[2], 1) > rows * columns * samples:
            raise ACATInputError(
                f"frame {index + 1}'s compressed data declares {size[1]} x {size[0]} pixels x {size[2]} components, "
                f"more than the header's {columns} x {rows} x {samples}; the file is damaged", path)
