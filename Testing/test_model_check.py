"""`ACATLogic.model_check`'s cache: a passing architecture check measured once, reused by every later load.

The meta-device check costs a fresh process 1.3-1.9 s (PyTorch imports its compiler and sympy for the
meta kernels); what it finds depends only on the config, the input size, the model code and PyTorch. The
numbers kept must still meet each load's own budget and labels, a damaged entry must be measured again, and a
failure or an architecture from an installed package must never be kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ACATLogic import model_check
from ACATLogic.bundle import load_bundle, read_card
from ACATLogic.errors import ACATInputError
from ACATLogic.models.registry import _REGISTRY, register_model

from bundles import make_random_bundle

ROLES = ("baseline", "autoencoder", "acat")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """This test's folder of kept checks (the folder of this code version inside it)."""
    monkeypatch.setenv(model_check.CHECK_DIR_ENV, str(tmp_path / "checks"))
    return model_check._checks_dir()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "b", size=32, slices=3, steps=2)


def _check(card: dict, role: str, **changes) -> str:
    entry = card["models"][role]
    kwargs = dict(slices=card["input"]["slices"], size=tuple(card["input"]["size"]), n_labels=len(card["labels"]))
    kwargs.update(changes)
    return model_check.architecture_problem(role, entry["architecture"], entry["config"], **kwargs)


def test_a_passing_check_is_kept_and_a_later_load_measures_nothing(bundle, cache, monkeypatch):
    loaded = load_bundle(bundle)
    kept = {json.loads(p.read_text())["n_bytes"]: json.loads(p.read_text()) for p in cache.glob("*.json")}
    assert len(kept) == 3 and not list(cache.glob(".*"))  # one per role, no temporary left
    for role in ROLES:
        model = loaded.models[role]
        n_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        assert n_bytes in kept, role  # the meta build counted what the real one holds
        shape = kept[n_bytes]["out_shape"]
        assert shape == ([1, 4] if role != "autoencoder" else [1, 3, 1, 32, 32]), role

    def measured_again(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(model_check, "_measure", measured_again)
    again = load_bundle(bundle)  # every role from the cache
    assert again.labels == loaded.labels
    card = read_card(bundle)
    # the kept numbers are compared with this load's budget and labels, not trusted as an answer
    assert "would have 0.0 GiB of weights (at most 0.0 GiB)" in _check(card, "baseline", budget_bytes=1000)
    assert _check(card, "acat", n_labels=3) == "the acat model gives outputs of shape (1, 4), not one per label (3)"
    assert _check(card, "autoencoder", n_labels=3) == ""  # an autoencoder gives images, not labels


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"n_bytes": -1, "out_shape": null}',
                                     b'{"n_bytes": true, "out_shape": [1, 4]}', b'{"n_bytes": 10, "out_shape": "x"}',
                                     b'{"n_bytes": 10}', b"\xff" * 10000, b"[" * 4000])
def test_a_damaged_entry_is_measured_again_and_replaced(bundle, cache, monkeypatch, content):
    card = read_card(bundle)
    assert _check(card, "baseline") == ""
    (entry,) = cache.glob("*.json")
    good = entry.read_text()
    entry.write_bytes(content)
    calls = []
    real = model_check._measure
    monkeypatch.setattr(model_check, "_measure", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert _check(card, "baseline") == ""
    assert len(calls) == 1 and entry.read_text() == good


def test_failures_are_not_kept_and_the_key_holds_the_input_size_and_the_code(bundle, cache, monkeypatch):
    card = read_card(bundle)
    problem = _check(card, "baseline", size=(4, 4))  # three 2x2 poolings cannot shrink 4 x 2 hemispheres
    assert problem.startswith("the baseline architecture 'brain_mtl' does not run on the card's input of 3 x 4 x 4")
    assert problem == _check(card, "baseline", size=(4, 4)) and not cache.exists()
    assert "would have" in _check(card, "baseline", budget_bytes=10) and not cache.exists()
    entry = card["models"]["baseline"]
    key = dict(role="baseline", architecture=entry["architecture"], config=entry["config"], slices=3, size=(32, 32))
    here = model_check._cache_file(**key)
    assert here is not None and here.parent == cache
    assert model_check._cache_file(**{**key, "size": (32, 64)}) != here
    assert model_check._cache_file(**{**key, "slices": 4}) != here
    assert model_check._cache_file(**{**key, "config": {**entry["config"], "hidden": 9}}) != here
    monkeypatch.setattr(model_check, "_code_digest", "0" * 64)  # another version of the model code
    assert model_check._cache_file(**key) != here


def test_an_installed_packages_architecture_is_always_measured(cache):
    name = "test-only-linear-classifier"

    @register_model(name)
    class Linear(torch.nn.Module):
        def __init__(self, n: int = 4):
            super().__init__()
            self.config, self.registry_name = {"n": n}, name
            self.fc = torch.nn.Linear(1, n)

        def forward(self, x):
            return self.fc(x.mean(dim=(1, 2, 3, 4)).unsqueeze(1))

    try:
        assert model_check._cache_file("baseline", name, {"n": 4}, 3, (8, 8)) is None  # its code is not in the key
        assert model_check.architecture_problem("baseline", name, {"n": 4}, slices=3, size=(8, 8), n_labels=4) == ""
        assert not cache.exists()
    finally:
        _REGISTRY.pop(name, None)


def test_an_unwritable_cache_is_skipped(bundle, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be\n")
    monkeypatch.setenv(model_check.CHECK_DIR_ENV, str(blocker))
    assert load_bundle(bundle).labels == ["none", "left", "right", "both"]
    card_damaged = read_card(bundle)
    card_damaged["models"]["baseline"]["config"]["widths"] = [0, 4, 8, 8, 8, 8, 8]
    assert "must be whole numbers from 1 to 8192, not 0" in _check(card_damaged, "baseline")


def _planted(cache: Path, card: dict) -> Path:
    """A kept check that would let an architecture of 12.9 GiB through, at that architecture's own key."""
    entry = card["models"]["baseline"]
    config = {**entry["config"], "widths": [8000] * 7}
    path = model_check._cache_file("baseline", entry["architecture"], config, card["input"]["slices"],
                                   card["input"]["size"])
    assert path is not None and path.parent == cache
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps({"n_bytes": 0, "out_shape": [1, 4]}))
    path.chmod(0o600)
    return path


def _too_big(card: dict) -> str:
    return _check({**card, "models": {"baseline": {**card["models"]["baseline"],
                                                  "config": {**card["models"]["baseline"]["config"],
                                                             "widths": [8000] * 7}}}}, "baseline")


def test_only_a_private_regular_file_in_a_private_folder_is_trusted(bundle, cache, tmp_path):
    card = read_card(bundle)
    assert "would have 12.9 GiB of weights" in _too_big(card)  # measured: refused, and not kept
    path = _planted(cache, card)
    assert _too_big(card) == ""  # what this user's own cache says is believed: the trust boundary is the folder
    path.chmod(0o666)  # anyone may write it
    assert "would have 12.9 GiB" in _too_big(card)
    path.chmod(0o600)
    cache.chmod(0o777)  # anyone may put files in the folder
    assert "would have 12.9 GiB" in _too_big(card)
    cache.chmod(0o700)
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(path, 4242, -1)
        assert "would have 12.9 GiB" in _too_big(card)
        os.chown(path, 0, -1)
    assert _too_big(card) == ""
    path.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"n_bytes": 0, "out_shape": [1, 4]}))
    elsewhere.chmod(0o600)
    path.symlink_to(elsewhere)  # a link is not followed
    assert "would have 12.9 GiB" in _too_big(card)
    path.unlink()
    os.mkfifo(path)  # nor is a pipe waited on
    assert "would have 12.9 GiB" in _too_big(card)


def test_a_config_naming_an_outside_architecture_is_always_measured(cache):
    name = "test-only-outside-backbone"
    from ACATLogic.models.mtl import BrainMTL

    register_model(name)(type("OutsideMTL", (BrainMTL,), {"__module__": "some_installed_package.models"}))
    try:
        config = {"backbone": name, "widths": [4, 4, 8, 8, 8, 8, 8], "hidden": 8, "slice_hidden": 8}
        assert model_check._cache_file("acat", "acat", config, 3, (32, 32)) is None
        assert model_check._cache_file("acat", "acat", {**config, "backbone": "brain_mtl"}, 3, (32, 32)) is not None
    finally:
        _REGISTRY.pop(name, None)


def test_a_new_code_version_removes_the_older_versions_checks(bundle, cache, monkeypatch):
    older = cache.parent / "torch-0.0.1-0123456789abcdef"
    older.mkdir(parents=True)
    (older / "x.json").write_text("{}")
    unrelated = cache.parent / "notes.txt"
    unrelated.write_text("not ours to remove\n")
    load_bundle(bundle)
    assert not older.exists() and unrelated.exists() and len(list(cache.glob("*.json"))) == 3
    assert oct(cache.stat().st_mode & 0o777) == "0o700"


def test_a_fresh_process_with_a_kept_check_imports_no_compiler(bundle, tmp_path):
    """The point of the cache: a later `acat explain` (a fresh process) loads the bundle without PyTorch's
    compiler and sympy, which the meta-device check imports."""
    program = ("import json, sys; from ACATLogic.bundle import load_bundle; load_bundle(sys.argv[1]); "
               "print(json.dumps(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules)))")
    env = {**os.environ, model_check.CHECK_DIR_ENV: str(tmp_path / "fresh-checks")}

    def imported() -> list:
        done = subprocess.run([sys.executable, "-c", program, str(bundle)], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert imported() != []  # the first load measures on the meta device
    assert imported() == []


def test_a_changed_config_is_measured_not_served_from_the_old_entry(bundle, cache, tmp_path):
    load_bundle(bundle)
    folder = tmp_path / "damaged"
    shutil.copytree(bundle, folder)
    card = json.loads((folder / "model.json").read_text())
    card["models"]["baseline"]["config"]["widths"] = [8000] * 7  # passes step 1, fails step 2
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ACATInputError, match="the baseline architecture 'brain_mtl' would have 12.9 GiB of weights"):
        load_bundle(folder)
