"""Train one stage of ACAT (Algorithm 1 of Fontanella et al., ICML 2023) on a CPU, one GPU or many.

One process (a CPU, or one GPU)::

    python -m training.train --config training/configs/brain_cpu.yaml stage=baseline

One node with 8 GPUs (``batch_size`` is the global batch: each GPU takes batch_size / 8 scans)::

    torchrun --standalone --nproc-per-node=8 -m training.train --config training/configs/brain_paper.yaml stage=baseline

Two nodes with 8 GPUs each - the same command on both nodes, NODE0 being the first node's address; the
run folder (``out_dir``) must be on a filesystem both nodes see, as every process reads the upstream
stages' weights and resumes from the checkpoint there::

    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-id=acat-brain --rdzv-backend=c10d \\
        --rdzv-endpoint=NODE0:29500 -m training.train --config training/configs/brain_paper.yaml stage=baseline

Every stage in order (baseline, autoencoder, saliency, acat), skipping stages already complete and valid,
takes the same arguments: ``python -m training.pipeline --config ...`` (or torchrun ... -m training.pipeline).

Options (before or after the overrides):
    --config PATH    a YAML file (training/configs/); any config key can be overridden as key=value
    --resume         continue from the stage's last.pt, and fail if there is none. Without it a run
                     folder holding a checkpoint resumes anyway: optimizer, scheduler, every process's
                     random generators and the position in the epoch are restored, so a killed run ends
                     with the same weights and metrics as an uninterrupted one
    --fresh          discard this stage's outputs and train it again from scratch
    --prepare-only   read and preprocess every scan into the cache, then stop (run it once before a
                     large multi-GPU job so that the GPUs do not wait for the cache)

The loop (nanoGPT-like): DDP when launched by torchrun (RANK, LOCAL_RANK, WORLD_SIZE; NCCL on GPUs,
gloo on CPUs), a DistributedSampler that splits each global batch evenly, only rank 0 logs and writes.
Per epoch: train, step the cosine schedule, evaluate on the validation split, keep the best checkpoint,
write last.pt and metrics.csv. At the end the best-validation weights are evaluated on the test split
and written to model.safetensors with done.json. A non-finite loss stops the run before the optimiser
step, keeping the last good checkpoint.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from ACATLogic.errors import EXIT_BAD_INPUT, ACATInputError

from . import distributed
from .augment import augment_batch
from .checkpoint import (BEST_KIND, CHECKPOINT_KIND, FORMAT_VERSION, atomic_write_json, atomic_write_text,
                         capture_rng, load_checkpoint, model_entry, remove_partial_files, restore_rng,
                         load_weights, save_checkpoint, save_weights)
from .config import BEST_METRICS, TrainConfig, load_config, save_config
from .data import ScanData, ScanDataset, open_data
from .distributed import DistContext, ResumableDistributedSampler
from .logs import StageLog
from .run_folder import (RunFolder, StageError, command_line, differences, fingerprint, now, stage_status)
from .stages import TrainableStage, trainable


# ---------------------------------------------------------------------------------------------------
# helpers


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(cfg: TrainConfig, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16))


def make_loader(dataset, *, batch_size: int, cfg: TrainConfig, ctx: DistContext, sampler=None) -> DataLoader:
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else ctx.device.type == "cuda"
    workers = cfg.data.num_workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=sampler is not None,
                      num_workers=workers, pin_memory=pin, persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None,
                      # a private generator: creating an iterator must not draw from the global
                      # generator, or a resumed epoch would see other dropout masks
                      generator=torch.Generator().manual_seed(cfg.seed))


def evaluate_split(stage: TrainableStage, model: torch.nn.Module, data: ScanData, split: str, cfg: TrainConfig,
                   ctx: DistContext, saliency=None, outputs_out: Optional[dict] = None) -> dict:
    """Metrics of ``model`` on a split; the scans are shared among the processes, outputs gathered.

    ``outputs_out``, when given, receives the merged per-scan outputs (``probs`` (N, C), ``labels`` (N,))
    in the split's manifest order.
    """
    rows, labels = data.split(split)
    if not rows:
        return {}
    dataset = ScanDataset(data.images_path, rows, labels, saliency)
    mine = list(range(ctx.rank, len(dataset), ctx.world_size))
    loader = make_loader(Subset(dataset, mine), batch_size=cfg.stage_optim().batch_size, cfg=cfg, ctx=ctx)
    outputs: dict[str, list] = defaultdict(list)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(cfg, ctx.device):
        for batch in loader:
            for name, value in stage.evaluate(model, to_device(batch, ctx.device), cfg).items():
                value = value.detach().cpu()
                outputs[name].append((value.float() if value.is_floating_point() else value).numpy())
    model.train(was_training)
    parts = distributed.all_gather_objects((mine, dict(outputs)), ctx)
    positions = np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in parts])
    order = np.argsort(positions, kind="stable")
    names = sorted({name for _, out in parts for name in out})
    merged = {name: np.concatenate([a for _, out in parts for a in out.get(name, [])])[order] for name in names}
    if outputs_out is not None:
        outputs_out.update(merged)
    return stage.summarise(merged, cfg)


def write_predictions(path, data: ScanData, split: str, outputs: dict) -> None:
    """One CSV row per scan of ``split``: case_id, label, predicted, p_<class index>... (atomic).

    What the reproduction table needs beyond the summary metrics: accuracy by lesion size class or
    severity comes from joining these rows with the dataset manifest.
    """
    probs = outputs.get("probs")
    if probs is None:
        return
    records = [r for r in data.records if r.split == split]
    if len(records) != len(probs):
        raise StageError(f"{len(probs)} predictions for {len(records)} {split} scans")
    header = ["case_id", "label", "predicted"] + [f"p_{c}" for c in range(probs.shape[1])]
    lines = [",".join(header)]
    for record, label, p in zip(records, outputs["labels"], probs):
        lines.append(",".join([record.case_id, str(int(label)), str(int(np.argmax(p)))]
                              + [f"{float(v):.6g}" for v in p]))
    atomic_write_text(path, "\n".join(lines) + "\n")


def improved(value: Optional[float], best: Optional[float], mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True  # no validation split: the last epoch is the best one known
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def setup_determinism(cfg: TrainConfig) -> None:
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not cfg.deterministic


def load_data(cfg: TrainConfig, ctx: DistContext, log: Callable[[str], None]) -> ScanData:
    """The run's scans; rank 0 builds the cache while the others wait at a barrier."""
    return open_data(cfg, is_main=ctx.is_main, wait=lambda: distributed.barrier(ctx), log=log)


# ---------------------------------------------------------------------------------------------------
# one trained stage


def _decide(diff: list[str], stage: str, last) -> tuple[str, str]:
    """What to do with a valid checkpoint whose fingerprint differs from the run's by ``diff``."""
    if not diff:
        return ("resume", "")
    if all(d.startswith("inputs.") for d in diff):
        # only an upstream stage changed (say a retrained baseline): this stage's old work is void
        return ("restart", f"{stage}: upstream outputs changed ({'; '.join(diff[:2])}); training it again from "
                           "scratch")
    return ("error", f"{last} was trained with other settings ({'; '.join(diff[:4])}); pass --fresh to train the "
                     f"{stage} stage again from scratch, or choose another out_dir")


def _resume_point(cfg: TrainConfig, ctx: DistContext, run: RunFolder, fp: dict, resume: bool,
                  say: Callable[[str], None]) -> Optional[dict]:
    """The checkpoint to continue from, None to start afresh; StageError on a config mismatch.

    Rank 0 decides and tells the others, so no process reads a checkpoint rank 0 is removing.
    """
    last = run.stage_dir(cfg.stage) / "last.pt"
    decision: tuple = ("start", "")
    if ctx.is_main:
        if not last.is_file():
            decision = ("error", f"--resume: there is no checkpoint {last}") if resume else ("start", "")
        else:
            try:
                decision = _decide(differences(load_checkpoint(last, CHECKPOINT_KIND)["fingerprint"], fp),
                                   cfg.stage, last)
            except ACATInputError as exc:  # tampered, truncated, not ours: every process is told, none hangs
                decision = ("error", str(exc))
    action, message = distributed.broadcast_object(decision, ctx)
    if action == "error":
        raise StageError(message)
    if action == "restart":
        say(message)
        if ctx.is_main:
            run.clear_stage(cfg.stage)
        distributed.barrier(ctx)
    return load_checkpoint(last, CHECKPOINT_KIND) if action == "resume" else None


def start_from(model: torch.nn.Module, path: Path, stage: str) -> None:
    """Fine-tuning: copy the weights of ``path`` (written by training/) into ``model``, which must be the same
    architecture with the same config; StageError in one line otherwise."""
    try:
        source = load_weights(path)
    except (ACATInputError, OSError, ValueError) as exc:
        raise StageError(f"{stage}.init_weights: {path} cannot be read as model weights ({exc})") from None
    want = (getattr(model, "registry_name", type(model).__name__), getattr(model, "config", None))
    have = (getattr(source, "registry_name", type(source).__name__), getattr(source, "config", None))
    if want != have:
        raise StageError(f"{stage}.init_weights: {path} holds {have[0]} {have[1]}, not this stage's {want[0]} {want[1]}")
    model.load_state_dict(source.state_dict())


def train_stage(cfg: TrainConfig, ctx: DistContext, run: RunFolder, data: ScanData, *, command: str,
                resume: bool = False, say: Callable[[str], None] = print) -> dict:
    """Train cfg.stage to the end (or resume it) and return its done.json content."""
    stage = trainable(cfg.stage)
    optim_cfg = cfg.stage_optim()
    folder = run.stage_dir(cfg.stage)
    fp = fingerprint(cfg, cfg.stage, run, data.digest())
    complete = distributed.broadcast_object(
        stage_status(cfg, cfg.stage, run, data.digest())[0] if ctx.is_main else None, ctx)
    if complete:
        say(f"{cfg.stage}: already complete in {folder} (--fresh trains it again)")
        return run.read_done(cfg.stage)
    if ctx.is_main:
        # what a killed run of this stage was writing (the files it was replacing are intact); not in the
        # run's root, where another stage's command may be writing at this moment
        remove_partial_files(folder)
    ckpt = _resume_point(cfg, ctx, run, fp, resume, say)
    log = StageLog(folder, enabled=ctx.is_main, tensorboard=cfg.tensorboard,
                   purge_step=len(ckpt["history"]) + 1 if ckpt else None)
    if ctx.is_main:
        save_config(cfg, folder / "config.yaml")

    # ---- data: every process holds batch_size / world scans of each global batch
    world = ctx.world_size
    if optim_cfg.batch_size % world:
        raise StageError(f"{cfg.stage}.batch_size {optim_cfg.batch_size} is the global batch and must be "
                         f"divisible by the {world} processes")
    local_batch = optim_cfg.batch_size // world
    train_rows, train_labels = data.split("train")
    if len(train_rows) < optim_cfg.batch_size:
        raise StageError(f"the training split has {len(train_rows)} scans, fewer than {cfg.stage}.batch_size "
                         f"{optim_cfg.batch_size}")
    saliency = None
    if stage.uses_saliency:
        from .stages.saliency import open_maps

        saliency = open_maps(run)
    train_set = ScanDataset(data.images_path, train_rows, train_labels, saliency)
    sampler = ResumableDistributedSampler(train_set, num_replicas=world, rank=ctx.rank, seed=cfg.seed,
                                          batch_size=local_batch)
    loader = make_loader(train_set, batch_size=local_batch, cfg=cfg, ctx=ctx, sampler=sampler)
    steps_per_epoch = sampler.batches_per_epoch()

    # ---- model, loss, optimiser: the same seed on every process gives the same initial weights
    torch.manual_seed(cfg.seed)
    model = stage.build_model(cfg, run)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"]["state_dict"])
    elif optim_cfg.init_weights:
        start_from(model, Path(optim_cfg.init_weights), cfg.stage)
    model.to(ctx.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = stage.make_loss(model, cfg, train_labels, run=run).to(ctx.device)
    if cfg.sync_batchnorm:
        loss_fn = distributed.convert_batchnorm(loss_fn, ctx)
    step_fn = loss_fn
    if ctx.distributed:
        # with global-batch BatchNorm the running statistics are equal everywhere: no per-step broadcast
        sync = not cfg.sync_batchnorm
        buffers = ({"forward_sync_buffers": sync} if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel.__init__).parameters else {"broadcast_buffers": sync})  # torch < 2.13
        step_fn = DistributedDataParallel(loss_fn, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                                          **buffers)
    def schedule(lr: float, epochs: int):
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=optim_cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=optim_cfg.min_lr)

    # the autoencoder's two phases (consistency_lr > 0): reconstruction annealed over the warm-up, then a
    # fresh schedule with the consistency term from the warm-up's last weights
    restart = optim_cfg.consistency_warmup if optim_cfg.consistency_lr > 0 else 0
    optimizer, scheduler = schedule(optim_cfg.lr, restart or optim_cfg.epochs)
    progress = {"epoch": 0, "batches_done": 0, "global_step": 0, "loss_sum": 0.0, "loss_count": 0}
    history: list[dict] = []
    best = {"metric": optim_cfg.best_metric, "value": None, "epoch": 0}
    mode = BEST_METRICS[optim_cfg.best_metric]
    if ckpt is not None:  # the state of either phase's schedule (rate, T_max, step) comes back whole
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        progress, history, best = dict(ckpt["progress"]), list(ckpt["history"]), dict(ckpt["best"])
        states = ckpt["rng"]
        restore_rng(states[ctx.rank] if len(states) == world else states[0])
        log.info(f"{cfg.stage}: resumed from {folder / 'last.pt'} at epoch {progress['epoch'] + 1}, "
                 f"batch {progress['batches_done']}/{steps_per_epoch} (step {progress['global_step']})")
    else:
        # each process draws its own dropout masks from here on; rank 0's stream is a 1-process run's
        torch.manual_seed(cfg.seed * 1000 + 1 + ctx.rank)
        n_params = sum(p.numel() for p in model.parameters())
        log.info(f"{cfg.stage}: {model.registry_name} ({n_params:,} parameters) on {world} x {ctx.device}; "
                 f"{data.describe(cfg)}; {steps_per_epoch} steps of {optim_cfg.batch_size} scans per epoch")
    def saved_at() -> str:
        at = (f"end of epoch {progress['epoch']}" if progress["batches_done"] == 0
              else f"epoch {progress['epoch'] + 1}, batch {progress['batches_done']}")
        return f"{folder / 'last.pt'} (step {progress['global_step']}, {at})"

    last_saved = saved_at() if ckpt is not None else None

    def write_checkpoint() -> str:
        rng = distributed.all_gather_objects(capture_rng(), ctx)  # every process's generators
        if ctx.is_main:
            save_checkpoint(folder / "last.pt", {
                "kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "stage": cfg.stage,
                "model": model_entry(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "progress": dict(progress), "best": dict(best),
                "history": list(history), "rng": rng, "world_size": world, "fingerprint": fp,
                "config": cfg.to_dict(), "torch_version": str(torch.__version__)})
            log.write_csv(history)
        return saved_at()

    # ---- the loop
    for epoch in range(progress["epoch"], optim_cfg.epochs):
        since = max(best["epoch"], optim_cfg.consistency_warmup)  # a changing objective does not count
        if optim_cfg.patience and epoch - since >= optim_cfg.patience:  # checked again on resume
            log.info(f"{cfg.stage}: stopping early: no better {best['metric']} in the last "
                     f"{optim_cfg.patience} epochs (best: epoch {best['epoch']})")
            break
        if restart and epoch == restart and progress["batches_done"] == 0:
            # a fresh schedule, and the best epoch is chosen among those trained with the term
            optimizer, scheduler = schedule(optim_cfg.consistency_lr, optim_cfg.epochs - restart)
            best = {"metric": optim_cfg.best_metric, "value": None, "epoch": 0}
            log.info(f"{cfg.stage}: warm-up over; the consistency term starts with a fresh schedule from "
                     f"lr {optim_cfg.consistency_lr:g} over {optim_cfg.epochs - restart} epochs")
        sampler.set_epoch(epoch, progress["batches_done"])
        loss_fn.train()
        lr = optimizer.param_groups[0]["lr"]
        started = time.time()
        for batch in loader:
            batch = augment_batch(to_device(batch, ctx.device), epoch=epoch, seed=cfg.seed,
                                  flip_lr=optim_cfg.flip_lr, flip_ap=optim_cfg.flip_ap, task=cfg.data.task,
                                  blur_sigma_px=optim_cfg.blur_sigma_px, noise_std=optim_cfg.noise_std)
            batch["epoch"] = epoch  # for losses whose terms follow a schedule (the autoencoder's consistency)
            with autocast(cfg, ctx.device):
                loss = step_fn(batch)
            # the global batch's loss (a sync point); checked before any weight changes
            value = float(distributed.all_reduce_sum(loss.detach().float(), ctx)) / world
            if not math.isfinite(value):
                kept = (f"the last good checkpoint {last_saved} is kept" if last_saved
                        else "no checkpoint had been written yet")
                raise StageError(f"{cfg.stage}: the loss is {value} at epoch {epoch + 1}, step "
                                 f"{progress['global_step'] + 1}; training stopped and {kept}. Check the data, "
                                 f"or lower {cfg.stage}.lr (or set {cfg.stage}.grad_clip) and pass --fresh")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if optim_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.grad_clip)
            optimizer.step()
            progress["batches_done"] += 1
            progress["global_step"] += 1
            progress["loss_sum"] += value
            progress["loss_count"] += 1
            if cfg.log_every_steps and progress["global_step"] % cfg.log_every_steps == 0:
                log.info(f"{cfg.stage}: epoch {epoch + 1} step {progress['batches_done']}/{steps_per_epoch} "
                         f"loss {value:.4f}")
            if (cfg.checkpoint_every_steps and progress["global_step"] % cfg.checkpoint_every_steps == 0
                    and progress["batches_done"] < steps_per_epoch):
                last_saved = write_checkpoint()
            if cfg.step_sleep_s:
                time.sleep(cfg.step_sleep_s)
        scheduler.step()
        train_loss = progress["loss_sum"] / max(1, progress["loss_count"])
        val = evaluate_split(stage, model, data, "val", cfg, ctx, saliency)
        row = {"epoch": epoch + 1, "step": progress["global_step"], "lr": lr, "train_loss": train_loss,
               **{f"val_{k}": v for k, v in val.items()}}
        history.append(row)
        if improved(row.get(optim_cfg.best_metric), best["value"], mode):
            value = row.get(optim_cfg.best_metric)
            best = {"metric": optim_cfg.best_metric, "epoch": epoch + 1,
                    "value": None if value is None or math.isnan(value) else float(value)}
            if ctx.is_main:
                save_checkpoint(folder / "best.pt", {
                    "kind": BEST_KIND, "format_version": FORMAT_VERSION, "stage": cfg.stage,
                    "model": model_entry(model), "best": dict(best), "fingerprint": fp, "config": cfg.to_dict()})
        progress = {"epoch": epoch + 1, "batches_done": 0, "global_step": progress["global_step"],
                    "loss_sum": 0.0, "loss_count": 0}
        last_saved = write_checkpoint()
        elapsed = time.time() - started
        log.scalars({k: v for k, v in row.items() if k not in ("epoch", "step")}, epoch + 1)
        log.scalars({"epoch_seconds": elapsed}, epoch + 1, prefix="time/")
        shown = " ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float))
        log.info(f"{cfg.stage}: epoch {epoch + 1}/{optim_cfg.epochs} {shown} ({elapsed:.1f} s)"
                 + (" *best*" if best["epoch"] == epoch + 1 else ""))

    # ---- the best-validation weights: test metrics, model.safetensors, done.json
    distributed.barrier(ctx)
    best_path = folder / "best.pt"
    if best_path.is_file():
        model.load_state_dict(load_checkpoint(best_path, BEST_KIND)["model"]["state_dict"])
    test_outputs: dict = {}
    test = evaluate_split(stage, model, data, "test", cfg, ctx, saliency, outputs_out=test_outputs)
    best_row = next((r for r in history if r["epoch"] == best["epoch"]), {})
    done = {"stage": cfg.stage, "fingerprint": fp, "weights": "model.safetensors", "sha256": None,
            "architecture": model.registry_name, "config": dict(model.config), "epochs": optim_cfg.epochs,
            "epochs_run": len(history),
            "best": best, "metrics": {"val": {k[4:]: v for k, v in best_row.items() if k.startswith("val_")},
                                      "test": test},
            "data": data.counts(), "command": command, "world_size": world, "finished_at": now()}
    if ctx.is_main:
        # again: a run killed between its last checkpoint and metrics.csv resumes straight to here
        log.write_csv(history)
        done["sha256"] = save_weights(model, run.weights(cfg.stage), {"stage": cfg.stage})
        write_predictions(folder / "test_predictions.csv", data, "test", test_outputs)
        atomic_write_json(run.done_path(cfg.stage), done)
        shown = " ".join(f"{k} {v:.4g}" for k, v in test.items())
        log.info(f"{cfg.stage}: done; best epoch {best['epoch']} ({best['metric']} {best['value']}); test {shown}")
    log.close()
    distributed.barrier(ctx)
    return run.read_done(cfg.stage) if not ctx.is_main else done


# ---------------------------------------------------------------------------------------------------
# entry points


def execute_stage(cfg: TrainConfig, ctx: DistContext, run: RunFolder, data: ScanData, *, command: str,
                  resume: bool = False, fresh: bool = False, say: Callable[[str], None] = print) -> dict:
    """Run cfg.stage (train it, or compute the saliency maps); the pipeline calls this too."""
    if fresh:
        if ctx.is_main:
            say(f"{cfg.stage}: --fresh: removing {run.stage_dir(cfg.stage)}")
            run.clear_stage(cfg.stage)
        distributed.barrier(ctx)
    if cfg.stage == "saliency":
        from .stages.saliency import run_saliency

        return run_saliency(cfg, ctx, run, data, command=command, log=say)
    return train_stage(cfg, ctx, run, data, command=command, resume=resume, say=say)


def parse_args(argv: list[str], prog: str = "python -m training.train") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="overrides: key=value for any config key, e.g. stage=acat baseline.lr=3e-4")
    parser.add_argument("--config", help="YAML config (training/configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from last.pt; fail if there is none")
    parser.add_argument("--fresh", action="store_true", help="discard this stage's outputs and start over")
    parser.add_argument("--prepare-only", action="store_true", help="build the data cache and stop")
    parser.add_argument("overrides", nargs="*", help="key=value")
    return parser.parse_intermixed_args(argv)  # options and key=value overrides in any order


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ctx: Optional[DistContext] = None
    try:
        cfg = load_config(args.config, args.overrides)
        ctx = distributed.setup(cfg.device, cfg.ddp_timeout_minutes)
        setup_determinism(cfg)
        run = RunFolder(cfg.out_dir)
        command = command_line("training.train", argv)
        say = StageLog(run.root, enabled=ctx.is_main, tensorboard=False, filename="run.log").info
        if ctx.is_main:
            run.record_command(command, f"train {cfg.stage}", ctx.world_size)
            save_config(cfg, run.root / "config.yaml")
        data = load_data(cfg, ctx, say)
        if args.prepare_only:
            say(f"data cache ready: {data.describe(cfg)}")
            return 0
        execute_stage(cfg, ctx, run, data, command=command, resume=args.resume, fresh=args.fresh, say=say)
        return 0
    except (ACATInputError, StageError) as exc:
        distributed.report_error(exc, ctx, stage_error=isinstance(exc, StageError))
        return EXIT_BAD_INPUT
    finally:
        if ctx is not None:
            distributed.cleanup(ctx)


if __name__ == "__main__":
    sys.exit(main())
