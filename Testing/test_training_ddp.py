"""DDP on CPU: two gloo processes (torchrun) train like one process with the same global batch.

Real processes, launched as a user would (`python -m torch.distributed.run --nproc-per-node=2`), on a
tiny brain config: BatchNorm over the global batch, class weights, flips and the loss normalisation
must all agree for the weights to match.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from toy_training import tiny_config, write_brain_toy

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: one thread per process
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    manifest = write_brain_toy(root / "toy", n=16)
    cfg = str(tiny_config(root / "tiny.yaml", manifest, root / "one", cache_dir=root / "cache",
                          baseline={"epochs": 2, "batch_size": 4}))
    run("-m", "training.pipeline", "--config", cfg, "--stages", "baseline,autoencoder,saliency")
    torchrun("-m", "training.train", "--config", cfg, f"out_dir={root / 'two'}", "stage=baseline")
    # the saliency stage on two processes, from the one-process run's baseline and autoencoder
    for stage in ("baseline", "autoencoder"):
        shutil.copytree(root / "one" / stage, root / "sal" / stage)
    torchrun("-m", "training.train", "--config", cfg, f"out_dir={root / 'sal'}", "stage=saliency")
    return {"one": root / "one", "two": root / "two", "sal": root / "sal", "config": cfg}


def test_two_processes_reach_the_weights_of_one(runs):
    one = load_file(str(runs["one"] / "baseline" / "model.safetensors"))
    two = load_file(str(runs["two"] / "baseline" / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:  # running BatchNorm statistics included
        diff = (one[name].double() - two[name].double()).abs().max().item()
        assert diff < 1e-5, (name, diff)
    moved = max((one[n].double() - two[n].double()).abs().max().item() for n in one if "weight" in n)
    assert moved < 1e-5
    rows_one = list(csv.DictReader(open(runs["one"] / "baseline" / "metrics.csv")))
    rows_two = list(csv.DictReader(open(runs["two"] / "baseline" / "metrics.csv")))
    assert len(rows_one) == len(rows_two) == 2
    for a, b in zip(rows_one, rows_two):
        assert a["epoch"] == b["epoch"] and a["step"] == b["step"] == str(2 * int(a["epoch"]))
        for key in a:
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), key
    done = json.loads((runs["two"] / "baseline" / "done.json").read_text())
    assert done["world_size"] == 2
    # the exact launch command, torchrun's arguments included
    assert done["command"] == ("python -m torch.distributed.run --standalone --nproc-per-node=2 -m training.train "
                               f"--config {runs['config']} out_dir={runs['two']} stage=baseline")
    # only rank 0 wrote: one log, one TensorBoard-free stage folder, one command line
    assert len((runs["two"] / "commands.jsonl").read_text().splitlines()) == 1
    assert (runs["two"] / "baseline" / "train.log").read_text().count("baseline: done;") == 1


def test_saliency_stage_shards_scans_across_processes(runs):
    chunks = sorted((runs["one"] / "saliency" / "maps").glob("chunk_*.npy"))
    assert len(chunks) == 4
    for chunk in chunks:
        mine, theirs = np.load(chunk), np.load(runs["sal"] / "saliency" / "maps" / chunk.name)
        assert mine.shape == theirs.shape
        # every scan's map landed in its own row (a misplaced map differs by O(0.1)); the two runs batch
        # the scans differently, and oneDNN's channels-last kernels round differently per batch shape
        assert np.abs(mine - theirs).max() < 1e-3
    done = json.loads((runs["sal"] / "saliency" / "done.json").read_text())
    assert done["world_size"] == 2 and done["fingerprint"]["inputs"] == json.loads(
        (runs["one"] / "saliency" / "done.json").read_text())["fingerprint"]["inputs"]
