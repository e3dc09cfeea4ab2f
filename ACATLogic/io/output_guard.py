"""Claiming an output before a command does any work: never an input, writable, and one writer at a time.

`claim_output` runs before anything expensive (reading the scan, loading a model) and refuses, in one
line naming the path:

* an output that is an input, holds an input, or lies inside an input folder (``--overwrite`` replaces
  the whole output: it deleted a DICOM series that lay inside ``--out``). Inputs are what the reader
  reads: the paths given, a DICOMDIR's folder, and a detached NRRD header's data file, wherever it lies.
  Paths are compared as given, with links resolved, and by device and inode (hard links, case-insensitive
  file systems, bind mounts);
* an output of the wrong kind (an existing file where a folder is written, or a folder where a file is),
  an existing output without ``--overwrite``, and, even with it, a non-empty folder that does not hold
  earlier results (a ``report.json``, no subfolder but ``dicom``): ``--out ~ --overwrite`` must not empty a home folder;
* a place that cannot be written (permissions, a read-only file system): found by creating the lock;
* an output that another ACAT run is writing now.

The lock is a file ``.NAME.lock`` beside the output. It is held with ``flock``, which the kernel releases
when its process ends however it ends, so a lock left by a killed run is stale by construction and is
taken over; it names the process holding it (PID, host, command) for the message. On file systems
without ``flock`` the lock is created with ``O_EXCL`` and a lock whose process no longer exists on this
host is taken over. The lock file is removed when the command ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from ..errors import ACATInputError, shown_path
from .itk_files import NRRD_SUFFIXES, file_kind
from .itk_guards import nrrd_data_file
from .path_relations import identity, is_within, same_path

PathLike = Union[str, os.PathLike]

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL lock only
    fcntl = None  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------------
# Inputs and how paths relate
# ------------------------------------------------------------------------------------------------
def input_paths(sources: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    """Every path an input consists of: each path given, a DICOMDIR file's folder (which is what is read),
    and a detached NRRD header's data file (or, for a list of data files, the header's folder)."""
    given = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    paths: list[Path] = []
    for source in map(Path, given):
        paths.append(source)
        if source.name.upper() == "DICOMDIR" and source.is_file():
            paths.append(source.parent)
        if file_kind(source) in NRRD_SUFFIXES and source.is_file():
            data = nrrd_data_file(source)
            paths.append(data if data is not None else source.parent)
    return paths


def input_problem(out: Path, inputs: Sequence[Path], *, kind: str) -> str:
    """Why writing ``out`` would touch an input, or "" (see the module docstring)."""
    for source in inputs:
        if same_path(out, source):
            which = "" if str(source) == str(out) else f" {shown_path(source)}"
            return f"the output would overwrite the input{which}; choose another output name"
        if is_within(out, source):
            return (f"the output lies inside the input folder {shown_path(source)}; ACAT never writes into an input "
                    "- choose another location")
        if kind == "folder" and is_within(source, out):
            return (f"the output folder holds the input {shown_path(source)}; writing the results there would "
                    "replace it - choose another output folder")
    return ""


# ------------------------------------------------------------------------------------------------
# The lock
# ------------------------------------------------------------------------------------------------
#: a lock file that names no holder and has not changed for this long was left behind (O_EXCL locks only)
STALE_EMPTY_LOCK_S = 60


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    pid, host = holder.get("pid"), holder.get("host")
    what = str(holder.get("command") or "ACAT")[:60]
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"another run ({what}, process {pid}{where})" if pid else "another ACAT run"


def _busy(out: Path, holder: dict) -> ACATInputError:
    return ACATInputError(f"{_describe(holder)} is writing this output now; wait for it to finish, or choose another "
                          f"output (if no such run exists, delete {lock_path(out).name})", out)


def _cannot_write(folder: Path, exc: OSError) -> ACATInputError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "choose an output in a folder you can write to"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space or choose another output"
    else:
        hint = "choose another output"
    return ACATInputError(f"cannot write here ({reason}); {hint}", folder)


class OutputLock:
    """An exclusive claim on one output path, held until `release` (see the module docstring)."""

    def __init__(self, out: Path, command: str):
        self.out = out
        self.path = lock_path(out)
        self.command = command
        self.fd: Optional[int] = None
        self.identity: Optional[tuple[int, int]] = None

    def _record(self) -> bytes:
        return (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}) + "\n").encode()

    def acquire(self) -> None:
        if fcntl is None:
            self._acquire_exclusive()
            return
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        for _ in range(20):  # a lock file removed or replaced by its holder between our open and our flock
            created = False
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(self.path, flags)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise _cannot_write(self.out.parent, exc) from None
            except OSError as exc:
                raise _cannot_write(self.out.parent, exc) from None
            if not self._flock(fd):  # no flock on this file system
                os.close(fd)
                if created:
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                self._acquire_exclusive()
                return
            # we hold a lock on the file we opened: it must still be the file at the lock's name
            info = os.fstat(fd)
            if identity(self.path) != (info.st_dev, info.st_ino):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, self._record())
            self.fd, self.identity = fd, (info.st_dev, info.st_ino)
            return
        raise ACATInputError("the output's lock file keeps changing; another run is starting - try again", self.out)

    def _flock(self, fd: int) -> bool:
        """Take the flock: True when held; False where the file system has no flock; raises when busy."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            except OSError:
                holder = {}
            os.close(fd)
            raise _busy(self.out, holder) from None
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
                return False
            os.close(fd)
            raise _cannot_write(self.out.parent, exc) from None
        return True

    def _acquire_exclusive(self) -> None:
        """Without flock: create the lock with O_EXCL; take over one whose process is gone (this host only)."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    holder = _holder(self.path.read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    continue
                pid = holder.get("pid")
                stale = (holder.get("host") == socket.gethostname() and isinstance(pid, int)
                         and not _process_alive(pid))
                with contextlib.suppress(OSError):  # no holder named, and not just being written: left behind
                    stale = stale or (not holder and time.time() - self.path.stat().st_mtime > STALE_EMPTY_LOCK_S)
                if not stale:
                    raise _busy(self.out, holder) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            except OSError as exc:
                raise _cannot_write(self.out.parent, exc) from None
            os.write(fd, self._record())
            self.fd, self.identity = fd, (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            return
        raise _busy(self.out, {})

    def release(self) -> None:
        if self.fd is None:
            return
        # remove the name first, while still holding the lock, and only if it is still ours
        if identity(self.path) == self.identity:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


# ------------------------------------------------------------------------------------------------
# Claiming an output
# ------------------------------------------------------------------------------------------------
@dataclass
class OutputClaim:
    """What `claim_output` established: the output (links to a folder resolved), the input paths to
    protect when the output is replaced, and the lock."""

    out: Path
    inputs: list[Path] = field(default_factory=list)
    lock: Optional[OutputLock] = None


#: the only subfolder `acat explain` writes into its results (``--dicom``: `ACATLogic.dicom_export`)
RESULT_SUBFOLDERS = ("dicom",)


def _earlier_results(folder: Path) -> bool:
    """Whether ``folder`` looks like what `acat explain` writes (its report.json, files and at most its
    ``dicom`` subfolder): the only kind of non-empty folder that --overwrite replaces (never a home folder
    or a study folder given by mistake)."""
    with os.scandir(folder) as it:
        entries = list(it)
    return any(e.name == "report.json" for e in entries) and not any(
        e.is_dir(follow_symlinks=False) and e.name not in RESULT_SUBFOLDERS for e in entries)


def _nonempty(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(True for _ in it)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, deepest first (to remove them again)."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            for made in missing[missing.index(path) + 1:]:
                with contextlib.suppress(OSError):
                    made.rmdir()
            raise _cannot_write(path.parent, exc) from None
    return missing


@contextlib.contextmanager
def claim_output(out: PathLike, sources: Union[PathLike, Sequence[PathLike]], *, kind: str, overwrite: bool,
                 command: str = "") -> Iterator[OutputClaim]:
    """Check ``out`` for a command about to write it from ``sources`` and hold its lock (module docstring).

    ``kind``: "folder" (``acat explain``) or "file" (``acat convert``). Raises `ACATInputError`.
    Folders created for the output's parent are removed again when the output was not written.
    """
    out = Path(out)
    if kind not in ("folder", "file"):
        raise ValueError(f"kind must be 'folder' or 'file', not {kind!r}")
    if out.name in ("", ".", ".."):  # "." or "..": a name is needed for the lock and the temporary folder
        out = Path(os.path.abspath(out))
    absolute = Path(os.path.abspath(out))
    if absolute.parent == absolute:
        raise ACATInputError("the output cannot be the root of the file system; choose a new folder", out)
    if kind == "folder" and out.is_symlink() and out.is_dir():
        out = Path(os.path.realpath(out))  # write where the link points, not over the link
    inputs = input_paths(sources)
    problem = input_problem(out, inputs, kind=kind)
    if problem:
        raise ACATInputError(problem, out)
    if os.path.lexists(out):
        if kind == "folder":
            if not out.is_dir():
                raise ACATInputError("the output path is an existing file, not a folder; the results are a folder of "
                                     "files - choose a folder name", out)
            try:
                filled = _nonempty(out)
            except OSError as exc:
                raise ACATInputError(f"cannot look into the output folder ({exc.strerror or exc})", out) from None
            if filled and not overwrite:
                raise ACATInputError("the output folder is not empty; choose another or add --overwrite", out)
            if filled and not _earlier_results(out):
                raise ACATInputError("the output folder does not hold earlier ACAT results (no report.json, or it holds "
                                     "folders); --overwrite replaces only those - choose another output folder", out)
            if filled and not os.access(out, os.W_OK | os.X_OK):
                raise ACATInputError("the output folder cannot be replaced (no write permission); choose another "
                                     "output", out)
        else:
            if out.is_dir():
                raise ACATInputError("the output is a folder; give a file name ending in .nrrd, .nii or .nii.gz", out)
            if not overwrite:
                raise ACATInputError("the output file exists already; add --overwrite to replace it", out)
    made = _make_parents(Path(os.path.abspath(out)).parent)
    lock = OutputLock(out, command or " ".join(["acat"] + sys.argv[1:2]))
    try:
        lock.acquire()
        yield OutputClaim(out, inputs, lock)
    finally:
        lock.release()
        if not os.path.lexists(out):
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def warn_if_short_of_space(out: Path, needed_bytes: int) -> None:
    """Log a warning when the output's file system has less free space than the results may take
    (``needed_bytes``: uncompressed; the NRRD files are compressed, so this is an upper bound)."""
    import logging
    import shutil

    folder = Path(os.path.abspath(out))
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed_bytes:
        logging.getLogger("acat").warning(
            "warning: %s has %.0f MB free; the results may need up to %.0f MB (compressed: usually less)",
            shown_path(folder), free / 2**20, needed_bytes / 2**20)
