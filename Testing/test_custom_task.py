"""Your own task: a three-class task that is neither brain nor lung, from the config to an explanation.

A tiny abdominal-like toy dataset (normal / cyst / mass: a body with nothing, a dark blob or a bright blob) in the
one manifest format (``path,label,mask,split``); the config names the task, its labels and its healthy class;
the four stages train a few steps (``slice_resnet``, the task's own classes), ``training.export`` writes a bundle
whose card and README carry that task - with no absolute path, in the Hugging Face layout, not called SIMULATED -
``acat explain`` explains a scan with it, and ``training.evaluate`` reads the same manifest. And an architecture
that an installed package offers through the ``acat.models`` entry point group builds, trains into a bundle and
loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ACATLogic.bundle import load_bundle
from ACATLogic.errors import ACATInputError
from ACATLogic.io import write_volume
from ACATLogic.volume import CTVolume

from conftest import run_acat
from toy_training import tiny_config
from training import evaluate as evaluate_cli
from training import export as export_cli
from training import pipeline
from training.config import load_config
from training.portable import absolute_paths

LABELS = ["normal", "cyst", "mass"]
ROOT = Path(__file__).resolve().parents[1]


def abdomen_volume(label: int, seed: int, size: int = 40, slices: int = 6) -> tuple[CTVolume, np.ndarray]:
    """(volume, lesion mask): a 40 HU body in air; a cyst is a 0 HU blob, a mass a 130 HU blob."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    c = (size - 1) / 2
    hu = np.full((slices, size, size), -1000.0, np.float32)
    hu[((i - c) / (0.42 * size)) ** 2 + ((j - c) / (0.36 * size)) ** 2 <= 1] = 40.0
    mask = np.zeros(hu.shape, np.uint8)
    if label:
        ci, cj = c + rng.uniform(-5, 5), c + rng.uniform(-4, 4)
        mask[((i - ci) ** 2 + (j - cj) ** 2 <= (0.14 * size) ** 2) & (k >= 1) & (k <= slices - 2)] = 1
        hu[mask == 1] = 0.0 if label == 1 else 130.0
    hu += rng.normal(0, 3, hu.shape).astype(np.float32)
    return CTVolume(hu, (4.0, 4.0, 5.0), (-80.0, -80.0, 0.0), np.eye(3), {"modality": "CT"}), mask


def write_abdomen_toy(root: Path, per_class: int = 6) -> Path:
    """NRRD scans + masks and a manifest in the one format (names as labels; splits 4/1/1 per class)."""
    (root / "scans").mkdir(parents=True)
    rows = ["path,label,mask,split"]
    for n in range(per_class * 3):
        label, rank = n % 3, n // 3
        volume, mask = abdomen_volume(label, seed=n)
        write_volume(volume, root / "scans" / f"s{n:02d}.nrrd")
        mask_name = ""
        if label:
            write_volume(volume.with_voxels(mask.astype(np.float32)), root / "scans" / f"s{n:02d}_mask.nrrd")
            mask_name = f"scans/s{n:02d}_mask.nrrd"
        split = "train" if rank < per_class - 2 else ("val" if rank == per_class - 2 else "test")
        rows.append(f"scans/s{n:02d}.nrrd,{LABELS[label]},{mask_name},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def abdomen_config(path: Path, manifest: Path, out_dir: Path, **sections) -> Path:
    return tiny_config(
        path, manifest, out_dir,
        input={"slices": 4, "size": [32, 32], "hu_window": [40, 300], "alignment": "centre", "organ": "none"},
        data={"source": "csv", "task": "abdomen_lesion", "labels": LABELS, "healthy_class": "normal"},
        model={"baseline": "slice_resnet", "baseline_config": {"base_width": 4},
               "autoencoder_config": {"channels": [4, 8, 8], "strides": [1, 2, 2]},
               "acat_config": {"slice_hidden": 8, "attention_batch_norm": False}},
        baseline={"epochs": 3, "batch_size": 4, "lr": 3e-3, "min_lr": 1e-4, "flip_lr": 0.0},
        autoencoder={"epochs": 3, "batch_size": 4, "lr": 3e-3},
        acat={"epochs": 1, "batch_size": 4, "lr": 1e-4, "flip_lr": 0.0}, **sections)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(manifest, run folder, bundle folder): the four stages trained, then exported."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared
    try:
        root = tmp_path_factory.mktemp("abdomen")
        manifest = write_abdomen_toy(root / "data")
        cfg = abdomen_config(root / "abdomen.yaml", manifest, root / "run", cache_dir=root / "cache")
        assert pipeline.main(["--config", str(cfg)]) == 0
        bundle = root / "Models" / "abdomen-toy"
        assert export_cli.main([str(root / "run"), "--out", str(bundle), "--version", "0.0.1"]) == 0
    finally:
        torch.set_num_threads(saved)
    return manifest, root / "run", bundle


def test_the_config_names_the_task_its_classes_and_its_healthy_class(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n")
    cfg = load_config(abdomen_config(tmp_path / "c.yaml", manifest, tmp_path / "run"))
    assert cfg.class_names == tuple(LABELS) and cfg.healthy_index == 0
    assert cfg.baseline_model_config() == {"base_width": 4, "class_names": LABELS}
    with pytest.raises(ACATInputError, match="data.labels: name the classes of the task 'abdomen_lesion'"):
        load_config(abdomen_config(tmp_path / "c.yaml", manifest, tmp_path / "run"), ["data.labels=[]"])
    with pytest.raises(ACATInputError, match="healthy_class 'healthy' is not one of"):
        load_config(abdomen_config(tmp_path / "c.yaml", manifest, tmp_path / "run"), ["data.healthy_class=healthy"])
    with pytest.raises(ACATInputError, match="brain_mtl.*does not fit data.task 'abdomen_lesion'"):
        load_config(abdomen_config(tmp_path / "c.yaml", manifest, tmp_path / "run"),
                    ["model.baseline=brain_mtl", "model.baseline_config={}"])
    # the paper's tasks keep their classes without data.labels
    brain = load_config(abdomen_config(tmp_path / "c.yaml", manifest, tmp_path / "run"),
                        ["data.task=lung", "data.labels=[]", "model.baseline=lung_resnet_small",
                         "model.baseline_config={}", "data.healthy_class="])
    assert brain.class_names == ("normal", "covid19") and brain.baseline_model_config() == {}


def test_a_three_class_task_trains_exports_and_explains(trained, tmp_path):
    manifest, run, out = trained
    bundle = load_bundle(out)
    card = bundle.card
    assert card["task"] == "abdomen_lesion" and card["labels"] == LABELS and bundle.healthy_index == 0
    assert card["models"]["baseline"]["architecture"] == "slice_resnet"
    assert card["models"]["baseline"]["config"]["class_names"] == LABELS
    assert bundle.models["acat"].class_names == tuple(LABELS)
    assert "12/3/3 scans" in card["training_data"]
    # no absolute path anywhere in the card or the README: relative to the run, the data and the bundle
    card_text, readme = (out / "model.json").read_text(), (out / "README.md").read_text()
    assert absolute_paths(card_text) == [] and absolute_paths(readme) == []
    assert str(run) not in card_text + readme and str(manifest.parent) not in card_text + readme
    assert "csv data $DATA/manifest.csv" in card["training_data"]
    # the README is a Hugging Face model card: YAML front matter with licence, tags, datasets, metrics
    assert readme.startswith("---\n")
    front = yaml.safe_load(readme.split("---\n")[1])
    assert front["license"] == "apache-2.0" and "medical-imaging" in front["tags"]
    assert front["datasets"] == ["data"] and "accuracy" in front["metrics"]
    results = front["model-index"][0]["results"][0]
    assert front["model-index"][0]["name"] == "abdomen-toy" and results["task"]["name"] == "abdomen_lesion"
    assert any(m["type"] == "accuracy" and m["name"] == "acat accuracy" for m in results["metrics"])
    assert "SIMULATED" not in readme and "simulated-data" not in front["tags"]
    assert "normal, cyst, mass (healthy / negative: normal)" in readme

    # the application explains a scan with it: the decision "normal" against any other class
    scan = tmp_path / "mass.nrrd"
    write_volume(abdomen_volume(2, seed=99)[0], scan)
    done = run_acat("explain", str(scan), "--model", str(out), "--out", str(tmp_path / "explained"), "--device",
                    "cpu", "--json", "--steps", "3")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["prediction"] in LABELS and set(result["probabilities"]) == set(LABELS)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    report = json.loads((tmp_path / "explained" / "report.json").read_text())
    assert report["model"]["task"] == "abdomen_lesion" and report["parameters"]["targets"] == ["normal", "abnormal"]
    assert {"saliency.nrrd", "counterfactual_normal.nrrd", "counterfactual_abnormal.nrrd"} <= set(result["files"])


def test_evaluation_reads_the_training_manifest_and_is_not_called_simulated(trained, tmp_path):
    manifest, _, out = trained
    assert evaluate_cli.main(["--bundle", str(out), "--data", str(manifest), "--methods", "counterfactual,gradient",
                              "--split", "test", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "eval"),
                              "--quiet"]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["benchmark"] == evaluate_cli.DATASET and report["dataset"]["n_cases"] == 3
    assert report["bundle"]["task"] == "abdomen_lesion" and report["classification"]["class_names"] == LABELS
    assert "SIMULATED" not in (tmp_path / "eval" / "metrics.md").read_text()
    masked = [c for c in report["cases"] if c["label"] != 0]
    assert masked and all(c["lesion_voxels"] > 0 for c in masked)  # the optional mask column was read


PLUGIN = '''
"""A third-party architecture, offered to ACAT through the acat.models entry point group."""
from ACATLogic.models.resnet import SliceResNet


class PluginNet(SliceResNet):
    """slice_resnet under another name, as a package of one's own would ship it."""
'''


def test_an_architecture_from_an_installed_package(tmp_path):
    site = tmp_path / "site"
    (site / "acat_plugin_demo").mkdir(parents=True)
    (site / "acat_plugin_demo" / "__init__.py").write_text(PLUGIN)
    info = site / "acat_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acat-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[acat.models]\nplugin_net = acat_plugin_demo:PluginNet\n")
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / "Testing")!r})
from pathlib import Path
from ACATLogic.bundle import load_bundle, save_bundle
from ACATLogic.models import create_model, list_models
from ACATLogic.models.registry import accepts
from ACATLogic.preprocess import InputSpec
assert "plugin_net" in list_models(), list_models()
assert accepts("plugin_net", "class_names")
model = create_model("plugin_net", class_names=["normal", "cyst", "mass"], base_width=4)
assert model.registry_name == "plugin_net" and type(model).__module__ == "acat_plugin_demo"
acat = create_model("acat", backbone="plugin_net", class_names=["normal", "cyst", "mass"], base_width=4, slice_hidden=8)
spec = InputSpec(slices=3, size=(32, 32), hu_window=(40.0, 300.0), alignment="centre")
folder = save_bundle(Path({str(tmp_path / "bundle")!r}), models={{"baseline": model.eval(), "autoencoder": create_model("autoencoder").eval(), "acat": acat.eval()}},
                     bundle_id="plugin", version="0.0.0", task="abdomen_lesion", spec=spec, training_data="none", healthy_index=0)
bundle = load_bundle(folder)
assert bundle.card["models"]["baseline"]["architecture"] == "plugin_net" and bundle.labels == ["normal", "cyst", "mass"]
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
