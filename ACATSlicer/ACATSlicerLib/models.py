"""The models a front end offers: ACATLogic's model catalogue, then the bundle folders the user added.

Listing reads only each bundle's ``model.json`` (`ACATLogic.catalogue`, standard library only, so the list
shows before torch is installed). A folder added with "Add model..." is verified fully - card fields, weight
sha256, tensor names and shapes - by `ACATLogic.bundle.load_bundle` before it is offered, and remembered in
a store (the Slicer module's: the application settings, so it is offered again in the next session).
"""

from __future__ import annotations

import json
from pathlib import Path
from .paths import ensureACATLogicImportable


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


class MemoryStore:
    """Remembers the added folders for this session only (the web viewer, tests)."""

    def __init__(self, folders=()) -> None:
        self.folders = [str(f) for f in folders]

    def load(self) -> list:
        return list(self.folders)

    def save(self, folders: list) -> None:
        self.folders = [str(f) for f in folders]


class SettingsStore:
    """Remembers the added folders in a QSettings-like object (``value(key, default)``, ``setValue(key,
    value)``: the Slicer module passes ``slicer.app.userSettings()``), as one JSON list of paths - a
    QSettings list of one element reads back as a plain string."""

    KEY = "ACAT/AddedModels"

    def __init__(self, settings) -> None:
        self.settings = settings

    def load(self) -> list:
        text = self.settings.value(self.KEY, "")
        try:
            folders = json.loads(text) if text else []
        except (TypeError, ValueError):
            return []
        return [str(f) for f in folders if isinstance(f, str)] if isinstance(folders, list) else []

    def save(self, folders: list) -> None:
        self.settings.setValue(self.KEY, json.dumps([str(f) for f in folders]))


class ModelList:
    """The catalogue's entries (`ACATLogic.catalogue.ModelEntry`: ``id``, ``title``, ``path``) followed by
    the added folders; a folder offered twice (a bundled model added again by its path) appears once.
    ``store``: where added folders are remembered (default: this session only). A remembered folder that
    is gone or no longer a bundle is left out of the list (and stays remembered, for a drive mounted later)."""

    def __init__(self, store=None) -> None:
        self.store = store if store is not None else MemoryStore()

    def _added(self) -> list:
        ensureACATLogicImportable()
        from ACATLogic.catalogue import describe

        entries = []
        for folder in self.store.load():
            try:
                entries.append(describe(folder))
            except ValueError:
                continue
        return entries

    def choices(self) -> list:
        ensureACATLogicImportable()
        from ACATLogic import catalogue

        choices = []
        for entry in catalogue.discover() + self._added():
            if not any(_same(entry.path, c.path) for c in choices):
                choices.append(entry)
        return choices

    def defaultChoice(self):
        """The entry to preselect: the catalogue's default model (`ACATLogic.catalogue.DEFAULT_MODEL`), else
        the first one offered, else None."""
        ensureACATLogicImportable()
        from ACATLogic.catalogue import DEFAULT_MODEL

        choices = self.choices()
        return next((c for c in choices if c.id == DEFAULT_MODEL), choices[0] if choices else None)

    def add(self, folder):
        """Verify a bundle folder (card, sha256, tensor shapes), offer and remember it; raises ACATInputError
        (a ValueError) if it is invalid. Returns the entry as `choices` lists it (the bundled one if bundled)."""
        ensureACATLogicImportable()
        from ACATLogic.bundle import load_bundle
        from ACATLogic.catalogue import describe

        load_bundle(Path(folder))
        entry = describe(folder)
        kept = [f for f in self.store.load() if not _same(f, entry.path)]
        self.store.save(kept + [str(Path(entry.path).resolve())])
        return next(c for c in self.choices() if _same(c.path, entry.path))

    @property
    def added(self) -> list:
        """The added folders' entries that are offered now."""
        return self._added()
