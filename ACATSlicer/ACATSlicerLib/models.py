"""The models a front end offers: ACATLogic's model catalogue, then the bundle folders the user added.

Listing reads only each bundle's ``model.json`` (`ACATLogic.catalogue`, standard library only, so the list
shows before torch is installed). A folder added with "Add model..." is verified fully - card fields, weight
sha256, tensor names and shapes - by `ACATLogic.bundle.load_bundle` before it is offered.
"""

from __future__ import annotations

from pathlib import Path

from .paths import ensureACATLogicImportable


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


class ModelList:
    """The catalogue's entries (`ACATLogic.catalogue.ModelEntry`: ``id``, ``title``, ``path``) followed by
    the added folders; a folder offered twice (a bundled model added again by its path) appears once."""

    def __init__(self) -> None:
        self.added: list = []

    def choices(self) -> list:
        ensureACATLogicImportable()
        from ACATLogic import catalogue

        choices = []
        for entry in catalogue.discover() + self.added:
            if not any(_same(entry.path, c.path) for c in choices):
                choices.append(entry)
        return choices

    def add(self, folder):
        """Verify a bundle folder (card, sha256, tensor shapes) and offer it; raises ACATInputError (a
        ValueError) if it is invalid. Returns the entry as `choices` lists it (the bundled one if bundled)."""
        ensureACATLogicImportable()
        from ACATLogic.bundle import load_bundle
        from ACATLogic.catalogue import describe

        load_bundle(Path(folder))
        entry = describe(folder)
        self.added = [m for m in self.added if not _same(m.path, entry.path)] + [entry]
        return next(c for c in self.choices() if _same(c.path, entry.path))
