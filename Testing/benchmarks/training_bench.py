"""Training throughput per stage, on the CPU, through the real pipeline (`training.pipeline.main`).

The data are small real NRRD head volumes with the phantom benchmark's manifest columns (the training
tests' toy heads, Testing/toy_training.py); the config is training/configs/brain_cpu.yaml with its
model sizes, epochs cut to a few steps. training/ does not log how long the loop waits for data, so the
benchmark wraps the training DataLoaders (``training.train.make_loader``) and splits each step's wall
time into the wait inside ``next(loader)`` (reading the memory-mapped cache, collating) and the rest of
the step (augmentation, forward, backward, optimiser).

Per stage: scans per second over the training loop, and the data wait as a fraction of it. The
saliency stage has no DataLoader (it reads the cache directly): its scans/s is over the whole stage;
"prepare" is building the cache (read, canonicalise, resample every scan).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing"))


def mostly_train(labels: list[int]) -> list[str]:
    """Per class: the last scan val, the one before it test, the rest train (40 scans -> 32 / 4 / 4)."""
    total = {y: labels.count(y) for y in set(labels)}
    seen: dict[int, int] = {}
    out = []
    for y in labels:
        rank = seen.get(y, 0)
        seen[y] = rank + 1
        out.append("val" if rank == total[y] - 1 else ("test" if rank == total[y] - 2 else "train"))
    return out


def write_dataset(root: Path, n: int, *, slices: int, size: int) -> Path:
    """n toy head volumes (NRRD, the training tests' toy heads) + manifest.csv, mostly training scans."""
    from toy_training import write_brain_toy

    return write_brain_toy(root, n, slices=slices, size=size, splits=mostly_train)


class TimedLoader:
    """Iterates a DataLoader, adding the time spent in ``next()`` and between batches to ``record``."""

    def __init__(self, loader, record: dict):
        self.loader, self.record = loader, record

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        rec = self.record
        t0 = time.perf_counter()
        iterator = iter(self.loader)  # worker start-up, if any, is waiting for data too
        handed_over = None
        while True:
            if handed_over is not None:
                t0 = time.perf_counter()
                rec["step_s"] += t0 - handed_over
            try:
                batch = next(iterator)
            except StopIteration:
                return
            handed_over = time.perf_counter()
            rec["wait_s"] += handed_over - t0
            rec["batches"] += 1
            rec["scans"] += int(len(batch["y"]))
            yield batch


def run_training(work: Path, *, quick: bool, log: Callable[[str], None] = print) -> dict:
    import training.pipeline as pipeline
    import training.train as train

    work.mkdir(parents=True, exist_ok=True)
    n, slices, size = (12, 6, 48) if quick else (40, 16, 96)
    manifest = write_dataset(work / "data", n, slices=slices, size=size)
    cfg = yaml.safe_load((REPO / "training" / "configs" / "brain_cpu.yaml").read_text())
    cfg.update({"out_dir": str(work / "run"), "seeds": [0], "tensorboard": False, "log_every_steps": 0})
    cfg["data"].update({"path": str(manifest), "cache_dir": str(work / "cache"), "prepare_workers": 1})
    for stage in ("baseline", "autoencoder", "acat"):
        cfg[stage].update({"epochs": 2, "batch_size": 4 if quick else 8})
    cfg["saliency"].update({"steps": 2 if quick else 5, "batch_size": 4 if quick else 8})
    if quick:  # the training tests' tiny models (Testing/toy_training.py)
        cfg["input"].update({"slices": 4, "size": [32, 32]})
        cfg["model"].update({"baseline_config": {"widths": [4, 4, 8, 8, 8, 8, 8], "hidden": 8},
                             "autoencoder_config": {"channels": [4, 8, 8], "strides": [1, 2, 2]},
                             "acat_config": {"slice_hidden": 8, "attention_batch_norm": False}})
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    loops: dict[str, dict] = {}
    stage_s: dict[str, float] = {}
    make_loader, execute_stage, load_data = train.make_loader, pipeline.execute_stage, pipeline.load_data

    def timed_make_loader(dataset, *, batch_size, cfg, ctx, sampler=None):
        loader = make_loader(dataset, batch_size=batch_size, cfg=cfg, ctx=ctx, sampler=sampler)
        if sampler is None:  # evaluation loaders: not the training loop
            return loader
        record = loops.setdefault(cfg.stage, {"wait_s": 0.0, "step_s": 0.0, "batches": 0, "scans": 0})
        return TimedLoader(loader, record)

    def timed_execute_stage(stage_cfg, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return execute_stage(stage_cfg, *args, **kwargs)
        finally:
            stage_s[stage_cfg.stage] = time.perf_counter() - t0

    def timed_load_data(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return load_data(*args, **kwargs)
        finally:
            stage_s["prepare"] = time.perf_counter() - t0

    log(f"bench: training pipeline on {n} toy head volumes ({'tiny' if quick else 'brain_cpu'} models)")
    train.make_loader, pipeline.execute_stage, pipeline.load_data = timed_make_loader, timed_execute_stage, \
        timed_load_data
    try:
        code = pipeline.main(["--config", str(config_path), "--fresh"])
    finally:
        train.make_loader, pipeline.execute_stage, pipeline.load_data = make_loader, execute_stage, load_data
    if code != 0:
        raise RuntimeError(f"the training pipeline failed (exit {code}); see {work / 'run' / 'run.log'}")

    stages = {"prepare": {"scans": n, "stage_s": stage_s.get("prepare"),
                          "scans_per_s": n / stage_s["prepare"] if stage_s.get("prepare") else None}}
    for stage in ("baseline", "autoencoder", "saliency", "acat"):
        entry: dict = {"stage_s": stage_s.get(stage)}
        if stage in loops:
            rec = loops[stage]
            loop_s = rec["wait_s"] + rec["step_s"]
            entry.update(rec)
            entry.update({"loop_s": loop_s, "scans_per_s": rec["scans"] / loop_s if loop_s else None,
                          "data_wait_fraction": rec["wait_s"] / loop_s if loop_s else None})
        elif stage == "saliency" and stage_s.get(stage):
            entry.update({"scans": n, "scans_per_s": n / stage_s[stage]})
        stages[stage] = entry
    return {"scans": n, "volume_size": [size, size, slices], "input": cfg["input"], "config": str(config_path),
            "batch_size": cfg["baseline"]["batch_size"], "num_workers": cfg["data"].get("num_workers", 0),
            "stages": stages}
