"""The model catalogue: which model bundles are installed, found once for every front end (standard library only).

A bundle is a folder holding a ``model.json`` card (`ACATLogic.bundle`). The catalogue looks in
`models_dirs` - ``$ACAT_MODELS_DIR``, then ``Resources/Models`` beside ACATLogic, which is where the
repository and the installed Slicer extension keep the bundled models - and lists every bundle by its card's
``id`` (the first folder found with an id wins). A folder's own name is an alias: ``--model brain`` finds
``Resources/Models/brain/`` whatever id its card holds; a name is looked up folder by folder, in that order,
so a bundle in ``$ACAT_MODELS_DIR`` comes before a bundled one of the same name.

Only the card's JSON is read, never the weights, so the catalogue works before torch is installed (the
Slicer module lists the models before it offers to install torch). `ACATLogic.bundle.load_bundle` verifies a
bundle fully (card fields, sha256, tensor shapes) when it is used.

Used by ``acat explain --model`` (through `resolve_model`), the Slicer module's model selector and the web
viewer's model list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from .errors import ACATInputError

CARD_NAME = "model.json"
#: the bundle used when none is named: the 4-class brain stroke model (SIMULATED training data)
DEFAULT_MODEL = "brain-stroke-phantom"


@dataclass(frozen=True)
class ModelEntry:
    """One bundle as a front end lists it: ``title`` is what a selector shows."""

    id: str
    version: str
    task: str
    path: Path  # the bundle folder

    @property
    def title(self) -> str:
        return f"{self.id} {self.version} ({self.task})"


def models_dirs() -> list[Path]:
    """Where bundles are looked up: ``$ACAT_MODELS_DIR``, then ``Resources/Models`` beside ACATLogic."""
    dirs = [Path(os.environ["ACAT_MODELS_DIR"])] if os.environ.get("ACAT_MODELS_DIR") else []
    return dirs + [Path(__file__).resolve().parents[1] / "Resources" / "Models"]


def describe(folder) -> ModelEntry:
    """The entry of the bundle in ``folder`` from its card (no weights read). ValueError if unreadable."""
    folder = Path(folder)
    try:
        card = json.loads((folder / CARD_NAME).read_text(encoding="utf-8"))
        return ModelEntry(str(card["id"]), str(card["version"]), str(card["task"]), folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder} is not a readable model bundle ({exc})") from None


def _bundle_folders(dirs: Optional[list[Path]] = None) -> Iterator[Path]:
    for directory in models_dirs() if dirs is None else dirs:
        if directory.is_dir():
            yield from (card.parent for card in sorted(directory.glob(f"*/{CARD_NAME}")))


def discover(dirs: Optional[list[Path]] = None) -> list[ModelEntry]:
    """Every readable bundle in ``dirs`` (default `models_dirs`), one per card id, sorted by id. A folder
    whose card cannot be read is left out (`ACATLogic.bundle.load_bundle` says why when it is named)."""
    found: dict[str, ModelEntry] = {}
    for folder in _bundle_folders(dirs):
        try:
            entry = describe(folder)
        except ValueError:
            continue
        found.setdefault(entry.id, entry)
    return sorted(found.values(), key=lambda e: e.id)


def available_models() -> dict[str, Path]:
    """card id -> bundle folder of every bundle found in `models_dirs`."""
    return {entry.id: entry.path for entry in discover()}


def find(name: str) -> Optional[Path]:
    """The first bundle folder (in `models_dirs` order) whose card id or folder name is ``name``, or None."""
    for folder in _bundle_folders():
        if folder.name == name:
            return folder
        try:
            if describe(folder).id == name:
                return folder
        except ValueError:
            continue
    return None


def resolve_model(name_or_path: Optional[str]) -> Path:
    """A bundle folder from a path, a card id or a folder name; None: `DEFAULT_MODEL`, else the first bundle.
    Raises `ACATInputError` listing what is installed."""
    if name_or_path is None:
        folder = find(DEFAULT_MODEL)
        if folder is None:
            entries = discover()
            if not entries:
                raise ACATInputError("no bundled model is installed yet; pass --model PATH to a model bundle folder")
            folder = entries[0].path
        return folder
    path = Path(name_or_path)
    if path.exists():
        return path
    folder = find(name_or_path)
    if folder is not None:
        return folder
    known = ", ".join(e.id for e in discover()) or "none installed"
    raise ACATInputError(f"no model bundle {name_or_path!r} (bundled models: {known}); pass a folder path")
