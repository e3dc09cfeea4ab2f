"""The results as one zip for the browser: written atomically inside the viewer's private folder.

The zip holds the results folder that ``acat explain`` wrote, as it is (`zip_folder`; subfolders too). The
NRRD files are already compressed (gzip inside NRRD), so they are stored, not deflated again.
The zip is written under a temporary name in the same folder and renamed into place: a download that
starts while it is being written never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path


def zip_files(files, target: Path, arcdir: str = "", root=None) -> Path:
    """Zip ``files`` (paths) into ``target`` as ``arcdir/<name>`` (``root``: as their path under it);
    returns ``target``."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            for path in files:
                path = Path(path)
                name = path.relative_to(root).as_posix() if root is not None else path.name
                archive.write(path, f"{arcdir}/{name}" if arcdir else name)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def zip_folder(folder: Path, target: Path, arcdir: str = "") -> Path:
    """Zip every file under ``folder`` into ``target`` as ``arcdir/<path inside folder>``; returns ``target``."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return zip_files(files, target, arcdir, root=folder)


def private_folder(prefix: str = "acat-view-") -> Path:
    """A new folder only this user can read (mode 0700, as `tempfile.mkdtemp` makes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
