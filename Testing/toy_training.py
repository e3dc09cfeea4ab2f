"""Tiny real datasets for the training tests (a helper; the check that they are what the tests assume is
Testing/test_training_data.py::test_toy_volumes_put_the_blob_on_the_labelled_side).

`write_brain_toy` writes small head-like CT volumes as NRRD - an elongated "head" of 30 HU in air, with a
bright 75 HU blob in the patient's left and/or right half (LPS: +i is the patient's left) - plus a
manifest.csv with the phantom benchmark's columns. `tiny_config` writes a YAML config with tiny models
(32 x 32 input, 4 slices) that trains in seconds on a CPU.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml

from ACATLogic.io import write_volume
from ACATLogic.volume import CTVolume

MANIFEST_COLUMNS = ("case_id", "task", "split", "label", "label_name", "image", "lesion_mask", "organ_mask",
                    "territory_map", "size_class", "lesion_territories", "severity", "involvement_pct")
BRAIN_NAMES = ("none", "left", "right", "both")


def head_volume(label: int, *, slices: int = 8, size: int = 48, seed: int = 0, task: str = "brain") -> CTVolume:
    """(slices, size, size) HU: an ellipse longer along j (antero-posterior), blobs by the brain label.

    task "lung": a body with two dark lungs; label 1 adds bright patches in the lungs.
    """
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    c = (size - 1) / 2
    vol = np.full((slices, size, size), -1000.0, np.float32)
    head = ((i - c) / (0.36 * size)) ** 2 + ((j - c) / (0.44 * size)) ** 2 <= 1
    vol[head] = 30.0
    if task == "brain":
        r = size * 0.1
        centres = {1: [(c + size * 0.18, c)], 2: [(c - size * 0.18, c)],
                   3: [(c + size * 0.18, c), (c - size * 0.18, c)]}.get(label, [])
        for ci, cj in centres:
            vol[((i - ci) ** 2 + (j - cj) ** 2 <= r * r) & (k >= 1) & (k <= slices - 2)] = 75.0
    else:
        for side in (-1, 1):
            lung = ((i - c - side * size * 0.17) / (0.13 * size)) ** 2 + ((j - c) / (0.3 * size)) ** 2 <= 1
            vol[lung] = -850.0
            if label == 1:
                vol[lung & ((i + j + k) % 5 == 0)] = -300.0
    vol += rng.normal(0, 3, vol.shape).astype(np.float32)
    return CTVolume(vol, (4.0, 4.0, 5.0), (0.0, 0.0, 0.0), np.eye(3), {"modality": "CT"})


def brain_labels(n: int) -> list[int]:
    return [i % 4 for i in range(n)]


def toy_splits(labels: list[int]) -> list[str]:
    """Per class: first half train, then val, then test (16 scans -> 8 / 4 / 4)."""
    seen: dict[int, int] = {}
    out = []
    for y in labels:
        n = seen.get(y, 0)
        seen[y] = n + 1
        out.append("train" if n < 2 else ("val" if n == 2 else "test"))
    return out


def write_brain_toy(root: Path, n: int = 16, *, slices: int = 8, size: int = 48, splits=toy_splits) -> Path:
    """n NRRD head volumes + manifest.csv (phantom columns); returns the manifest's path.

    ``splits(labels) -> [split, ...]`` assigns the splits (default `toy_splits`).
    """
    root = Path(root)
    (root / "cases").mkdir(parents=True, exist_ok=True)
    labels = brain_labels(n)
    rows = []
    for idx, (y, split) in enumerate(zip(labels, splits(labels))):
        case_id = f"toy_{idx:03d}"
        write_volume(head_volume(y, slices=slices, size=size, seed=idx), root / "cases" / f"{case_id}.nrrd")
        rows.append({"case_id": case_id, "task": "brain_stroke", "split": split, "label": y,
                     "label_name": BRAIN_NAMES[y], "image": f"cases/{case_id}.nrrd"})
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in MANIFEST_COLUMNS})
    return path


def tiny_config(path: Path, manifest: Path, out_dir: Path, *, cache_dir: Path | None = None, **sections) -> Path:
    """A YAML config for tiny brain models on the toy data; ``sections`` update the defaults below."""
    cfg = {
        "out_dir": str(out_dir), "seed": 0, "device": "cpu", "tensorboard": False, "log_every_steps": 0,
        "input": {"slices": 4, "size": [32, 32], "hu_window": [40, 80], "alignment": "brain_midline"},
        "data": {"source": "phantom", "path": str(manifest), "task": "brain",
                 "cache_dir": str(cache_dir) if cache_dir else ""},
        "model": {"baseline": "brain_mtl", "baseline_config": {"widths": [4, 4, 8, 8, 8, 8, 8], "hidden": 8},
                  "autoencoder_config": {"channels": [4, 8, 8], "strides": [1, 2, 2]},
                  "acat_config": {"slice_hidden": 8, "attention_batch_norm": False}},
        "baseline": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "min_lr": 1e-5},
        "autoencoder": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
        "saliency": {"steps": 3, "chunk_scans": 5, "batch_size": 4},
        "acat": {"epochs": 1, "batch_size": 4, "lr": 1e-4},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Path(path)
