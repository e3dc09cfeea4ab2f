"""Listing every file under a folder without recursion, and without passing over what cannot be read.

`os.walk` recurses once per level (1,100 nested folders raised RecursionError) and by default skips
a folder it cannot list without a word, so half a series behind a folder without read permission was
read as a complete, shorter one. `list_files` walks with an explicit stack and reports every folder it
could not list; the DICOM reader refuses the input when there is any (`ACATLogic.io.read`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FolderListing:
    """The regular files (and file links) under a folder, in a stable order, and what could not be listed."""

    files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (folder, reason)


def list_files(root: Path) -> FolderListing:
    """Every file under ``root``: a folder's own files (sorted by name) before its subfolders (sorted).

    Folder links are never followed (no cycles, nothing outside the input); file links are listed like
    files (the reader opens what they point to). A folder that cannot be listed is recorded with the
    reason, never silently skipped. ``root`` itself must be listable: its error is raised (OSError).
    """
    listing = FolderListing()
    stack: list[Path] = [Path(root)]
    first = True
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if first:
                raise
            listing.unreadable.append((folder, exc.strerror or type(exc).__name__))
            continue
        first = False
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links, as os.walk does
            except OSError:
                is_dir = False
            if is_dir:
                if not entry.is_symlink():
                    subfolders.append(Path(entry.path))
            else:
                listing.files.append(Path(entry.path))
        stack.extend(reversed(subfolders))
    return listing
