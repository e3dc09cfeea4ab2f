"""The user's cache folder: ``$ACAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/acat``, else ``~/.cache/acat``.

What lands there can always be made again (fetched sample data, `ACATLogic.model_check`'s measurements of
architectures): deleting the folder loses nothing but time.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(create: bool = True) -> Path:
    """The cache folder (made when ``create``)."""
    root = os.environ.get("ACAT_CACHE_DIR")
    path = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "acat"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
