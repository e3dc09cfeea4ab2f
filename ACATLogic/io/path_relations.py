"""How two paths relate: the same file, or one inside the other - by name (as given and with links
resolved) and by identity (device and inode: hard links, case-insensitive file systems, bind mounts).
Used before an output is claimed (`ACATLogic.io.output_guard`) and once more just before a folder is
replaced (`ACATLogic.io.atomic`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ACATInputError, shown_path


def identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _chains(path: Path) -> list[list[str]]:
    """The path and its ancestors, written out as given (made absolute) and with links resolved."""
    chains = []
    for text in {os.path.abspath(path), os.path.realpath(path)}:
        chain, current = [], text
        while True:
            chain.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        chains.append(chain)
    return chains


def same_path(a: Path, b: Path) -> bool:
    ida, idb = identity(a), identity(b)
    if ida is not None and ida == idb:
        return True
    return bool({os.path.abspath(a), os.path.realpath(a)} & {os.path.abspath(b), os.path.realpath(b)})


def is_within(child: Path, parent: Path) -> bool:
    """Whether ``child`` lies inside the folder ``parent`` (not ``parent`` itself), by name or by identity."""
    target_names = {os.path.abspath(parent), os.path.realpath(parent)}
    target_id = identity(parent)
    for chain in _chains(child):
        for ancestor in chain[1:]:
            if ancestor in target_names or (target_id is not None and identity(Path(ancestor)) == target_id):
                return True
    return False


def check_replaceable(target: Path, protect: Sequence[Path]) -> None:
    """Raise unless ``target`` can be replaced without deleting a protected path (checked again just before
    an output is swapped in: the inputs may have moved since the run started)."""
    for source in protect:
        if same_path(target, source) or is_within(source, target):
            raise ACATInputError(f"the output holds the input {shown_path(source)}; nothing was replaced - choose "
                                 "another output", target)
