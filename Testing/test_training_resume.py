"""A run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted run (CPU, fixed seeds).

The training runs in a real subprocess, checkpointing after every step; the test kills it as soon as
the first checkpoint appears (mid-epoch: 4 steps per epoch), resumes it, and compares metrics.csv and
the final weights with a run that was never interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_training_toy import tiny_config, write_brain_toy
from training.checkpoint import CHECKPOINT_KIND, load_checkpoint

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


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(setup):
    root, cfg = setup
    killed, whole = root / "killed", root / "whole"
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
    uninterrupted = subprocess.run(train_command(cfg, whole), cwd=ROOT, env=env(), capture_output=True, text=True,
                                   timeout=120)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    csv_killed = (killed / "baseline" / "metrics.csv").read_text()
    assert csv_killed == (whole / "baseline" / "metrics.csv").read_text()
    assert len(csv_killed.splitlines()) == 3  # header + 2 epochs, no row lost or doubled
    a = load_file(str(killed / "baseline" / "model.safetensors"))
    b = load_file(str(whole / "baseline" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a = load_checkpoint(last, CHECKPOINT_KIND)
    last_b = load_checkpoint(whole / "baseline" / "last.pt", CHECKPOINT_KIND)
    assert all(torch.equal(last_a["model"]["state_dict"][k], last_b["model"]["state_dict"][k])
               for k in last_a["model"]["state_dict"])
    assert last_a["history"] == last_b["history"] and last_a["best"] == last_b["best"]
    # the optimiser state too: the next epoch would also be the same
    for sa, sb in zip(last_a["optimizer"]["state"].values(), last_b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
