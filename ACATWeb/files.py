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
import stat
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
        """Whether ``path`` resolves inside; a name no file can have (a NUL byte, a lone surrogate) is not."""
        try:
            resolved = _resolved(path)
        except (ValueError, OSError):
            return False
        return any(resolved == folder or folder in resolved.parents for folder in self.folders)

    def check(self, text: str) -> Path:
        """The path the page asked for (``~`` expanded), if it and what it leads the reader to lie inside;
        else `OutsideAllowedFolders`. A text that is no path at all (a NUL byte, characters no file name can
        hold), and a path inside that cannot be looked at (too long, unreadable, a named pipe), are one
        `ACATInputError` line that says nothing about what lies outside."""
        text = str(text).strip()
        if "\0" in text:
            raise ACATInputError("a path cannot hold a NUL byte; type or paste the path again")
        try:
            os.fsencode(text)
        except UnicodeError:
            raise ACATInputError("this path holds characters that no file name can hold; type or paste it "
                                 "again") from None
        path = Path(os.path.expanduser(text))
        if not self.inside(path):
            raise OutsideAllowedFolders()
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return path  # inside and missing: the reader says "no such file"
        except OSError as exc:  # inside: saying why reveals nothing of the outside
            raise ACATInputError(f"cannot open this path ({exc.strerror or type(exc).__name__})") from None
        if stat.S_ISDIR(mode):
            self._check_links_under(path)
        elif not stat.S_ISREG(mode):  # a named pipe would block the reader, a device has no end
            raise ACATInputError("this path is neither a file nor a folder (a named pipe or a device?); open a "
                                 "CT file or folder")
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
