"""Where ACATLogic (and ACATCli, the command the background process runs) live, so that the module works
from a repository checkout and when installed. Both packages always sit in the same folder:

* Repository checkout (the ``ACATSlicer/`` folder added as an additional module path, no build):
  the sibling folders ``../ACATLogic`` and ``../ACATCli``.
* Installed extension: installed beside the module's script (``./ACATLogic``, ``./ACATCli``).
* A Python environment where ``pip install acat-slicer`` put them on ``sys.path`` already.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional

MODULE_DIR = Path(__file__).resolve().parents[1]  # the folder holding ACATSlicer.py


def acatLogicParent() -> Optional[Path]:
    """The folder that contains the ``ACATLogic`` package, or None if it cannot be found."""
    for candidate in (MODULE_DIR, MODULE_DIR.parent):
        if (candidate / "ACATLogic" / "__init__.py").is_file():
            return candidate
    spec = importlib.util.find_spec("ACATLogic")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parents[1]
    return None


def ensureACATLogicImportable() -> Path:
    """Put the folder holding ``ACATLogic`` on ``sys.path`` (once). Raises RuntimeError if absent."""
    parent = acatLogicParent()
    if parent is None:
        raise RuntimeError("the ACATLogic package was not found next to the ACATSlicer module; "
                           "reinstall the ACAT extension or use a complete checkout of the repository")
    if str(parent) not in sys.path:
        sys.path.insert(0, str(parent))
    return parent


def childEnvironment(base: Optional[dict] = None) -> dict:
    """Environment for the background process: ``PYTHONPATH`` starts with ACATLogic's (and ACATCli's) folder,
    and output is unbuffered so that progress lines arrive as they are written."""
    env = dict(os.environ if base is None else base)
    parent = ensureACATLogicImportable()
    paths = [str(parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(parent)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env
