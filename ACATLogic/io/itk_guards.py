"""Checks on NRRD and NIfTI files *before* ITK reads them, for the damaged files that make ITK's C
libraries hang, crash, print on stderr or allocate without bound (each found by the bad-input corpus or
by fuzzing, docs/RELIABILITY.md):

* NIfTI: an sform (or qform) holding NaN or infinity makes NIfTI's ``nifti_mat33_polar`` iterate
  forever (`check_nifti_orientation`).
* NRRD ``encoding: ascii`` whose data holds a long run without whitespace (binary data, zeros)
  overflows a fixed buffer in teem's ASCII reader: a segmentation fault (`check_nrrd_data`).
* A detached NRRD ``data file`` that is a pipe or a device would block or never end; lists and
  printf-style patterns of data files are not read at all.
* A header declaring more voxels than its file can hold (raw data too short, or more than a gzip
  stream of that size can expand to) would make ITK allocate first and fail later, or run for minutes.
* The libraries print warnings and "** ERROR" lines straight to file descriptor 2; `c_stderr_captured`
  keeps them off the terminal, and `library_reason` turns them into our one-line message.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import stat
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from ..errors import ACATInputError
from .limits import GZIP_MAX_RATIO

NIFTI_HEADER_BYTES = 352  # NIfTI-1 header plus its 4-byte extension flag
MAX_NRRD_HEADER_BYTES = 1 << 20
ASCII_ENCODINGS = ("ascii", "text", "txt")
#: no number in an ASCII NRRD needs more characters; teem's reader overflows somewhere past 1000
MAX_ASCII_TOKEN = 64
_SPACE = rb" \t\n\r\v\f"  # C's isspace(): what teem's fscanf("%s") stops at


@contextlib.contextmanager
def c_stderr_captured() -> Iterator[list[str]]:
    """Collect what the C libraries print on file descriptor 2 while reading (their warnings and errors).

    They would break the promise of one line on stderr per bad input; the text is kept for our own
    message instead. (Another thread's stderr output during the read is swallowed too; reads are short.)
    """
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a detached process): nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(line.strip() for line in tmp.read(65536).decode("utf-8", "replace").splitlines()
                         if line.strip())


def library_reason(printed: list[str], fallback: str) -> str:
    """The library's own "ERROR: ..." line when it printed one (the most specific reason), else ``fallback``."""
    errors = [line.split("ERROR:", 1)[1].strip() for line in printed if "ERROR:" in line]
    return errors[0][:160] if errors and errors[0] else fallback


# ------------------------------------------------------------------------------------------------
# NIfTI
# ------------------------------------------------------------------------------------------------
def check_nifti_orientation(path: Path, compressed: bool) -> None:
    """Refuse a NIfTI-1/-2 header whose sform or qform holds NaN or infinity (ITK would hang)."""
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as fh:
            head = fh.read(540)
    except (OSError, EOFError, zlib.error):
        return  # ITK says what is wrong with the file
    for order in "<>":
        if len(head) >= 348 and struct.unpack_from(order + "i", head, 0)[0] == 348:  # NIfTI-1
            qform, sform = struct.unpack_from(order + "hh", head, 252)
            quatern, srow = struct.unpack_from(order + "6f", head, 256), struct.unpack_from(order + "12f", head, 280)
            pixdim = struct.unpack_from(order + "4f", head, 76)
            break
        if len(head) >= 540 and struct.unpack_from(order + "i", head, 0)[0] == 540:  # NIfTI-2
            qform, sform = struct.unpack_from(order + "ii", head, 344)
            quatern, srow = struct.unpack_from(order + "6d", head, 352), struct.unpack_from(order + "12d", head, 400)
            pixdim = struct.unpack_from(order + "4d", head, 104)
            break
    else:
        return
    if sform != 0 and not all(math.isfinite(v) for v in srow):
        raise ACATInputError("the NIfTI header's orientation (sform) holds NaN or infinite values; the file is "
                             "damaged", path)
    if qform != 0 and not all(math.isfinite(v) for v in quatern + pixdim):
        raise ACATInputError("the NIfTI header's orientation (qform) or voxel size holds NaN or infinite values; "
                             "the file is damaged", path)


def _nifti_vox_offset(head: bytes) -> int:
    """Where the voxels start (the header's vox_offset), or the smallest possible offset when unreadable."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack_from(order + "i", head, 0)[0] == 348:
            offset = struct.unpack_from(order + "f", head, 108)[0]
            return int(offset) if math.isfinite(offset) and NIFTI_HEADER_BYTES <= offset < 1 << 40 else NIFTI_HEADER_BYTES
        if len(head) >= 540 and struct.unpack_from(order + "i", head, 0)[0] == 540:
            offset = struct.unpack_from(order + "q", head, 168)[0]
            return offset if 544 <= offset < 1 << 40 else 544
    return NIFTI_HEADER_BYTES


def _gzip_length(path: Path, enough: int) -> int:
    """How many bytes the gzip file inflates to, counted in 4 MB steps (never held in memory), stopping
    at ``enough``. A stream that is cut short or damaged counts up to where it breaks."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < enough:
                chunk = fh.read(min(1 << 22, enough - total))
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error):
        pass
    return total


def _nifti_layout(path: Path, compressed: bool) -> Optional[tuple[int, int]]:
    """(file size, vox_offset), or None when the file cannot be opened (ITK then says why)."""
    try:
        size = path.stat().st_size
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as fh:
            return size, _nifti_vox_offset(fh.read(540))
    except (OSError, EOFError, zlib.error):
        return None


def check_nifti_size(path: Path, compressed: bool, shown: str, n_bytes: int) -> None:
    """Refuse a NIfTI header that declares more voxel data than the file can hold (from its size alone)."""
    layout = _nifti_layout(path, compressed)
    if layout is not None:
        size, offset = layout
        _check_available("NIfTI", path, "gzip" if compressed else "raw", size - (0 if compressed else offset),
                         shown, n_bytes)


def check_nifti_gzip_stream(path: Path, shown: str, n_bytes: int) -> None:
    """Refuse a .nii.gz whose gzip stream holds fewer voxel bytes than its header declares.

    ITK reads a short gzip stream without complaint and leaves the rest of the volume zero (a 1 MB file
    read as gigabytes of "HU 0..0"): the stream is inflated once, in steps, to count its bytes. Called
    after the memory budget check, so the count is bounded too.
    """
    layout = _nifti_layout(path, True)
    if layout is None:
        return
    offset = layout[1]
    held = _gzip_length(path, offset + n_bytes) - offset
    if held < n_bytes:
        raise ACATInputError(f"the NIfTI header declares {shown} voxels ({n_bytes} bytes) but the gzip data holds "
                             f"only {max(held, 0)} bytes of voxels (truncated or damaged)", path)


# ------------------------------------------------------------------------------------------------
# NRRD
# ------------------------------------------------------------------------------------------------
def _nrrd_header(path: Path) -> Optional[tuple[list[str], int]]:
    """The header's lines (latin-1 text) and its length in bytes (to the blank line that ends it), or None
    when the file cannot be read or no header ends within `MAX_NRRD_HEADER_BYTES`."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(MAX_NRRD_HEADER_BYTES)
    except OSError:
        return None
    ends = [i for i in (head.find(b"\n\n"), head.find(b"\r\n\r\n")) if i >= 0]
    if ends:
        end = min(ends)
        header_bytes = end + (2 if head[end:end + 2] == b"\n\n" else 4)
    elif len(head) < MAX_NRRD_HEADER_BYTES:  # a detached header may end without a blank line
        end = header_bytes = len(head)
    else:
        return None
    return head[:end].decode("latin-1").splitlines(), header_bytes


#: header lines longer than this crash ITK's NRRD reader (NrrdIO) when it cannot parse them: its error
#: messages are formatted into fixed buffers (a segmentation fault from about 900 characters on, found by
#: `make fuzz`); a 3-D NRRD's longest field, "space directions", needs about 250
MAX_NRRD_FIELD_LINE = 512


def _long_field_line(lines: list[str]) -> Optional[str]:
    """The first field line longer than `MAX_NRRD_FIELD_LINE` (comments, key/value pairs and "content",
    which NrrdIO stores without parsing, may be longer), or None."""
    for line in lines[1:]:
        if len(line) <= MAX_NRRD_FIELD_LINE or line.startswith("#") or line.lower().startswith("content:"):
            continue
        kv, field = line.find(":="), line.find(": ")
        if kv >= 0 and (field < 0 or kv < field):
            continue
        return line
    return None


def _nrrd_layout(path: Path) -> Optional[tuple[str, Optional[Path], int]]:
    """(encoding, the file holding the voxels, where they start in it) from an NRRD header.

    The data file is None for a list or a printf-style pattern of data files. None when the header
    cannot be parsed at all (ITK then says why).
    """
    header = _nrrd_header(path)
    if header is None:
        return None
    lines, header_bytes = header
    fields = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields.setdefault(key.strip().lower().replace(" ", ""), value.lstrip("=").strip())
    encoding = fields.get("encoding", "raw").lower()
    detached = fields.get("datafile")
    if detached is None:
        return encoding, path, header_bytes
    if detached.upper().startswith("LIST") or re.search(r"%\S*d|\s", detached):
        return encoding, None, 0
    detached = os.fsdecode(detached.encode("latin-1"))  # the name's own bytes, as the file system has them
    return encoding, (Path(detached) if Path(detached).is_absolute() else path.parent / detached), 0


def nrrd_data_file(path: Path) -> Optional[Path]:
    """The file holding a detached NRRD header's voxels (``path`` itself for an attached one); None for a
    list or pattern of data files, or a header that cannot be parsed."""
    layout = _nrrd_layout(path)
    return None if layout is None else layout[1]


def _has_long_token(fh: BinaryIO, limit: int) -> bool:
    """Whether the stream holds more than ``limit`` bytes without whitespace (read in 4 MB chunks)."""
    long_run = re.compile(rb"[^%s]{%d,}" % (_SPACE, limit + 1))
    lead_run = re.compile(rb"[^%s]*" % _SPACE)
    tail_run = re.compile(rb"[^%s]*\Z" % _SPACE)
    carry = 0  # the run of non-whitespace that the previous chunk ended with
    while chunk := fh.read(1 << 22):
        if long_run.search(chunk):
            return True
        lead = lead_run.match(chunk).end()
        if lead == len(chunk):
            carry += lead
        else:
            if carry + lead > limit:
                return True
            carry = len(tail_run.search(chunk).group())
        if carry > limit:
            return True
    return False


def check_nrrd_files(path: Path) -> None:
    """Before ITK opens anything: a header ITK's parser survives, one data file, and a regular one (ITK opens
    it with the header already)."""
    header = _nrrd_header(path)
    if header is None:
        try:
            complete = path.stat().st_size < MAX_NRRD_HEADER_BYTES
        except OSError:
            return  # ITK says why it cannot open the file
        if not complete:
            raise ACATInputError(f"the NRRD header does not end within its first {MAX_NRRD_HEADER_BYTES >> 20} MB (no "
                                 "blank line); the file is damaged", path)
        return
    line = _long_field_line(header[0])
    if line is not None:
        field = line.split(":", 1)[0][:40]
        raise ACATInputError(f"the NRRD header's line '{field}: ...' is {len(line)} characters long (a field needs a few "
                             "hundred at most); the header is damaged", path)
    layout = _nrrd_layout(path)
    if layout is None:
        return
    data_path = layout[1]
    if data_path is None:
        raise ACATInputError("the NRRD header lists several data files (or a file-name pattern); ACAT reads an NRRD "
                             "whose voxels are in the file itself or in one data file", path)
    try:
        mode = data_path.stat().st_mode
    except (OSError, ValueError):  # missing, or a name with a NUL byte: ITK says so
        return
    if not stat.S_ISREG(mode):
        raise ACATInputError("the NRRD data file is not a regular file (a pipe, socket or device)", data_path)


#: what ITK's NRRD reader (NrrdIO) decodes; "bzip2" it refuses only after allocating the declared voxels
NRRD_ENCODINGS = ("raw", "gzip", "gz", "hex") + ASCII_ENCODINGS


def check_nrrd_data(path: Path, shown: str, n_bytes: int, n_voxels: Optional[int] = None) -> None:
    """Refuse NRRD voxel data that cannot hold the declared voxels, or that ITK's ASCII reader would crash on."""
    layout = _nrrd_layout(path)
    if layout is None or layout[1] is None:
        return
    encoding, data_path, offset = layout
    if encoding not in NRRD_ENCODINGS:
        raise ACATInputError(f"NRRD encoding {encoding!r} is not supported (ACAT reads raw, gzip, hex and ascii); "
                             "save the volume again with gzip or raw encoding", path)
    try:
        info = data_path.stat()
    except (OSError, ValueError):
        return  # ITK says the data file is missing
    if not stat.S_ISREG(info.st_mode):
        return
    available = max(info.st_size - offset, 0)
    _check_available("NRRD", data_path, encoding, available, shown, n_bytes)
    if encoding == "hex" and available < 2 * n_bytes:  # two hex digits per byte
        raise ACATInputError(f"the NRRD header declares {shown} voxels ({n_bytes} bytes, {2 * n_bytes} hex digits) but "
                             f"the file holds only {available} bytes of voxel data (truncated?)", data_path)
    if encoding in ASCII_ENCODINGS and n_voxels is not None and available < 2 * n_voxels - 1:
        raise ACATInputError(f"the NRRD header declares {shown} voxels but the file holds only {available} bytes of "
                             "voxel text, less than one digit and one space per voxel (truncated?)", data_path)
    if encoding in ASCII_ENCODINGS:
        with open(data_path, "rb") as fh:
            fh.seek(offset)
            if _has_long_token(fh, MAX_ASCII_TOKEN):
                raise ACATInputError("the NRRD header says the voxels are ASCII text, but the data holds a run of "
                                     f"more than {MAX_ASCII_TOKEN} characters without a space (binary data?); "
                                     "the file is damaged", data_path)


def _check_available(fmt: str, data_path: Path, encoding: str, available: int, shown: str, n_bytes: int) -> None:
    available = max(available, 0)
    if encoding == "raw" and available < n_bytes:
        raise ACATInputError(f"the {fmt} header declares {shown} voxels ({n_bytes} bytes) but the file holds only "
                             f"{available} bytes of voxel data (truncated?)", data_path)
    if encoding in ("gzip", "gz") and n_bytes > GZIP_MAX_RATIO * available + 65536:
        raise ACATInputError(f"the {fmt} header declares {shown} voxels ({n_bytes} bytes), more than its "
                             f"{available} bytes of compressed data can hold; the file is damaged", data_path)
