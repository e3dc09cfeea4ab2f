"""Paths that SimpleITK can take, for files whose names are not valid UTF-8.

On Linux a file name is any bytes; Python hands a name that is not UTF-8 around as a ``str`` with lone
surrogates (PEP 383), and SimpleITK's wrapper turns such a string into a null C++ string and aborts the
whole process (SIGABRT, exit 134), leaving the temporary output file behind. So SimpleITK is only ever
given UTF-8 paths: when the real path is not, a private temporary folder (created with mkdtemp, named
in ASCII) holds a link to the file's folder, or to the file itself, and SimpleITK opens the link.
Where links cannot be made, the path is refused in one line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

from ..errors import ACATInputError

_RENAME_HINT = "rename it, or copy it to a name of ordinary characters"


def utf8_clean(path) -> bool:
    """Whether ``path`` encodes to UTF-8 (what SimpleITK can take)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def _link_folder(path: Path) -> Iterator[Path]:
    """A private ASCII-named folder, removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="acat-path-"))
    try:
        if not utf8_clean(root):
            raise ACATInputError("the path is not valid UTF-8 and neither is the temporary folder; " + _RENAME_HINT,
                                 path)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _link(target: Path, link: Path, path: Path) -> None:
    try:
        os.symlink(os.fsencode(os.path.abspath(target)), link)
    except (OSError, NotImplementedError) as exc:
        raise ACATInputError(f"the path is not valid UTF-8, which the NRRD/NIfTI library cannot open, and no link to "
                             f"it could be made ({exc.strerror or exc}); " + _RENAME_HINT, path) from None


@contextlib.contextmanager
def itk_path(path: Path, *, data_file: Optional[str] = None) -> Iterator[str]:
    """A UTF-8 path for SimpleITK to read or write ``path`` through (``path`` itself when it is UTF-8).

    ``data_file``: a detached NRRD header's relative ``data file`` (ITK looks for it beside the path it
    was given, so a link to the header alone would lose it).
    """
    path = Path(path)
    if utf8_clean(path):
        yield str(path)
        return
    with _link_folder(path) as root:
        if utf8_clean(path.name):  # only a folder name is the problem: link the folder
            _link(path.parent, root / "d", path)
            yield str(root / "d" / path.name)
            return
        suffix = "".join(s for s in path.suffixes[-2:] if utf8_clean(s)) or ".file"
        link = root / ("f" + suffix)
        _link(path, link, path)
        if data_file is not None and not os.path.isabs(data_file):
            parts = PurePosixPath(data_file).parts
            if ".." in parts:
                raise ACATInputError("a detached NRRD header whose name is not valid UTF-8 and whose data file lies in "
                                     "another folder cannot be read; " + _RENAME_HINT, path)
            (root / data_file).parent.mkdir(parents=True, exist_ok=True)
            _link(path.parent / data_file, root / data_file, path)
        yield str(link)
