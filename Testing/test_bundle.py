"""Model bundles: safetensors + card, verified; nothing pickled is ever opened."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from ACATLogic import ACATInputError
from ACATLogic.bundle import DEFAULT_MODEL, load_bundle, read_card, resolve_model, sha256_file
from ACATLogic.io import write_volume
from ACATLogic.volume import CTVolume

from bundles import make_random_bundle
from conftest import run_acat


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("b") / "brain")


def _copy(bundle_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle_dir, dst)
    return dst


def test_round_trip_builds_identical_models(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert set(bundle.models) == {"baseline", "autoencoder", "acat"}
    assert bundle.labels == ["none", "left", "right", "both"]
    card = json.loads((bundle_dir / "model.json").read_text())
    for role, entry in card["models"].items():
        assert entry["sha256"] == sha256_file(bundle_dir / entry["weights"])
    assert card["intended_use"].startswith("Research use only")
    x = torch.rand(1, 5, 1, 64, 64)
    again = load_bundle(bundle_dir)
    with torch.no_grad():
        torch.testing.assert_close(bundle.models["baseline"](x), again.models["baseline"](x), rtol=0, atol=0)
    assert not any(m.training for m in bundle.models.values())


def test_tampered_weights_are_refused(bundle_dir, tmp_path):
    folder = _copy(bundle_dir, tmp_path)
    data = bytearray((folder / "baseline.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (folder / "baseline.safetensors").write_bytes(bytes(data))
    with pytest.raises(ACATInputError, match="sha256 mismatch: the baseline weights"):
        load_bundle(folder)


def test_wrong_shapes_are_refused(bundle_dir, tmp_path):
    folder = _copy(bundle_dir, tmp_path)
    card = json.loads((folder / "model.json").read_text())
    card["models"]["baseline"]["config"]["widths"] = [4, 4, 8, 8, 8, 8, 16]
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ACATInputError, match="has shape .* the architecture needs"):
        load_bundle(folder)


def test_unknown_fields_and_missing_files_are_refused(bundle_dir, tmp_path):
    folder = _copy(bundle_dir, tmp_path)
    card = json.loads((folder / "model.json").read_text())
    card["run_this"] = "rm -rf /"
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ACATInputError, match=r"unknown fields in the model card: \['run_this'\]"):
        read_card(folder)
    del card["run_this"]
    (folder / "model.json").write_text(json.dumps(card))
    (folder / "acat.safetensors").unlink()
    with pytest.raises(ACATInputError, match="the acat weights named in the card are missing"):
        load_bundle(folder)
    card["models"]["baseline"]["weights"] = "../outside.safetensors"
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ACATInputError, match="must be a .safetensors file name in the bundle folder"):
        read_card(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ACATInputError, match="not valid JSON"):
        read_card(folder)


class _Marker:
    """Unpickling this creates a file: proof that a pickle was opened."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_model_is_refused_without_being_opened(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ACATInputError, match="is a pickled PyTorch file; ACAT loads only .safetensors"):
        load_bundle(evil)
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(evil, folder / "weights.pth")
    with pytest.raises(ACATInputError, match=r"not a model bundle: no model.json \(found pickled files"):
        load_bundle(folder)
    assert not marker.exists()


def test_a_pickle_disguised_as_safetensors_with_a_matching_sha256_never_runs(bundle_dir, tmp_path):
    """Someone who rewrites the card too: the sha256 matches, and safetensors still never unpickles."""
    marker = tmp_path / "PWNED"
    folder = _copy(bundle_dir, tmp_path)
    weights = folder / "baseline.safetensors"
    weights.write_bytes(pickle.dumps(_Marker(str(marker))))
    card = json.loads((folder / "model.json").read_text())
    card["models"]["baseline"]["sha256"] = sha256_file(weights)
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ACATInputError, match=r"baseline.safetensors: not a readable safetensors file"):
        load_bundle(folder)
    assert not marker.exists()


def test_the_command_line_refuses_a_pickled_model_in_one_line(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "model.pth"
    evil.write_bytes(pickle.dumps(_Marker(str(marker))))
    ct = tmp_path / "ct.nrrd"
    write_volume(CTVolume(np.zeros((4, 8, 8), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3)), ct)
    result = run_acat("explain", str(ct), "--model", str(evil), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr == (f"acat: error: {evil}: is a pickled PyTorch file; ACAT loads only .safetensors bundles "
                             "with a model.json card (a pickle can run code when opened)\n")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_resolve_model(bundle_dir, monkeypatch, tmp_path):
    assert resolve_model(str(bundle_dir)) == bundle_dir
    monkeypatch.setenv("ACAT_MODELS_DIR", str(bundle_dir.parent))
    assert resolve_model("brain") == bundle_dir
    with pytest.raises(ACATInputError, match="no model bundle 'nope'"):
        resolve_model("nope")


def test_without_a_name_the_brain_model_is_the_default(bundle_dir, monkeypatch, tmp_path):
    for name in ("aaa-lung", DEFAULT_MODEL, "zzz"):  # the default is not merely the first by name
        shutil.copytree(bundle_dir, tmp_path / name)
    monkeypatch.setenv("ACAT_MODELS_DIR", str(tmp_path))
    assert DEFAULT_MODEL == "brain-stroke-phantom"
    assert resolve_model(None) == tmp_path / DEFAULT_MODEL


def test_the_same_weights_give_the_same_files_in_every_process(tmp_path):
    """sha256 in cards and the reproduction table's caching rely on byte-identical exports. (safetensors
    stores metadata in a hash map whose order is random per process: with two metadata keys, four
    processes agree by chance one time in eight.)"""
    import subprocess
    import sys
    from pathlib import Path

    testing = Path(__file__).resolve().parent
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from bundles import make_random_bundle; make_random_bundle(Path(sys.argv[2]), size=32, slices=3)")
    digests = set()
    for n in range(4):
        subprocess.run([sys.executable, "-c", code, str(testing), str(tmp_path / f"b{n}")], check=True)
        digests.add(tuple(sha256_file(tmp_path / f"b{n}" / f"{role}.safetensors")
                          for role in ("baseline", "autoencoder", "acat")))
    assert len(digests) == 1
