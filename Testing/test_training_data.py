"""Training data and configuration: sources (MosMed, CSV, phantom manifest), bad data, flips, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from ACATLogic.errors import ACATInputError
from ACATLogic.io import write_dicom_series, write_volume
from ACATLogic.preprocess import InputSpec, prepare
from toy_training import head_volume, tiny_config, write_brain_toy
from training.augment import augment_batch, flip_decisions, flip_left_right, inverse_frequency
from training.config import load_config
from training.data import list_cases, open_data, stratified_split
from training.distributed import ResumableDistributedSampler
from training.metrics import epoch_metrics, roc_auc

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(autouse=True)
def one_thread():
    # the test machine is shared; two OpenMP threads fighting other jobs are slower than one
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def lung_config(tmp_path: Path, root: Path, **data) -> Path:
    return tiny_config(tmp_path / "lung.yaml", root, tmp_path / "run",
                       input={"slices": 4, "size": [32, 32], "hu_window": [-600, 1500], "alignment": "centre"},
                       data={"source": "mosmed", "path": str(root), "task": "lung", **data},
                       model={"baseline": "lung_resnet_small", "baseline_config": {}})


# ---------------------------------------------------------------------------------------------------
# MosMed


@pytest.fixture
def mosmed_tree(tmp_path) -> Path:
    """CT-0 (4 normal), CT-1 (2 mild), CT-2 (4 moderate) of real gzipped NIfTI files, as published."""
    root = tmp_path / "MosMedData" / "studies"
    n = 0
    for folder, count, label in (("CT-0", 4, 0), ("CT-1", 2, 1), ("CT-2", 4, 1)):
        for k in range(count):
            write_volume(head_volume(label, task="lung", seed=n), root / folder / f"study_{n + 1:04d}.nii.gz")
            n += 1
    (root / "CT-0" / "README.txt").write_text("not a scan")  # other files are ignored
    return root


def test_mosmed_reader_takes_the_binary_task_and_leaves_ct1_out(tmp_path, mosmed_tree):
    cfg = load_config(lung_config(tmp_path, mosmed_tree))
    records, problems = list_cases(cfg)
    assert problems == []
    assert [r.case_id for r in records] == [f"CT-0/study_{i:04d}" for i in (1, 2, 3, 4)] + \
        [f"CT-2/study_{i:04d}" for i in (7, 8, 9, 10)]
    assert [r.label for r in records] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(r.image.endswith(".nii.gz") and Path(r.image).is_file() for r in records)
    # 70/15/15 stratified by label: 4 per class -> 3 train, 1 val (round(0.6) = 1), 0 test
    splits = [r.split for r in records]
    for label in (0, 1):
        mine = [s for s, r in zip(splits, records) if r.label == label]
        assert sorted(mine) == ["train", "train", "train", "val"]
    again, _ = list_cases(cfg)
    assert [r.split for r in again] == splits  # deterministic for a seed

    with_mild = load_config(lung_config(tmp_path, mosmed_tree),
                            ["data.mosmed_classes={CT-0: 0, CT-1: 1, CT-2: 1}"])
    records, _ = list_cases(with_mild)
    assert len(records) == 10 and sum(r.label for r in records) == 6


def test_mosmed_scans_are_read_and_cached_once(tmp_path, mosmed_tree):
    cfg = load_config(lung_config(tmp_path, mosmed_tree))
    data = open_data(cfg, log=lambda m: None)
    images = np.load(data.images_path, mmap_mode="r")
    assert images.shape == (8, 4, 1, 32, 32) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    # the same preprocessing the application runs at inference (read_volume + prepare), bit for bit
    from ACATLogic.io import read_volume

    spec = cfg.input.spec()
    first = prepare(read_volume(data.records[0].image), spec, coverage="sampled").images[0].numpy()
    assert np.array_equal(images[data.rows[0]], first)
    mtime = data.images_path.stat().st_mtime_ns
    logged = []
    again = open_data(cfg, log=logged.append)
    assert again.key == data.key and data.images_path.stat().st_mtime_ns == mtime
    assert not any("preprocessing" in m for m in logged)  # no second decoding


def test_split_is_stratified_and_seeded():
    labels = [0] * 20 + [1] * 40
    a = stratified_split(labels, 0)
    assert sum(s == "train" for s in a) == 42 and sum(s == "val" for s in a) == 9 and sum(s == "test" for s in a) == 9
    assert [s for s, y in zip(a, labels) if y == 0].count("train") == 14
    assert stratified_split(labels, 0) == a and stratified_split(labels, 1) != a


# ---------------------------------------------------------------------------------------------------
# bad data


def bad_manifest(tmp_path: Path) -> tuple[Path, dict]:
    """A CSV manifest with 8 good scans (7 NRRD, 1 DICOM folder) and one of each problem."""
    data = tmp_path / "data"
    data.mkdir()
    rows = ["path,label,split"]
    names = ["none", "left", "right", "both"]
    for i in range(7):
        write_volume(head_volume(i % 4, seed=i), data / f"ok_{i}.nrrd")
        rows.append(f"ok_{i}.nrrd,{names[i % 4] if i < 4 else i % 4},{'train' if i < 4 else 'val'}")
    write_dicom_series(head_volume(3, seed=7), data / "ok_7")  # a DICOM folder
    rows.append("ok_7,both,val")
    bad = {"missing": data / "gone.nrrd", "range": data / "range.nrrd", "unreadable": data / "broken.nrrd",
           "short": data / "short.nrrd", "modality": data / "mr_series"}
    write_volume(head_volume(1, seed=9), bad["range"])
    bad["unreadable"].write_bytes(b"NRRD0004\nthis is not an image\n")
    write_volume(head_volume(1, slices=3, seed=10), bad["short"])  # 3 slices, the model reads 4
    write_dicom_series(head_volume(1, seed=11), bad["modality"])
    for f in bad["modality"].iterdir():  # the same images labelled as an MR series
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    rows += ["gone.nrrd,1,test", "range.nrrd,7,test", "broken.nrrd,1,test", "short.nrrd,2,test", "mr_series,1,test"]
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    return data / "manifest.csv", bad


def test_manifest_problems_fail_the_run_with_their_paths(tmp_path):
    manifest, bad = bad_manifest(tmp_path)
    cfg = load_config(tiny_config(tmp_path / "c.yaml", manifest, tmp_path / "run"), ["data.source=csv"])
    with pytest.raises(ACATInputError) as info:
        open_data(cfg, log=lambda m: None)
    message = str(info.value)
    assert str(bad["missing"]) in message and "no such file" in message
    assert str(bad["range"]) in message and "label 7 is out of range" in message
    assert "data.on_error=skip" in message and "\n" not in message

    # with the listing problems gone, an unreadable scan stops the cache build, named by its path
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(line for line in lines if not line.startswith(("gone", "range"))) + "\n")
    with pytest.raises(ACATInputError) as info:
        open_data(cfg, log=lambda m: None)
    assert str(bad["unreadable"]) in str(info.value) and "cannot read the NRRD file" in str(info.value)
    assert not list((tmp_path / "run" / "cache").glob("brain-*/index.json"))  # no half-built cache


def test_on_error_skip_reports_every_bad_scan_and_trains_without_them(tmp_path):
    manifest, bad = bad_manifest(tmp_path)
    cfg = load_config(tiny_config(tmp_path / "c.yaml", manifest, tmp_path / "run"),
                      ["data.source=csv", "data.on_error=skip"])
    logged: list[str] = []
    data = open_data(cfg, log=logged.append)
    assert [r.case_id for r in data.records] == [f"ok_{i}" for i in range(8)]
    assert [r.label for r in data.records] == [0, 1, 2, 3, 0, 1, 2, 3]  # names and indices both accepted
    reasons = {Path(p.path).name: p.message for p in data.problems}
    assert set(reasons) == {"gone.nrrd", "range.nrrd", "broken.nrrd", "short.nrrd", "mr_series"}
    assert "only 3 axial slices; the model reads 4" == reasons["short.nrrd"]
    assert "cannot read the NRRD file" in reasons["broken.nrrd"]
    assert "MR images, not CT" in reasons["mr_series"]
    for path in bad.values():  # each one reported on its own line, with its path
        assert any(line == f"data: skipped {path}: {reasons[path.name]}" for line in logged), path
    assert data.counts() == {"train": 4, "val": 4, "test": 0, "skipped": 5}


def test_phantom_manifest_split_is_used_as_is(tmp_path):
    manifest = write_brain_toy(tmp_path / "toy", n=12)
    cfg = load_config(tiny_config(tmp_path / "c.yaml", manifest, tmp_path / "run"))
    records, problems = list_cases(cfg)
    assert problems == [] and [r.split for r in records] == ["train"] * 8 + ["val"] * 4
    assert [r.label for r in records] == [0, 1, 2, 3] * 3


# ---------------------------------------------------------------------------------------------------
# flips


def test_brain_left_right_flip_swaps_the_side_labels():
    spec = InputSpec(slices=4, size=(32, 32), hu_window=(40, 80), alignment="brain_midline")
    x = torch.stack([prepare(head_volume(y, seed=y), spec, coverage="sampled").images[0] for y in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    flipped, new_labels, _ = flip_left_right(x, labels, "brain")
    assert new_labels.tolist() == [0, 2, 1, 3]  # none->none, left->right, right->left, both->both
    bright = flipped > 0.9
    patient_left = bright[..., 16:].sum(dim=(1, 2, 3, 4))
    patient_right = bright[..., :16].sum(dim=(1, 2, 3, 4))
    # after the mirror the blob of the 'left' scan sits in the patient's right half, as its new label says
    assert patient_left[1] == 0 and patient_right[1] > 5
    assert patient_left[2] > 5 and patient_right[2] == 0
    assert torch.equal(flipped.flip(-1), x)

    mask = torch.tensor([True, False, True, False])
    part, part_labels, _ = flip_left_right(x, labels, "brain", mask)
    assert part_labels.tolist() == [0, 1, 1, 3]
    assert torch.equal(part[1], x[1]) and torch.equal(part[2], x[2].flip(-1))
    _, lung_labels, _ = flip_left_right(x[:2], torch.tensor([0, 1]), "lung")
    assert lung_labels.tolist() == [0, 1]


def test_flips_depend_on_seed_epoch_and_scan_only():
    rows = torch.arange(400)
    a = flip_decisions(rows, epoch=3, seed=0, p=0.5, salt=1)
    assert 160 < int(a.sum()) < 240
    assert torch.equal(flip_decisions(rows[[5, 17]], epoch=3, seed=0, p=0.5, salt=1), a[[5, 17]])
    assert not torch.equal(flip_decisions(rows, epoch=4, seed=0, p=0.5, salt=1), a)
    x = torch.rand(4, 2, 1, 8, 8)
    batch = {"x": x, "y": torch.tensor([1, 1, 2, 2]), "row": torch.tensor([0, 1, 2, 3]), "saliency": x.clone()}
    out = augment_batch(batch, epoch=0, seed=0, flip_lr=1.0, flip_ap=0.0, task="brain")
    assert out["y"].tolist() == [2, 2, 1, 1]
    assert torch.equal(out["x"], x.flip(-1)) and torch.equal(out["saliency"], x.flip(-1))  # map follows the scan


def test_inverse_frequency_weights():
    w = inverse_frequency([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])


# ---------------------------------------------------------------------------------------------------
# sampling, metrics, configs


def test_processes_share_each_global_batch_like_one_process():
    dataset = list(range(23))
    single = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, seed=4, batch_size=6)
    parts = [ResumableDistributedSampler(dataset, num_replicas=3, rank=r, seed=4, batch_size=2) for r in range(3)]
    for s in [single] + parts:
        s.set_epoch(2)
    one = list(single)
    assert single.batches_per_epoch() == 3 and all(p.batches_per_epoch() == 3 for p in parts)
    per_rank = [list(p) for p in parts]
    for k in range(3):
        assert sorted(one[6 * k:6 * k + 6]) == sorted(sum((r[2 * k:2 * k + 2] for r in per_rank), []))
    single.set_epoch(2, start_batch=2)
    assert list(single) == one[12:]  # resume skips the batches already seen


def test_metrics():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1], bool)) == 0.5
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = epoch_metrics(probs, np.array([0, 1, 1, 1]))
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))
    assert m["auc"] == 1.0  # every class-1 scan scores above the class-0 one
    # the accuracies are ACATLogic's (the project's one classification-metrics function): a class without
    # scans (nan recall) does not count in the balanced accuracy
    three = epoch_metrics(np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1]]), np.array([0, 1, 1]))
    assert three["accuracy"] == pytest.approx(2 / 3) and three["balanced_accuracy"] == pytest.approx(0.75)
    assert all(np.isnan(v) for v in epoch_metrics(np.zeros((0, 2)), np.zeros(0)).values())


def test_paper_configs_hold_the_paper_settings():
    for name, task, model in (("brain_paper", "brain", "brain_mtl"), ("lung_paper", "lung", "lung_resnet50")):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg.data.task == task and cfg.model.baseline == model
        b = cfg.baseline
        assert (b.epochs, b.lr, b.weight_decay, b.min_lr, b.batch_size) == (200, 1e-4, 5e-5, 1e-7, 8)
        assert b.class_weights and b.flip_lr == 0.5 and b.best_metric == "val_loss"
        assert (cfg.acat.epochs, cfg.acat.lr) == (100, 1e-5)
        assert (cfg.saliency.alpha, cfg.saliency.steps) == (100, 20)
        assert cfg.input.slices == 11 and cfg.data.split_fractions == [0.7, 0.15, 0.15]
        assert cfg.seeds == [0, 1, 2]
    assert load_config(CONFIGS / "lung_paper.yaml").data.source == "mosmed"
    for name in ("brain_cpu", "lung_cpu"):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg.device == "cpu" and cfg.input.size[0] in (64, 96) and cfg.baseline.epochs <= 50


def test_config_overrides_and_errors(tmp_path):
    path = tiny_config(tmp_path / "c.yaml", tmp_path / "m.csv", tmp_path / "run")
    cfg = load_config(path, ["baseline.lr=3e-4", "stage=acat", "model.baseline_config.hidden=16",
                             "data.pin_memory=true"])
    assert cfg.baseline.lr == 3e-4 and isinstance(cfg.baseline.lr, float) and cfg.stage == "acat"
    assert cfg.model.baseline_config == {"widths": [4, 4, 8, 8, 8, 8, 8], "hidden": 16}
    assert cfg.data.pin_memory is True
    assert cfg.autoencoder.loss == "mse"  # a YAML section updates its own defaults, not OptimConfig()'s
    with pytest.raises(ACATInputError, match="unknown key baseline.learning_rate"):
        load_config(path, ["baseline.learning_rate=1"])
    with pytest.raises(ACATInputError, match="did you mean baseline.epochs"):
        load_config(path, ["baseline.epoch=1"])
    with pytest.raises(ACATInputError, match="baseline.epochs must be int"):
        load_config(path, ["baseline.epochs=many"])
    with pytest.raises(ACATInputError, match="stage must be one of"):
        load_config(path, ["stage=finetune"])
    with pytest.raises(ACATInputError, match="does not fit data.task"):
        load_config(path, ["model.baseline=lung_resnet_small"])


def test_pipeline_runs_each_seed_in_its_own_folder_with_one_cache(tmp_path):
    from training.pipeline import seed_configs

    path = tiny_config(tmp_path / "c.yaml", tmp_path / "m.csv", tmp_path / "run")
    single = seed_configs(load_config(path, ["seed=3"]))
    assert len(single) == 1 and single[0].seed == 3 and single[0].out_dir == str(tmp_path / "run")
    runs = seed_configs(load_config(path, ["seeds=[0,1,2]"]))
    assert [(c.seed, c.out_dir) for c in runs] == [(s, str(tmp_path / "run" / f"seed_{s}")) for s in (0, 1, 2)]
    assert {c.data.cache_dir for c in runs} == {str(tmp_path / "run" / "cache")}


def test_toy_volumes_put_the_blob_on_the_labelled_side():
    from ACATLogic.preprocess import InputSpec, prepare

    spec = InputSpec(slices=4, size=(32, 32), hu_window=(40, 80), alignment="brain_midline")
    for label, expect_left, expect_right in ((0, False, False), (1, True, False), (2, False, True), (3, True, True)):
        x = prepare(head_volume(label), spec, coverage="sampled").images[0]  # (S, 1, H, W)
        bright = (x > 0.9).float()
        left, right = bright[..., 16:].sum().item(), bright[..., :16].sum().item()
        assert (left > 5) == expect_left and (right > 5) == expect_right, (label, left, right)
