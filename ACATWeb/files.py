"""Which files the page may open: those inside the folders its owner chose, and nothing else.

The page opens a CT by a path typed into it. Whoever drives the page could type any path the viewer's
owner can read, so paths are limited to the folders named when the viewer started: the folder given as
``acat view INPUT`` (a file's folder, for a file), each ``--allow-dir DIR``, and the viewer's private
folder (the demo case). A path is inside when it is, after resolving every symbolic link; and so must be
what the file or folder leads the reader to: every link under a DICOM folder (or the folder a DICOMDIR
indexes), and an NRRD header's detached ``data file`` (a header inside a folder can name any file on the computer).

Outside is refused with one message (`OUTSIDE`), the same whether the path exists or not, is a file or a
folder, is readable or not: nothing is looked at outside the folders but the links' targets' names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ACATLogic.errors import ACATInputError

OUTSIDE = ("this path is outside the folders this viewer may open; start acat view with that folder "
           "(acat view FOLDER, or --allow-dir FOLDER)")
#: a DICOM folder's links are checked up to this many entries (the reader reads no more than a folder holds)
MAX_ENTRIES_CHECKED = 200_000


class OutsideAllowedFolders(ACATInputError):
    """A path (or what it leads to) outside the folders the viewer may open."""

    def __init__(self):
        super().__init__(OUTSIDE)


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


class AllowedFolders:
    """``folders``: the folders (and everything under them) the page may open."""

    def __init__(self, folders: Iterable[Path]):
        self.folders = tuple(dict.fromkeys(_resolved(Path(f)) for f in folders))

    def inside(self, path: Path) -> bool:
        resolved = _resolved(path)
        return any(resolved == folder or folder in resolved.parents for folder in self.folders)

    def check(self, text: str) -> Path:
        """The path the page asked for (``~`` expanded), if it and what it leads the reader to lie inside;
        else `OutsideAllowedFolders`."""
        path = Path(os.path.expanduser(str(text).strip()))
        if not self.inside(path):
            raise OutsideAllowedFolders()
        if path.is_dir():
            self._check_links_under(path)
        elif path.name.upper() == "DICOMDIR":  # the reader reads the folder it indexes
            self._check_links_under(path.parent)
        else:
            self._check_data_file(path)
        return path

    def _check_links_under(self, folder: Path) -> None:
        seen = 0
        for root, dirs, files in os.walk(folder, followlinks=False):
            for name in dirs + files:
                seen += 1
                entry = Path(root) / name
                if entry.is_symlink() and not self.inside(entry):
                    raise OutsideAllowedFolders()
            if seen > MAX_ENTRIES_CHECKED:
                raise ACATInputError(f"the folder holds more than {MAX_ENTRIES_CHECKED} files and folders; "
                                     "open the folder of one series", folder)

    def _check_data_file(self, path: Path) -> None:
        from ACATLogic.io.itk_files import NRRD_SUFFIXES
        from ACATLogic.io.itk_guards import nrrd_data_file

        if not path.name.lower().endswith(NRRD_SUFFIXES):
            return
        # relative to the header as given (what ITK opens) and as resolved: both must stay inside
        for header in {path, _resolved(path)}:
            data = nrrd_data_file(header)
            if data is not None and not self.inside(data):
                raise OutsideAllowedFolders()
