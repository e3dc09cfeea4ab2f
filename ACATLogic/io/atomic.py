"""Write outputs under a temporary name and rename them into place: a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


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


@contextlib.contextmanager
def atomic_path(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffixes); on success rename it to ``target``.

    The temporary file keeps the target's suffixes because writers choose the format from them.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{suffix}", dir=target.parent)
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


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    usual_mode(tmp)  # mkdtemp makes it private (0700); the output gets the usual mode
    try:
        yield tmp
        if target.exists() and not overwrite:  # another writer finished first: its result stays
            raise FileExistsError(target)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
