"""A run killed with SIGKILL and resumed ends exactly like an uninterrupted run (CPU, fixed seeds).

The training runs in a real subprocess, checkpointing after every step (4 steps per epoch). One test
kills it as soon as the first checkpoint appears (mid-epoch); another kills it again and again at
seeded random points, most of them in the middle of writing a file (a checkpoint, metrics.csv, the
weights, done.json), on a disk made slow for the purpose. Each resumed run is compared - metrics.csv,
the final weights, the test metrics - with one run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toy_training import tiny_config, write_brain_toy
from training.checkpoint import CHECKPOINT_KIND, load_checkpoint
from training.config import load_config
from training.run_folder import RunFolder, stage_status

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict:
    out = {**os.environ, "OMP_NUM_THREADS": "1"}  # identical thread counts: identical float sums
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        out.pop(key, None)
    return out


def train_command(cfg: Path, out_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.train", "--config", str(cfg), f"out_dir={out_dir}", *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    manifest = write_brain_toy(root / "toy", n=16)
    # batch 2 -> 4 steps per epoch; a checkpoint after every step; ACAT-free baseline stage
    cfg = tiny_config(root / "tiny.yaml", manifest, root / "unused", cache_dir=root / "cache",
                      checkpoint_every_steps=1, baseline={"epochs": 2, "batch_size": 2})
    return root, cfg


@pytest.fixture(scope="module")
def whole(setup):
    """The same training, never interrupted."""
    root, cfg = setup
    out = root / "whole"
    run = subprocess.run(train_command(cfg, out), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return out


def assert_same_as_uninterrupted(run_dir: Path, whole: Path) -> None:
    csv = (run_dir / "baseline" / "metrics.csv").read_text()
    assert csv == (whole / "baseline" / "metrics.csv").read_text()
    assert len(csv.splitlines()) == 3  # header + 2 epochs, no row lost or doubled
    a = load_file(str(run_dir / "baseline" / "model.safetensors"))
    b = load_file(str(whole / "baseline" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    done_a, done_b = (json.loads((d / "baseline" / "done.json").read_text()) for d in (run_dir, whole))
    assert done_a["metrics"] == done_b["metrics"] and done_a["best"] == done_b["best"]
    assert done_a["sha256"] == done_b["sha256"]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(setup, whole):
    root, cfg = setup
    killed = root / "killed"
    last = killed / "baseline" / "last.pt"
    # step_sleep_s keeps the run busy long enough to be killed mid-epoch (it changes no result)
    proc = subprocess.Popen(train_command(cfg, killed, "step_sleep_s=0.4"), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while not last.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(last, CHECKPOINT_KIND)["progress"]
    assert at_kill["epoch"] == 0 and 1 <= at_kill["batches_done"] < 4  # killed inside the first epoch
    assert not (killed / "baseline" / "done.json").exists()
    assert not list((killed / "baseline").glob(".*partial"))  # atomic writes: no half-written file left

    resumed = subprocess.run(train_command(cfg, killed), cwd=ROOT, env=env(), capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {last} at epoch 1, batch {at_kill['batches_done']}/4" in resumed.stderr
    assert_same_as_uninterrupted(killed, whole)
    last_a = load_checkpoint(last, CHECKPOINT_KIND)
    last_b = load_checkpoint(whole / "baseline" / "last.pt", CHECKPOINT_KIND)
    assert all(torch.equal(last_a["model"]["state_dict"][k], last_b["model"]["state_dict"][k])
               for k in last_a["model"]["state_dict"])
    assert last_a["history"] == last_b["history"] and last_a["best"] == last_b["best"]
    # the optimiser state too: the next epoch would also be the same
    for sa, sb in zip(last_a["optimizer"]["state"].values(), last_b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def partial_files(run_dir: Path) -> set[str]:
    """Temporary files being written (``.NAME.*.partial``) anywhere in the run folder."""
    try:
        return {str(p) for p in run_dir.rglob(".*.partial*")}
    except OSError:  # a file vanished while the folder was listed
        return set()


def test_sigkill_at_random_points_and_during_writes_then_resume(setup, whole):
    """Four SIGKILLs at seeded random points, three of them while a file is being written (fsync of each
    temporary file slowed down to 0.15 s), then one run to the end: a valid, complete run with the same
    metrics and weights as the uninterrupted one, and no temporary file left in the stage's folder."""
    root, cfg = setup
    run_dir = root / "random-kills"
    rng = random.Random(20260917)
    plan = [("in_write", 1)] + [(rng.choice(["in_write", "anywhere"]), rng.randint(1, 8)) for _ in range(3)]
    command = [sys.executable, str(ROOT / "Testing" / "slow_disk_train.py"), "--config", str(cfg),
               f"out_dir={run_dir}"]
    kills = []
    for mode, writes in plan:
        # kill during the n-th file write of this run; "anywhere": a random moment after it instead
        proc = subprocess.Popen(command, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen: set[str] = set()
        deadline = time.time() + 120
        while len(seen) < writes and proc.poll() is None:
            seen |= partial_files(run_dir)
            assert time.time() < deadline, "the run wrote nothing"
            time.sleep(0.005)
        if mode == "anywhere":
            time.sleep(rng.uniform(0.0, 0.4))
        in_write = bool(partial_files(run_dir))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.returncode != -signal.SIGKILL:  # it finished first: nothing left to interrupt
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            break
        kills.append((mode, writes, in_write))
    assert len(kills) >= 3 and sum(in_write for *_, in_write in kills) >= 2, kills  # most hit a file being written

    final = subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    # what the killed writers left in the stage's folder is removed (the run's root, where other stages'
    # commands may be writing, keeps any such file: a hidden leftover, never a damaged config.yaml)
    assert not partial_files(run_dir / "baseline"), partial_files(run_dir / "baseline")
    cfg_now = load_config(str(cfg), [f"out_dir={run_dir}"])
    assert load_checkpoint(run_dir / "baseline" / "last.pt", CHECKPOINT_KIND)["progress"]["epoch"] == 2
    from training.data import open_data

    data = open_data(cfg_now, is_main=True, wait=lambda: None, log=lambda _: None)
    assert stage_status(cfg_now, "baseline", RunFolder(run_dir), data.digest())[0]  # complete and valid
    assert_same_as_uninterrupted(run_dir, whole)
