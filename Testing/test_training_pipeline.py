"""The whole of Algorithm 1 on a tiny dataset: pipeline, skipping, recomputation, export, NaN, resume flags.

Runs in this process on real files: 16 small NRRD head volumes, tiny models (32 x 32 input, 4 slices).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ACATLogic.bundle import load_bundle
from toy_training import head_volume, tiny_config, write_brain_toy
from training import export as export_cli
from training import pipeline, train
from training.checkpoint import CHECKPOINT_KIND, load_checkpoint, load_weights, save_weights
from training.config import load_config
from training.portable import absolute_paths, portable
from training.stages.baseline import ClassificationLoss

STAGES = ("baseline", "autoencoder", "saliency", "acat")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the test machine is shared; two OpenMP threads fighting other jobs are slower than one
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_brain_toy(tmp_path_factory.mktemp("toy"), n=16)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, toy) -> tuple[Path, Path]:
    """(config, run folder) of one complete pipeline run (TensorBoard on)."""
    root = tmp_path_factory.mktemp("pipeline")
    cfg = tiny_config(root / "tiny.yaml", toy, root / "run", cache_dir=root / "cache", tensorboard=True)
    assert pipeline.main(["--config", str(cfg)]) == 0
    return cfg, root / "run"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_done(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "done.json").read_text())


def test_pipeline_writes_every_stage(finished):
    cfg_path, run = finished
    cfg = load_config(cfg_path)
    command = f"python -m training.pipeline --config {cfg_path}"
    for stage, epochs in (("baseline", 2), ("autoencoder", 1), ("acat", 1)):
        folder = run / stage
        for name in ("config.yaml", "train.log", "metrics.csv", "last.pt", "best.pt", "model.safetensors"):
            assert (folder / name).is_file(), f"{stage}/{name}"
        assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
        done = read_done(run, stage)
        assert done["sha256"] == sha256(folder / "model.safetensors") and done["command"] == command
        assert done["data"] == {"train": 8, "val": 4, "test": 4, "skipped": 0}
        rows = list(csv.DictReader(open(folder / "metrics.csv")))
        assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
        assert all(math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["val_loss"])) for r in rows)
        assert load_checkpoint(folder / "last.pt", CHECKPOINT_KIND)["progress"]["epoch"] == epochs
        assert math.isfinite(done["metrics"]["test"]["loss"])
    rows = list(csv.DictReader(open(run / "baseline" / "metrics.csv")))
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy",
                             "val_auc"]
    # Adam at lr, then cosine annealing towards min_lr over the 2 epochs
    assert float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert float(rows[1]["lr"]) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert [int(r["step"]) for r in rows] == [2, 4]  # 8 training scans, global batch 4
    test = read_done(run, "baseline")["metrics"]["test"]
    assert 0 <= test["accuracy"] <= 1 and test["accuracy"] * 4 == round(test["accuracy"] * 4)

    # saliency maps: 16 rows in chunks of 5, per-scan maps in [0, 1]
    chunks = sorted((run / "saliency" / "maps").glob("chunk_*.npy"))
    assert [np.load(c).shape[0] for c in chunks] == [5, 5, 5, 1]
    maps = np.concatenate([np.load(c) for c in chunks])
    assert maps.shape == (16, 4, 1, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.reshape(16, -1).max(axis=1) > 0).all()
    done = read_done(run, "saliency")
    assert done["fingerprint"]["inputs"] == {"baseline": read_done(run, "baseline")["sha256"],
                                             "autoencoder": read_done(run, "autoencoder")["sha256"]}
    assert read_done(run, "acat")["fingerprint"]["inputs"]["baseline"] == read_done(run, "baseline")["sha256"]

    # the resolved config and the command line are saved next to the results
    assert load_config(run / "config.yaml") == cfg
    commands = [json.loads(line) for line in (run / "commands.jsonl").read_text().splitlines()]
    assert commands[0]["command"] == command and commands[0]["what"] == "pipeline"


def test_test_predictions_match_the_test_metrics(finished, toy):
    _, run = finished
    manifest = {r["case_id"]: r for r in csv.DictReader(open(toy))}
    test_ids = [cid for cid, r in manifest.items() if r["split"] == "test"]
    for stage in ("baseline", "acat"):
        rows = list(csv.DictReader(open(run / stage / "test_predictions.csv")))
        assert [r["case_id"] for r in rows] == test_ids  # the test split, in manifest order
        assert [int(r["label"]) for r in rows] == [int(manifest[c]["label"]) for c in test_ids]
        probs = np.array([[float(r[f"p_{c}"]) for c in range(4)] for r in rows])
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
        assert [int(r["predicted"]) for r in rows] == probs.argmax(axis=1).tolist()
        correct = [int(r["predicted"]) == int(r["label"]) for r in rows]
        assert np.mean(correct) == pytest.approx(read_done(run, stage)["metrics"]["test"]["accuracy"])


def test_second_run_skips_every_stage(finished):
    cfg_path, run = finished
    outputs = [p for p in run.rglob("*") if p.suffix in (".safetensors", ".npy", ".pt") or p.name == "done.json"]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    assert pipeline.main(["--config", str(cfg_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    log = (run / "run.log").read_text()
    for stage in STAGES:
        assert f"pipeline: {stage} is complete and valid; skipped" in log


def test_a_new_baseline_recomputes_the_saliency_maps_and_acat(finished, tmp_path):
    cfg_path, original = finished
    run = tmp_path / "run"
    shutil.copytree(original, run)
    where = f"out_dir={run}"
    old_maps = np.load(run / "saliency" / "maps" / "chunk_00000.npy")
    old_sha = read_done(run, "baseline")["sha256"]
    autoencoder_mtime = (run / "autoencoder" / "model.safetensors").stat().st_mtime_ns

    assert train.main(["--config", str(cfg_path), where, "stage=baseline", "baseline.lr=3e-3", "--fresh"]) == 0
    new_sha = read_done(run, "baseline")["sha256"]
    assert new_sha != old_sha
    assert train.main(["--config", str(cfg_path), where, "stage=saliency", "baseline.lr=3e-3"]) == 0
    assert "saliency: inputs changed (inputs.baseline:" in (run / "run.log").read_text()
    assert read_done(run, "saliency")["fingerprint"]["inputs"]["baseline"] == new_sha
    new_maps = np.load(run / "saliency" / "maps" / "chunk_00000.npy")
    assert np.abs(new_maps - old_maps).max() > 1e-3

    assert pipeline.main(["--config", str(cfg_path), where, "baseline.lr=3e-3"]) == 0
    log = (run / "run.log").read_text().split("pipeline: baseline is complete")[-1]
    assert "autoencoder is complete and valid; skipped" in log and "saliency is complete and valid; skipped" in log
    assert "pipeline: acat: changed since it ran: inputs.baseline" in log
    assert read_done(run, "acat")["fingerprint"]["inputs"]["baseline"] == new_sha
    assert (run / "autoencoder" / "model.safetensors").stat().st_mtime_ns == autoencoder_mtime


def test_an_organ_setting_recomputes_the_maps_and_acat_only(finished, tmp_path):
    """input.organ restricts the maps: the cache, the baseline and the autoencoder stay valid (a lung recipe
    can gain its lung mask without retraining its classifier), the saliency maps and ACAT are recomputed; naming
    the organ the input's alignment gives anyway changes nothing; the bundle's card names the maps' organ."""
    cfg_path, original = finished
    run = tmp_path / "run"
    shutil.copytree(original, run)
    kept = {p: p.stat().st_mtime_ns for stage in ("baseline", "autoencoder") for p in (run / stage).iterdir()}
    cache_files = sorted(p for p in (original.parent / "cache").rglob("*") if p.is_file())

    def pipeline_log(*args) -> str:
        assert pipeline.main(["--config", str(cfg_path), f"out_dir={run}", "saliency.organ_mask=true", *args]) == 0
        log = (run / "run.log").read_text().split("saliency.organ_mask=true")[-1]
        assert "baseline is complete and valid; skipped" in log and "autoencoder is complete and valid; skipped" in log
        return log

    pipeline_log()  # the toy's input is brain_midline: the brain is its organ
    maps_brain = np.load(run / "saliency" / "maps" / "chunk_00000.npy")
    saliency_done = read_done(run, "saliency")
    assert saliency_done["fingerprint"]["config"]["input"]["organ"] == ""
    log = pipeline_log("input.organ=brain")  # the same organ, named: nothing to recompute
    assert "saliency is complete and valid; skipped" in log and "acat is complete and valid; skipped" in log
    assert read_done(run, "saliency") == saliency_done
    log = pipeline_log("input.organ=none")
    assert "pipeline: saliency: changed since it ran: config.input.organ: '' -> 'none'" in log
    assert "pipeline: acat: changed since it ran: inputs.saliency" in log
    maps_none = np.load(run / "saliency" / "maps" / "chunk_00000.npy")
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert sorted(p for p in (original.parent / "cache").rglob("*") if p.is_file()) == cache_files  # no new cache
    # the brain mask zeroes the maps outside the skull's cavity (the toy's 32 x 32 skull is no closed ring: all
    # of them); "none" keeps every pixel
    assert np.count_nonzero(maps_none) > np.count_nonzero(maps_brain)
    # the bundle's card restricts maps as the saliency stage did (the baseline's fingerprint leaves the organ out)
    assert export_cli.main([str(run), "--out", str(tmp_path / "bundle")]) == 0
    assert load_bundle(tmp_path / "bundle").spec.organ == "none"
    # maps made again without ACAT trained on them: the export refuses rather than ship a mismatched pair
    assert train.main(["--config", str(cfg_path), f"out_dir={run}", "saliency.organ_mask=true", "input.organ=brain",
                       "stage=saliency"]) == 0
    assert export_cli.main([str(run), "--out", str(tmp_path / "mismatched")]) == 2
    assert not (tmp_path / "mismatched").exists()


def test_export_writes_a_bundle_with_the_metrics_and_commands(finished, tmp_path):
    cfg_path, run = finished
    out = tmp_path / "Models" / "toy-brain"
    assert export_cli.main([str(run), "--out", str(out), "--version", "0.0.1"]) == 0
    bundle = load_bundle(out)
    card = bundle.card
    assert card["id"] == "toy-brain" and card["task"] == "brain_stroke" and set(bundle.models) == {
        "baseline", "autoencoder", "acat"}
    assert card["labels"] == ["none", "left", "right", "both"]
    assert card["input"]["size"] == [32, 32] and card["input"]["slices"] == 4
    assert card["explanation"]["steps"] == 3 and card["explanation"]["alpha"] == 100
    assert "8/4/4 scans" in card["training_data"]
    # the card holds the autoencoder's fitness numbers, and measuring the bundle gives the run's numbers
    from training import autoencoder_fitness

    measured = autoencoder_fitness.measure_run(run)
    assert autoencoder_fitness.measure_run(run, bundle=out) == pytest.approx(measured, nan_ok=True)
    fitness_metrics = {m["name"]: m["value"] for m in card["metrics"] if m["name"].startswith("fitness_")}
    assert fitness_metrics["fitness_agreement"] == pytest.approx(measured["agreement"])
    assert fitness_metrics["fitness_probability_change"] == pytest.approx(measured["probability_change"])
    # the card holds no absolute path: they are written relative to the run ($RUN), the data and the bundle
    command = portable(f"python -m training.pipeline --config {cfg_path}", run)
    assert command.startswith("python -m training.pipeline --config $RUN/../")
    assert absolute_paths(json.dumps(card)) == [] and absolute_paths((out / "README.md").read_text()) == []
    metrics = {(m["model"], m["split"], m["name"]): m for m in card["metrics"]}
    for role in ("baseline", "acat"):
        done = read_done(run, role)
        for name in ("accuracy", "balanced_accuracy", "loss"):
            assert metrics[(role, "test", name)]["value"] == done["metrics"]["test"][name]
            assert metrics[(role, "test", name)]["command"] == command
    assert metrics[("autoencoder", "test", "mse")]["value"] == read_done(run, "autoencoder")["metrics"]["test"]["mse"]
    assert command in card["description"]
    # the model card in words: research use, SIMULATED, every test metric and the commands
    readme = (out / "README.md").read_text()
    assert "Research use only" in readme and "SIMULATED" in readme and command in readme
    assert "python -m training.export $RUN --out $BUNDLE --version 0.0.1" in readme
    test_accuracy = metrics[("acat", "test", "accuracy")]["value"]
    assert f"| acat | test | accuracy | {test_accuracy:.4f} |" in readme
    # the bundle's models are the run's models
    x = torch.from_numpy(np.stack([np.load(c)[:1] for c in sorted((run / "saliency" / "maps").glob("*.npy"))[:1]])[0])
    for role in ("baseline", "autoencoder"):
        twin = load_weights(run / role / "model.safetensors").eval()
        with torch.no_grad():
            assert torch.equal(bundle.models[role](x), twin(x))
    assert "export" in [json.loads(line)["what"] for line in (run / "commands.jsonl").read_text().splitlines()]
    # and the application explains a scan with it
    from ACATLogic.explain import Explainer

    explanation = Explainer(bundle, device="cpu").explain(head_volume(1), steps=2)
    assert explanation.label in card["labels"] and explanation.classifier == "acat"
    assert explanation.saliency.voxels_hu.shape == (8, 48, 48)
    # an existing bundle is never replaced without --overwrite
    assert export_cli.main([str(run), "--out", str(out)]) == 2


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(toy, tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path / "c.yaml", toy, tmp_path / "run", cache_dir=tmp_path / "cache",
                      checkpoint_every_steps=1)
    original = ClassificationLoss.forward
    calls = {"n": 0}

    def third_step_is_nan(self, batch):
        calls["n"] += 1
        loss = original(self, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(ClassificationLoss, "forward", third_step_is_nan)
    assert train.main(["--config", str(cfg), "stage=baseline"]) == 2
    last = tmp_path / "run" / "baseline" / "last.pt"
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: baseline: the loss is nan at epoch 2, step 3; training stopped")
    assert f"the last good checkpoint {last} (step 2, end of epoch 1) is kept" in message
    ckpt = load_checkpoint(last, CHECKPOINT_KIND)
    assert ckpt["progress"] == {"epoch": 1, "batches_done": 0, "global_step": 2, "loss_sum": 0.0, "loss_count": 0}
    assert all(torch.isfinite(v).all() for v in ckpt["model"]["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "baseline" / "done.json").exists()

    # the settings of a checkpoint are binding: another lr needs --fresh ...
    monkeypatch.setattr(ClassificationLoss, "forward", original)
    assert train.main(["--config", str(cfg), "stage=baseline", "baseline.lr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "was trained with other settings (config.baseline.lr: 0.001 -> 0.0001); pass --fresh" in err
    # ... and the same settings resume from the last good checkpoint
    assert train.main(["--config", str(cfg), "stage=baseline", "--resume"]) == 0
    assert "resumed from" in (tmp_path / "run" / "baseline" / "train.log").read_text()
    assert read_done(tmp_path / "run", "baseline")["best"]["epoch"] in (1, 2)


def test_resume_flag_needs_a_checkpoint_and_acat_needs_its_upstream(toy, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "c.yaml", toy, tmp_path / "run", cache_dir=tmp_path / "cache")
    assert train.main(["--config", str(cfg), "stage=baseline", "--resume"]) == 2
    assert "--resume: there is no checkpoint" in capsys.readouterr().err
    assert train.main(["--config", str(cfg), "stage=acat"]) == 2
    assert "the baseline stage has not finished" in capsys.readouterr().err


def test_baseline_learns_the_side_of_the_lesion_with_random_flips(tmp_path):
    """32 training scans, half of them mirrored each epoch: the model can only learn where the blob is
    if a mirrored 'left' scan is labelled 'right' (and vice versa) - a wrong swap would cap accuracy."""
    manifest = write_brain_toy(tmp_path / "toy", n=40)
    rows = list(csv.DictReader(open(manifest)))
    for i, row in enumerate(rows):
        row["split"] = "train" if i < 32 else "val"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    cfg = tiny_config(tmp_path / "c.yaml", manifest, tmp_path / "run",
                      baseline={"epochs": 15, "batch_size": 8, "lr": 1e-2, "min_lr": 1e-5, "flip_lr": 0.5})
    assert train.main(["--config", str(cfg), "stage=baseline"]) == 0
    history = list(csv.DictReader(open(tmp_path / "run" / "baseline" / "metrics.csv")))
    assert float(history[0]["val_accuracy"]) <= 0.5  # it starts at chance ...
    assert float(history[-1]["val_accuracy"]) >= 0.875  # ... and ends knowing none / left / right / both
    assert float(history[-1]["train_loss"]) < 0.5 * float(history[0]["train_loss"])


def test_evaluate_a_run_before_export_with_its_own_settings(finished, toy, tmp_path, monkeypatch):
    """`training.evaluate --run`: a run's models are measured before export - also when the export refuses
    them (here a gate no autoencoder can pass) - the report says so, and --setting adds a named setting."""
    import tempfile

    from training import autoencoder_fitness
    from training import evaluate as evaluate_cli

    _, run = finished
    monkeypatch.setattr(autoencoder_fitness, "GATE", (("agreement", ">=", 1.01),) + autoencoder_fitness.GATE[1:])
    assert export_cli.main([str(run), "--out", str(tmp_path / "refused")]) == 2  # the export still refuses
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "eval"
    argv = ["--run", str(run), "--data", str(toy), "--methods", "counterfactual,nostop,gradient",
            "--setting", "nostop:early_stop=false", "--out", str(out), "--limit", "2", "--device", "cpu",
            "--coverage", "sampled", "-q"]
    assert evaluate_cli.main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["bundle"]["run"] == str(run)
    assert report["bundle"]["gate_problems"] and report["bundle"]["gate_problems"][0].startswith("agreement")
    assert list(report["methods"]) == ["counterfactual", "nostop", "gradient"]
    options = report["settings"]["options"]
    assert options["nostop"]["early_stop"] is False and options["counterfactual"]["early_stop"] is None
    assert report["settings"]["display_names"]["nostop"] == "nostop: counterfactual, early_stop=false"
    assert "--setting nostop:early_stop=false" in report["command"]
    md = (out / "metrics.md").read_text()
    assert "evaluated before export" in md and "FAILED: agreement" in md
    assert "| nostop: counterfactual, early_stop=false |" in md
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary bundle is gone
    # a bundle and a run at once, or a bad setting: one-line errors, exit 2
    with pytest.raises(SystemExit) as stopped:  # argparse: --bundle and --run exclude each other
        evaluate_cli.main(argv[:-1] + ["--bundle", str(run)])
    assert stopped.value.code == 2
    assert evaluate_cli.main(["--run", str(run), "--data", str(toy), "--setting", "x:alpha=much",
                              "--out", str(tmp_path / "bad"), "-q"]) == 2
    assert not (tmp_path / "bad").exists()


def test_a_stage_fine_tuned_from_another_runs_weights(finished, tmp_path, capsys):
    cfg_path, original = finished
    start = load_weights(original / "autoencoder" / "model.safetensors")
    with torch.no_grad():  # weights no random start comes near
        for p in start.parameters():
            p.add_(0.5)
    source = tmp_path / "start.safetensors"
    save_weights(start, source)
    run = tmp_path / "run"
    where = f"out_dir={run}"
    # a learning rate of ~0 for one epoch: the result is the weights it started from (BatchNorm's running
    # statistics, which are not learned, move on)
    tune = [f"autoencoder.init_weights={source}", "autoencoder.lr=1e-12", "autoencoder.min_lr=1e-13"]
    assert train.main(["--config", str(cfg_path), where, "stage=autoencoder", *tune]) == 0
    tuned = load_weights(run / "autoencoder" / "model.safetensors")
    for (name, a), (_, b) in zip(tuned.named_parameters(), start.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    done = read_done(run, "autoencoder")
    assert done["fingerprint"]["init_weights_sha256"] == sha256(source)
    assert done["fingerprint"]["config"]["autoencoder"]["init_weights"] == str(source)
    # without init_weights the same settings start from random weights: far from the source
    fresh = tmp_path / "fresh"
    assert train.main(["--config", str(cfg_path), f"out_dir={fresh}", "stage=autoencoder", *tune[1:]]) == 0
    random_start = load_weights(fresh / "autoencoder" / "model.safetensors")
    assert max((a - b).abs().max().item() for a, b in zip(random_start.parameters(), start.parameters())) > 0.4
    assert "init_weights" not in read_done(fresh, "autoencoder")["fingerprint"]["config"]["autoencoder"]
    # runs made before the option existed stay valid: the finished run's fingerprint has no such key
    assert "init_weights" not in read_done(original, "autoencoder")["fingerprint"]["config"]["autoencoder"]
    # other starting weights at the same path are another training: the stage is not "complete" any more
    shutil.copy(original / "baseline" / "model.safetensors", tmp_path / "other.safetensors")
    capsys.readouterr()
    wrong = [f"autoencoder.init_weights={tmp_path / 'other.safetensors'}", *tune[1:]]
    assert train.main(["--config", str(cfg_path), f"out_dir={tmp_path / 'wrong'}", "stage=autoencoder", *wrong]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "autoencoder.init_weights:" in err[0] and "not this stage's autoencoder" in err[0], err
    missing = [f"autoencoder.init_weights={tmp_path / 'missing.safetensors'}", *tune[1:]]
    assert train.main(["--config", str(cfg_path), f"out_dir={tmp_path / 'missing'}", "stage=autoencoder", *missing]) == 2
    assert "autoencoder.init_weights: no such file" in capsys.readouterr().err


def test_settings_added_later_keep_older_runs_valid_and_real_changes_count():
    from training.run_folder import differences

    made_before = {"config": {"saliency": {"alpha": 100.0}, "autoencoder": {"lr": 1e-3}}}
    made_with_none = {"config": {"saliency": {"alpha": 100.0, "sparsity": None}, "autoencoder": {"lr": 1e-3}}}
    now = {"config": {"saliency": {"alpha": 100.0}, "autoencoder": {"lr": 1e-3}}}
    assert differences(made_before, now) == [] and differences(made_with_none, now) == []
    assert differences(now, {"config": {"saliency": {"alpha": 100.0, "whiten": None},
                                        "autoencoder": {"lr": 1e-3, "init_weights": ""}}}) == []
    assert differences(made_before, {"config": {"saliency": {"alpha": 100.0, "whiten": True},
                                                "autoencoder": {"lr": 1e-3}}}) == [
        "config.saliency.whiten: '<absent>' -> True"]
    assert differences(made_with_none, {"config": {"saliency": {"alpha": 100.0, "sparsity": 0.3},
                                                   "autoencoder": {"lr": 1e-3}}}) == [
        "config.saliency.sparsity: None -> 0.3"]


def test_the_two_phase_autoencoder_recipe_in_one_stage_and_its_resume(finished, tmp_path, monkeypatch):
    """consistency_lr: the warm-up (reconstruction) anneals over its own epochs, then a fresh schedule starts
    at consistency_lr with the consistency term; a run stopped at the restart, or in the first epoch after
    it, resumes to the uninterrupted run's weights and metrics."""
    cfg_path, original = finished
    recipe = ["stage=autoencoder", "autoencoder.epochs=4", "autoencoder.consistency_warmup=2",
              "autoencoder.consistency=0.5", "autoencoder.consistency_lr=5e-4", "autoencoder.lr=1e-3",
              "autoencoder.min_lr=1e-5", "checkpoint_every_steps=1"]

    def run_folder(name: str) -> Path:
        run = tmp_path / name
        run.mkdir()
        shutil.copytree(original / "baseline", run / "baseline")  # the judge
        return run

    whole = run_folder("whole")
    assert train.main(["--config", str(cfg_path), f"out_dir={whole}", *recipe]) == 0
    rows = list(csv.DictReader((whole / "autoencoder" / "metrics.csv").open()))
    lrs = [float(r["lr"]) for r in rows]
    # phase 1: 1e-3 annealed over 2 epochs; phase 2: 5e-4 annealed over the other 2
    assert lrs == pytest.approx([1e-3, 1e-5 + (1e-3 - 1e-5) / 2, 5e-4, 1e-5 + (5e-4 - 1e-5) / 2], rel=1e-6)
    assert "warm-up over; the consistency term starts with a fresh schedule from lr 0.0005 over 2 epochs" in (
        whole / "autoencoder" / "train.log").read_text()
    done = read_done(whole, "autoencoder")
    assert done["fingerprint"]["config"]["autoencoder"]["consistency_lr"] == 5e-4
    # runs made before the option existed stay valid: the finished run's fingerprint has no such key
    assert "consistency_lr" not in read_done(original, "autoencoder")["fingerprint"]["config"]["autoencoder"]

    assert done["best"]["epoch"] >= 3  # chosen among the epochs trained with the term

    real_evaluate = train.evaluate_split
    # the epoch whose validation fails, and whether a checkpoint follows every step: stopped in the first
    # epoch after the restart (resumed mid-epoch, with the new schedule's state), in the one after it, and
    # with the end of the warm-up as the last checkpoint (the restart happens again on resume)
    for stop_in_epoch, every_step in ((3, True), (4, True), (3, False)):
        run = run_folder(f"stopped{stop_in_epoch}{every_step}")
        argv = ["--config", str(cfg_path), f"out_dir={run}", *recipe[:-1],
                f"checkpoint_every_steps={int(every_step)}"]
        calls = {"val": 0}

        def failing(stage, model, data, split, *args, **kwargs):
            if split == "val":
                calls["val"] += 1
                if calls["val"] == stop_in_epoch:
                    raise KeyboardInterrupt("stopped")
            return real_evaluate(stage, model, data, split, *args, **kwargs)

        monkeypatch.setattr(train, "evaluate_split", failing)
        with pytest.raises(KeyboardInterrupt):
            train.main(argv)
        at = load_checkpoint(run / "autoencoder" / "last.pt", CHECKPOINT_KIND)["progress"]
        if every_step:  # mid-epoch, after the epoch's last step
            assert at["epoch"] == stop_in_epoch - 1 and at["batches_done"] > 0
        else:  # the end of the epoch before
            assert at["epoch"] == stop_in_epoch - 1 and at["batches_done"] == 0
        monkeypatch.setattr(train, "evaluate_split", real_evaluate)
        assert train.main(argv) == 0
        assert (run / "autoencoder" / "metrics.csv").read_text() == (whole / "autoencoder" / "metrics.csv").read_text()
        assert read_done(run, "autoencoder")["sha256"] == done["sha256"]


def test_a_config_built_on_a_base_file(tmp_path):
    from ACATLogic.errors import ACATInputError

    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    gated, plain = load_config(configs / "brain_cpu_gated.yaml"), load_config(configs / "brain_cpu.yaml")
    # the gated recipe: its own autoencoder and schedule; the rest of each section from brain_cpu.yaml
    assert gated.model.autoencoder_config == {"channels": [8, 12, 16], "strides": [1, 1, 1]}
    assert (gated.autoencoder.epochs, gated.autoencoder.consistency_warmup, gated.autoencoder.consistency_lr) == (
        24, 12, 3e-4)
    assert gated.autoencoder.lr == plain.autoencoder.lr and gated.model.baseline_config == plain.model.baseline_config
    assert (gated.baseline.blur_sigma_px, gated.baseline.epochs) == (1.5, plain.baseline.epochs)
    assert gated.saliency.whiten is True and plain.saliency.whiten is None and gated.input == plain.input
    lung, lung_plain = load_config(configs / "lung_cpu_gated.yaml"), load_config(configs / "lung_cpu.yaml")
    assert lung.model.autoencoder_config == gated.model.autoencoder_config
    assert (lung.baseline.epochs, lung.baseline.patience, lung.baseline.blur_sigma_px, lung.baseline.noise_std) == (
        30, 10, 1.5, 0.08)
    assert (lung.autoencoder.epochs, lung.autoencoder.consistency_warmup, lung.autoencoder.consistency,
            lung.autoencoder.consistency_lr) == (20, 12, 3.0, 3e-4)
    assert lung.input == lung_plain.input and lung.model.baseline == lung_plain.model.baseline == "lung_resnet_small"
    assert lung.saliency.whiten is None and lung.data.task == "lung"
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ACATInputError, match="includes itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "d.yaml").write_text("base: 3\n")
    with pytest.raises(ACATInputError, match="base must name another config file"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ACATInputError, match="no such config file"):
        load_config(tmp_path / "c.yaml")


def test_consistency_lr_needs_a_warm_up_and_the_term():
    from ACATLogic.errors import ACATInputError

    base = Path(__file__).resolve().parents[1] / "training" / "configs" / "brain_cpu.yaml"
    for bad in (["autoencoder.consistency_lr=3e-4", "autoencoder.consistency=3.0", "autoencoder.consistency_warmup=0"],
                ["autoencoder.consistency_lr=3e-4", "autoencoder.consistency=0.0", "autoencoder.consistency_warmup=4"],
                ["autoencoder.consistency_lr=3e-4", "autoencoder.consistency=3.0", "autoencoder.consistency_warmup=60"],
                ["autoencoder.consistency_lr=-1"], ["baseline.consistency_lr=3e-4"]):
        with pytest.raises(ACATInputError, match="consistency_lr"):
            load_config(base, bad)


def test_the_two_phase_recipe_keeps_the_best_epoch_trained_with_the_term(finished, tmp_path, monkeypatch):
    """A warm-up epoch with a lower validation loss than every later one is not kept: the exported
    autoencoder is one that trained with the consistency term (validation losses set by the test)."""
    cfg_path, original = finished
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(original / "baseline", run / "baseline")
    losses = iter([0.5, 0.1, 0.4, 0.3])  # epochs 1-2: the warm-up (2 the lowest); 3-4: with the term
    real_evaluate = train.evaluate_split

    def evaluate(stage, model, data, split, *args, **kwargs):
        out = real_evaluate(stage, model, data, split, *args, **kwargs)
        return {**out, "loss": next(losses)} if split == "val" else out

    monkeypatch.setattr(train, "evaluate_split", evaluate)
    assert train.main(["--config", str(cfg_path), f"out_dir={run}", "stage=autoencoder", "autoencoder.epochs=4",
                       "autoencoder.consistency_warmup=2", "autoencoder.consistency=0.5",
                       "autoencoder.consistency_lr=5e-4"]) == 0
    assert read_done(run, "autoencoder")["best"]["epoch"] == 4
