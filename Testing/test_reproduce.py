"""`training.reproduce`: two seeds of the whole pipeline on a tiny phantom dataset, then the tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from test_evaluate import _head
from toy_training import tiny_config
from training import reproduce
from ACATData.phantom.common import BRAIN_LABELS
from ACATData.phantom.io import write_case, write_manifest

LESIONS = {0: [], 1: ["MCA_left"], 2: ["MCA_right"], 3: ["ACA_left", "PCA_right"]}
SIZES = {0: "", 1: "IS-1", 2: "IS-2", 3: "IS-1;IS-3"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """16 cases, every class in every split: 8 train, 4 val, 4 test."""
    root = tmp_path_factory.mktemp("phantom")
    rows = []
    splits = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
    for n, split in enumerate(splits):
        label = n % 4
        case_id = f"case-{n:02d}"
        paths = write_case(_head(label, LESIONS[label], seed=n), root, case_id, "npz")
        rows.append({"case_id": case_id, "task": "brain_stroke", "split": split, "label": label,
                     "label_name": BRAIN_LABELS[label], "size_class": SIZES[label],
                     "lesion_territories": ";".join(LESIONS[label]), **paths})
    return write_manifest(root, rows, {"note": "SIMULATED test data"})


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, manifest):
    root = tmp_path_factory.mktemp("reproduce")
    cfg = tiny_config(root / "tiny.yaml", manifest, root / "runs", cache_dir=root / "cache",
                      saliency={"steps": 2, "chunk_scans": 8, "batch_size": 4})
    argv = ["--config", str(cfg), "--seeds", "0,1", "--out", str(root / "table"),
            "--methods", "counterfactual,gradient"]
    assert reproduce.main(argv) == 0
    return root, argv


def test_tables_hold_the_per_seed_numbers(reproduced, manifest):
    root, _ = reproduced
    report = json.loads((root / "table" / "reproduction.json").read_text())
    assert report["benchmark"].startswith("SIMULATED") and report["seeds"] == [0, 1]
    assert report["task"] == "brain_stroke" and report["n_test"] == 4
    sizes = {r["case_id"]: r["size_class"] for r in csv.DictReader(open(manifest))}
    for model in ("baseline", "acat"):
        accuracies = []
        by_size = {"IS-1": [], "IS-2": [], "IS-3": []}
        for seed in (0, 1):
            run = root / "runs" / f"seed_{seed}"
            done = json.loads((run / model / "done.json").read_text())
            assert done["fingerprint"]["config"]["seed"] == seed
            accuracies.append(done["metrics"]["test"]["accuracy"])
            preds = list(csv.DictReader(open(run / model / "test_predictions.csv")))
            for size in by_size:  # recomputed by hand from the predictions and the manifest
                hits = [int(p["predicted"]) == int(p["label"]) for p in preds if size in sizes[p["case_id"]].split(";")]
                by_size[size].append(np.mean(hits))
        row = report["summary"]["classification"][model]
        assert row["accuracy"]["values"] == pytest.approx(accuracies)
        assert row["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
        assert row["accuracy"]["sem"] == pytest.approx(np.std(accuracies, ddof=1) / math.sqrt(2))
        assert set(row["accuracy_by_group"]) == set(by_size)
        for size, values in by_size.items():
            assert row["accuracy_by_group"][size]["values"] == pytest.approx(values)

    methods = report["summary"]["methods"]
    assert list(methods) == ["counterfactual", "gradient", "counterfactual_acat_classifier"]
    for method, entry in methods.items():
        folder, name = (("evaluation_acat_classifier", "counterfactual") if method == "counterfactual_acat_classifier"
                        else ("evaluation", method))
        per_seed = [json.loads((root / "runs" / f"seed_{s}" / folder / "metrics.json").read_text()) for s in (0, 1)]
        assert entry["hit_score"]["values"] == pytest.approx([p["methods"][name]["hit_score"] for p in per_seed])
        assert entry["iou"]["values"] == pytest.approx([p["methods"][name]["mean_iou"] for p in per_seed])
        assert 0 <= entry["hit_score"]["mean"] <= 1
        assert [p["settings"]["saliency_classifier"] for p in per_seed] == (
            ["acat"] * 2 if folder == "evaluation_acat_classifier" else ["baseline"] * 2)
    assert "success_rate" in methods["counterfactual"] and "success_rate" not in methods["gradient"]
    assert "success_rate" in methods["counterfactual_acat_classifier"]
    per_seed = [json.loads((root / "runs" / f"seed_{s}" / "evaluation" / "metrics.json").read_text()) for s in (0, 1)]
    for line in ("chance", "contrast"):  # the lines that are not explanations, over the seeds
        assert report["summary"][line]["mean_iou"]["values"] == pytest.approx([p[line]["mean_iou"] for p in per_seed])
        assert report["summary"][line]["mean_iou"]["mean"] == pytest.approx(np.mean([p[line]["mean_iou"]
                                                                                     for p in per_seed]))

    text = (root / "table" / "reproduction.md").read_text()
    assert "SIMULATED" in text and "python -m training.reproduce" in text
    assert "| Baseline |" in text and "| ACAT |" in text and "| ACAT counterfactual (default: residual, towards healthy) |" in text
    assert "| ACAT counterfactual, explaining the ACAT classifier (Sec. 4.4) |" in text
    assert "acc. IS-3" in text
    contrast_row = next(r for r in text.splitlines() if r.startswith("| No model: the organ voxels")).split("|")
    assert contrast_row[3].strip() == reproduce._fmt(report["summary"]["contrast"]["mean_iou"])
    assert any(r.startswith("| Chance (a uniformly random organ voxel) |") for r in text.splitlines())


def test_a_second_run_recomputes_nothing(reproduced):
    root, argv = reproduced
    kept = [p for p in (root / "runs").rglob("*") if p.name in ("model.safetensors", "metrics.json")]
    assert len(kept) == 2 * (3 + 2)  # per seed: three trained models and two evaluations
    before = {p: p.stat().st_mtime_ns for p in kept}
    assert reproduce.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == before


def test_a_changed_eval_limit_reevaluates_but_does_not_retrain(reproduced, tmp_path):
    root, argv = reproduced
    args = [*argv, "--eval-limit", "2"]
    args[args.index("--out") + 1] = str(tmp_path / "table")
    weights = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("model.safetensors")}
    assert reproduce.main(args) == 0
    for seed in (0, 1):
        for folder in ("evaluation", "evaluation_acat_classifier"):
            metrics = json.loads((root / "runs" / f"seed_{seed}" / folder / "metrics.json").read_text())
            assert metrics["dataset"]["limit"] == 2 and metrics["dataset"]["n_cases"] == 2
    assert {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("model.safetensors")} == weights
    assert reproduce.main(argv) == 0  # back to every test scan
    metrics = json.loads((root / "runs" / "seed_0" / "evaluation" / "metrics.json").read_text())
    assert metrics["dataset"]["limit"] is None and metrics["dataset"]["n_cases"] == 4


def test_acat_seeds_run_the_whole_algorithm_the_others_the_baseline(reproduced, tmp_path):
    root, argv = reproduced
    out = tmp_path / "table"
    # a third seed trains its baseline only; seeds 0 and 1 are complete and are not recomputed
    args = [a for a in argv if a not in ("0,1",)]
    args[args.index("--seeds") + 1:args.index("--seeds") + 1] = ["0,1,2"]
    args[args.index("--out") + 1] = str(out)
    assert reproduce.main([*args, "--acat-seeds", "0,1"]) == 0
    third = root / "runs" / "seed_2"
    assert (third / "baseline" / "done.json").is_file() and not (third / "acat").exists()
    report = json.loads((out / "reproduction.json").read_text())
    rows = report["summary"]["classification"]
    assert rows["baseline"]["seeds"] == [0, 1, 2] and rows["acat"]["seeds"] == [0, 1]
    assert len(rows["baseline"]["accuracy"]["values"]) == 3 and len(rows["acat"]["accuracy"]["values"]) == 2
    assert report["summary"]["methods"]["gradient"]["seeds"] == [0, 1]
    text = (out / "reproduction.md").read_text()
    assert "| Baseline | 0,1,2 |" in text and "| ACAT | 0,1 |" in text
    assert reproduce.main([*args, "--acat-seeds", "3"]) == 2  # not a subset of --seeds


def test_bad_arguments_fail_with_one_line(reproduced, capsys, tmp_path):
    root, _ = reproduced
    assert reproduce.main(["--config", str(root / "tiny.yaml"), "--seeds", "a", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert reproduce.main(["--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.yaml" in err


def _cf_row(success_rate, steps):
    return {"hit_score": 0.5, "mean_iou": 0.1, "mean_dice": 0.2, "time_per_scan_s": 1.0,
            "counterfactual": {"success_rate": success_rate, "mean_steps_to_success": steps,
                               "mean_abs_change_outside_lesion_hu": 0.5}}


def test_steps_to_success_averages_the_seeds_that_succeeded_and_says_how_many():
    # seed 1's counterfactuals never succeeded: it has no step count, which must neither blank the
    # cell (a NaN mean) nor pass for a full three-seed mean
    per_seed = [{"seed": s, "classification": {},
                 "evaluation": {"methods": {"counterfactual": _cf_row(rate, steps)}}}
                for s, rate, steps in ((0, 0.5, 4.0), (1, 0.0, None), (2, 0.25, 8.0))]
    summary = reproduce.summarise(per_seed, "brain_stroke")
    steps = summary["methods"]["counterfactual"]["mean_steps"]
    assert steps["values"] == [4.0, 8.0] and steps["mean"] == pytest.approx(6.0) and steps["of_seeds"] == 3
    assert summary["methods"]["counterfactual"]["success_rate"]["mean"] == pytest.approx(0.25)
    assert reproduce._fmt_steps(steps) == "6.0 ± 2.0 (2 of 3 seeds)"
    # every seed succeeded: no note; no seed did: a dash
    full = reproduce.summarise([per_seed[0], per_seed[2]], "brain_stroke")["methods"]["counterfactual"]
    assert reproduce._fmt_steps(full["mean_steps"]) == "6.0 ± 2.0"
    none = reproduce.summarise([per_seed[1]], "brain_stroke")["methods"]["counterfactual"]
    assert reproduce._fmt_steps(none["mean_steps"]) == "–"
