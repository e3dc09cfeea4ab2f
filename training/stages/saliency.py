"""Stage 2: counterfactual saliency maps of every scan (Algorithm 1, lines 2-5; paper Sec. 3.1).

For each cached scan x, `ACATLogic.saliency.CounterfactualSaliency` moves the autoencoder's latent code
towards each target with the trained baseline as the judge - the healthy-vs-abnormal decision's two
targets for the default ``residual`` variant, every class for ``paper`` (the saliency section holds
`ACATLogic.options.ExplainOptions` fields) - restricted to the organ mask when the variant says so, and
returns the class-agnostic map in [0, 1], normalised per scan: (S, 1, H, W), the input ACAT's saliency
branch reads. `acat explain` makes the same map for an exported bundle (its card records the parameters).

Storage: ``saliency/maps/chunk_%05d.npy`` holds the maps of cache rows ``[i*n, (i+1)*n)`` with n =
``saliency.chunk_scans`` (rows of skipped scans stay zero). Each chunk is written atomically, so the
stage resumes chunk by chunk. ``state.json`` carries the fingerprint the chunks were computed with -
the sha256 of the baseline's and the autoencoder's weights, the data digest, the saliency parameters -
and when it changes (say, a retrained baseline) every chunk is recomputed.

Under DDP the scans of each chunk are shared among the processes; rank 0 gathers and writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ACATLogic.organ import organ_mask
from ACATLogic.saliency.counterfactual import CounterfactualSaliency, decision_targets

from ..checkpoint import atomic_save_array, atomic_write_json, load_weights
from ..config import TrainConfig
from ..data import ScanData
from ..distributed import DistContext, all_gather_objects, barrier, broadcast_object
from ..run_folder import RunFolder, differences, fingerprint, now
from ..saliency_maps import SaliencyMaps, chunk_path
from ..saliency_maps import chunk_ok as _chunk_ok
from ..saliency_maps import chunk_rows as _chunk_rows


def open_maps(run: RunFolder) -> SaliencyMaps:
    done = run.read_done("saliency")
    if done is None:
        raise FileNotFoundError(f"no saliency maps in {run.root}")
    return SaliencyMaps(run, int(done["chunk_scans"]))


def run_saliency(cfg: TrainConfig, ctx: DistContext, run: RunFolder, data: ScanData, *, command: str,
                 log: Callable[[str], None]) -> dict:
    """Compute the maps that are missing or stale; returns the stage's done.json content."""
    folder = run.stage_dir("saliency")
    fp = fingerprint(cfg, "saliency", run, data.digest())
    spec = data.spec
    shape = (spec.slices, 1, *spec.size)
    cs, n_rows = cfg.saliency.chunk_scans, data.n_rows
    n_chunks = math.ceil(n_rows / cs)
    todo: Optional[list] = None
    if ctx.is_main:
        state_path = folder / "state.json"
        state = None
        if state_path.is_file():
            state = json.loads(state_path.read_text())
        if state is None or differences(state.get("fingerprint", {}), fp) or state.get("chunk_scans") != cs:
            if state is not None:
                why = "; ".join(differences(state.get("fingerprint", {}), fp)[:3]) or "chunk size changed"
                log(f"saliency: inputs changed ({why}); recomputing every map")
            run.clear_stage("saliency")
            (folder / "maps").mkdir(parents=True, exist_ok=True)
            atomic_write_json(state_path, {"fingerprint": fp, "chunk_scans": cs, "n_rows": n_rows,
                                           "map_shape": list(shape), "started_at": now()})
        todo = [i for i in range(n_chunks)
                if not _chunk_ok(chunk_path(run, i), len(_chunk_rows(i, cs, n_rows)), shape)]
        log(f"saliency: {n_chunks - len(todo)}/{n_chunks} chunks already computed")
    previous = run.read_done("saliency") if ctx.is_main else None
    todo, previous = broadcast_object((todo, previous), ctx)
    if not todo and previous is not None and not differences(previous.get("fingerprint", {}), fp):
        log("saliency: every map is up to date")
        return previous

    if todo:
        baseline = load_weights(run.weights("baseline")).to(ctx.device).eval()
        autoencoder = load_weights(run.weights("autoencoder")).to(ctx.device).eval()
        if cfg.channels_last or ctx.device.type == "cpu":
            # NHWC convolutions: on a CPU (oneDNN) the 20 x targets passes through decoder and classifier
            # run about 1.8x faster (measured on the brain CPU models); the maps agree to float rounding
            baseline.to(memory_format=torch.channels_last)
            autoencoder.to(memory_format=torch.channels_last)
        s, p = cfg.saliency, cfg.saliency.resolved()
        method = CounterfactualSaliency(
            baseline, autoencoder, alpha=p["alpha"], steps=p["steps"], step_size=p["step_size"],
            optimizer=p["optimizer"], reference=p["reference"], start=p["start"], early_stop=p["early_stop"],
            stop_probability=p["stop_probability"], sparsity=p["sparsity"], whiten=p["whiten"],
            num_classes=len(baseline.class_names),
            autocast_dtype=torch.bfloat16 if cfg.bf16 and ctx.device.type == "cuda" else None)
        targets = decision_targets(0) if p["output"] == "decision" else None
        images = np.load(data.images_path, mmap_mode="r")
        usable = set(data.rows)
        started = time.time()
        for done_chunks, i in enumerate(todo, start=1):
            rows = list(_chunk_rows(i, cs, n_rows))
            mine = [r for r in rows if r in usable][ctx.rank::ctx.world_size]
            maps = []
            for start in range(0, len(mine), s.batch_size):
                batch = torch.from_numpy(np.stack([images[r] for r in mine[start:start + s.batch_size]]))
                batch = batch.to(ctx.device)
                mask = organ_mask(batch, spec.organ, spec.hu_window) if p["organ_mask"] else None
                result = method.explain(batch, targets=targets, normalise="per_scan", mask=mask)
                maps.append(result.saliency.float().cpu().numpy())
            mine_maps = np.concatenate(maps) if maps else np.zeros((0,) + shape, np.float32)
            gathered = all_gather_objects((mine, mine_maps), ctx)
            if ctx.is_main:
                chunk = np.zeros((len(rows),) + shape, np.float32)
                for part_rows, part_maps in gathered:
                    for r, m in zip(part_rows, part_maps):
                        chunk[r - rows[0]] = m
                atomic_save_array(chunk_path(run, i), chunk)
                elapsed = time.time() - started
                log(f"saliency: chunk {i + 1}/{n_chunks} written ({done_chunks}/{len(todo)} this run, "
                    f"{elapsed / done_chunks:.1f} s per chunk)")
    barrier(ctx)
    done = {"stage": "saliency", "fingerprint": fp, "n_rows": n_rows, "chunk_scans": cs, "map_shape": list(shape),
            "chunks": n_chunks, "parameters": cfg.saliency.resolved(),
            "command": command, "finished_at": now(), "world_size": ctx.world_size}
    if ctx.is_main:
        atomic_write_json(run.done_path("saliency"), done)
    barrier(ctx)
    return done

