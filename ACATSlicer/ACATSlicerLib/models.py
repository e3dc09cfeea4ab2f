"""The models the panel offers: the bundled ones and the folders the user added.

Listing reads only each bundle's ``model.json`` (plain JSON, so the list shows before torch is
installed). A folder added with "Add model..." is verified fully - card fields, weight sha256, tensor
names and shapes - by `ACATLogic.bundle.load_bundle` before it is offered.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .paths import acatLogicParent

CARD_NAME = "model.json"


@dataclass(frozen=True)
class ModelChoice:
    id: str
    title: str  # what the selector shows, e.g. "brain-stroke-phantom 1.0.0 (brain_stroke)"
    path: str  # the bundle folder


def modelsDirs() -> list[Path]:
    """``$ACAT_MODELS_DIR``, then ``Resources/Models`` beside ACATLogic (as `ACATLogic.bundle.models_dirs`)."""
    dirs = [Path(os.environ["ACAT_MODELS_DIR"])] if os.environ.get("ACAT_MODELS_DIR") else []
    parent = acatLogicParent()
    if parent is not None:
        dirs.append(parent / "Resources" / "Models")
    return dirs


def describeBundle(folder) -> ModelChoice:
    """A `ModelChoice` from a bundle's card (no weights read). ValueError if the card is unreadable."""
    folder = Path(folder)
    try:
        card = json.loads((folder / CARD_NAME).read_text(encoding="utf-8"))
        return ModelChoice(str(card["id"]), f"{card['id']} {card['version']} ({card['task']})", str(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder} is not a readable model bundle ({exc})") from None


def bundledModels() -> list[ModelChoice]:
    """Every bundle found in `modelsDirs`, first occurrence of an id wins, sorted by id."""
    found: dict[str, ModelChoice] = {}
    for directory in modelsDirs():
        if not directory.is_dir():
            continue
        for card in sorted(directory.glob(f"*/{CARD_NAME}")):
            try:
                choice = describeBundle(card.parent)
            except ValueError:
                continue  # a broken folder is not offered; "Add model..." would say why
            found.setdefault(choice.id, choice)
    return sorted(found.values(), key=lambda c: c.id)


def verifyBundle(folder) -> ModelChoice:
    """Load and verify a bundle folder (card, sha256, tensor shapes). Raises ACATInputError/ValueError."""
    from ACATLogic.bundle import load_bundle

    load_bundle(Path(folder))
    return describeBundle(folder)
