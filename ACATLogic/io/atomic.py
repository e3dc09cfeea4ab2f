"""Write outputs under a temporary name and rename them into place: a crash never leaves half a file.

A folder that replaces an existing one is swapped in with one ``renameat2(RENAME_EXCHANGE)`` on Linux
(the old folder is never missing, not even for a moment); elsewhere with two renames. Before the old
folder is deleted, ``protect`` (the command's inputs) is checked once more: nothing that is, or lies
inside, an input is ever deleted (`ACATLogic.io.path_relations`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .path_relations import check_replaceable


#: a write that fails with less than this free on the output's file system failed for want of space
DISK_FULL_BYTES = 4 << 20


def out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC / EDQUOT, or (for libraries that do not pass
    errno on, such as ITK's NRRD writer) less than `DISK_FULL_BYTES` left where it was writing."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


def _umask() -> int:
    """The process's file-creation mask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (private: 0600/0700) the mode a new file gets."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def _link_new(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` only if ``target`` does not exist, checked and done in one step (a hard
    link fails when the name is taken); where links are not supported, a check just before the rename."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        if target.exists():
            raise FileExistsError(target) from None
        os.replace(tmp, target)
    else:
        tmp.unlink()


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _temp_prefix(target: Path) -> str:
    """``.NAME.`` for the temporary file beside ``target``; ``.acat-`` when the name is not valid UTF-8 (the
    NRRD/NIfTI library is given the temporary name, see `ACATLogic.io.itk_paths`)."""
    return f".{target.name}." if _utf8(target.name) else ".acat-"


@contextlib.contextmanager
def atomic_path(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffixes); on success rename it to ``target``.

    The temporary file keeps the target's suffixes because writers choose the format from them.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(s for s in target.suffixes if _utf8(s))
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=f".partial{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    usual_mode(tmp)  # mkstemp makes it private (0600); the output gets the usual mode
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2``); False where that is not available."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):  # ENOSYS, EINVAL (file system without it), EOPNOTSUPP
        return False
    raise OSError(err, os.strerror(err), str(a))


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False, protect: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole.

    ``protect``: paths (a command's inputs) that must survive: an existing ``target`` that is or holds
    one of them is never replaced (`ACATInputError`).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".partial", dir=target.parent))
    usual_mode(tmp)  # mkdtemp makes it private (0700); the output gets the usual mode
    try:
        yield tmp
        if target.exists() and not overwrite:  # another writer finished first: its result stays
            raise FileExistsError(target)
        if target.exists():
            if protect:
                check_replaceable(target, protect)
            if _exchange(tmp, target):
                shutil.rmtree(tmp, ignore_errors=True)  # the old results, now at the temporary name
            else:
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
