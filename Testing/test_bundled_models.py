"""The models the extension ships (Resources/Models): valid bundles, trained by training/, and right.

The brain bundle is run for real through `acat explain` on phantom DICOM series (a large simulated MCA
infarct on the real Cranium anatomy, `ACATData.phantom.demo`): it must name the lesion's side, and the
saliency maximum must lie in the lesion's territory (the paper's hit, Sec. 4.4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ACATLogic.bundle import DEFAULT_MODEL, load_bundle, read_card, resolve_model
from ACATLogic.io.read import read_volume
from ACATLogic.metrics import saliency_hit
from training.evaluate import TERRITORY_IDS
from training.portable import absolute_paths
from ACATData.phantom.demo import write_demo_case
from ACATData.phantom.io import load_case

from conftest import run_acat

MODELS = Path(__file__).resolve().parents[1] / "Resources" / "Models"
SHIPPED = {"brain-stroke-phantom": ("brain_stroke", ["none", "left", "right", "both"]),
           "lung-covid-phantom": ("lung_covid", ["normal", "covid19"])}


@pytest.mark.parametrize("bundle_id", sorted(SHIPPED))
def test_shipped_bundles_are_valid_small_and_documented(bundle_id):
    folder = MODELS / bundle_id
    bundle = load_bundle(folder)  # sha256, names and shapes checked
    task, labels = SHIPPED[bundle_id]
    assert bundle.card["task"] == task and bundle.labels == labels
    assert set(bundle.models) == {"baseline", "autoencoder", "acat"}
    for entry in bundle.card["models"].values():
        assert (folder / entry["weights"]).stat().st_size < 5 * 2 ** 20  # small enough for git
    card = read_card(folder)
    assert "SIMULATED" in card["training_data"] or "phantom" in card["training_data"]
    tests = {(m["model"], m["name"]): m for m in card["metrics"] if m["split"] == "test"}
    for role in ("baseline", "acat"):
        assert 0 <= tests[(role, "accuracy")]["value"] <= 1
        assert tests[(role, "accuracy")]["command"].startswith("python -m training.")
    assert (folder / "README.md").is_file()  # the model card in words, with the commands
    # published as it is: nothing of the machine that trained it, and the Hugging Face model-card layout
    readme = (folder / "README.md").read_text()
    assert absolute_paths((folder / "model.json").read_text() + readme) == []
    front = yaml.safe_load(readme.split("---\n")[1])
    assert {"license", "tags", "datasets", "metrics", "model-index"} <= set(front) and "simulated-data" in front["tags"]
    # the maps a clinician sees are restricted to the organ the task is about, found in the CT (issue 15)
    organ = {"brain-stroke-phantom": "brain", "lung-covid-phantom": "lungs"}[bundle_id]
    assert card["input"]["organ"] == organ and card["explanation"]["organ_mask"] is True
    assert f"maps restricted to the {organ} found in the CT" in readme


@pytest.mark.parametrize("bundle_id", sorted(SHIPPED))
def test_every_shipped_autoencoder_passed_the_export_gate_on_its_validation_split(bundle_id):
    """Both cards record the gate's three numbers (training.autoencoder_fitness), each within its bar: the lung
    bundle 0.1.0 recorded none and would not pass (docs/RESULTS.md); 0.2.0 was exported through the gate."""
    from training.autoencoder_fitness import GATE

    card = read_card(MODELS / bundle_id)
    recorded = {m["name"]: m["value"] for m in card["metrics"] if m["model"] == "autoencoder" and m["split"] == "val"}
    for name, sign, bar in GATE:
        value = recorded[f"fitness_{name}"]
        assert (value >= bar) if sign == ">=" else (value <= bar), (bundle_id, name, value)
    assert tuple(int(part) for part in card["version"].split(".")) >= (0, 2, 0)
    assert card["models"]["autoencoder"]["config"]["strides"] == [1, 1, 1]  # a full-resolution latent


def test_the_default_model_is_the_shipped_brain_bundle(monkeypatch):
    monkeypatch.delenv("ACAT_MODELS_DIR", raising=False)
    assert resolve_model(None) == MODELS / DEFAULT_MODEL


@pytest.fixture(scope="module")
def demo_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return {side: write_demo_case(root / side, side=side) for side in ("left", "right")}


@pytest.mark.parametrize("side", ["left", "right"])
def test_acat_explain_names_the_side_and_finds_the_territory(demo_cases, side, tmp_path):
    row = demo_cases[side]
    out = tmp_path / "out"
    result = run_acat("explain", row["image_path"], "--out", str(out))  # default model, default method
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["id"] == DEFAULT_MODEL
    assert report["prediction"] == side, report["probabilities"]
    case = load_case(Path(row["manifest"]), row)
    saliency = read_volume(out / "saliency.nrrd")
    assert saliency.voxels_hu.shape == case.volume.voxels_hu.shape
    np.testing.assert_allclose(saliency.origin_mm, case.volume.origin_mm, atol=1e-3)
    territory = TERRITORY_IDS[f"MCA_{side}"]
    assert saliency_hit(saliency.voxels_hu, case.territory_map, [territory])
