"""All of Algorithm 1 in order - baseline, autoencoder, saliency maps, ACAT - skipping finished stages.

::

    python -m training.pipeline --config training/configs/brain_cpu.yaml
    torchrun --standalone --nproc-per-node=8 -m training.pipeline --config training/configs/brain_paper.yaml
    python -m training.pipeline --config training/configs/lung_cpu.yaml --fresh acat     # redo one stage

(the launch commands are those of train.py, whose docstring has the 2-node form.)

A stage is skipped when its outputs are complete and valid (run_folder.stage_status): done.json written,
the fingerprint unchanged (its config keys, the data, the sha256 of the upstream weights) and its weights
intact. A stage left half-way resumes from its checkpoint; a stage whose upstream changed (a retrained
baseline) is recomputed. When ``seeds`` lists several seeds each gets its own run folder
``<out_dir>/seed_<N>`` (the paper reports three), sharing one data cache.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Optional

from ACATLogic.errors import EXIT_BAD_INPUT, ACATInputError

from . import distributed
from .config import TrainConfig, load_config, save_config
from .data import cache_root
from .distributed import DistContext
from .logs import StageLog
from .run_folder import STAGE_ORDER, RunFolder, StageError, command_line, stage_status
from .train import execute_stage, load_data, setup_determinism


def seed_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """One config per run: ``cfg`` itself, or one per entry of ``seeds`` in out_dir/seed_N."""
    if len(cfg.seeds) <= 1:
        return [cfg]
    out = []
    for seed in cfg.seeds:
        c = copy.deepcopy(cfg)
        c.seed = int(seed)
        c.out_dir = str(Path(cfg.out_dir) / f"seed_{seed}")
        c.data.cache_dir = str(cache_root(cfg))  # the scans are the same for every seed
        out.append(c)
    return out


def run_pipeline(cfg: TrainConfig, ctx: DistContext, *, command: str, fresh: tuple[str, ...] = (),
                 stages: tuple[str, ...] = STAGE_ORDER) -> dict:
    """Run the stages of one run folder in order; returns {stage: "skipped" | "ran"}."""
    run = RunFolder(cfg.out_dir)
    say = StageLog(run.root, enabled=ctx.is_main, tensorboard=False, filename="run.log").info
    if ctx.is_main:
        run.record_command(command, "pipeline", ctx.world_size)
        save_config(cfg, run.root / "config.yaml")
    data = load_data(cfg, ctx, say)
    report = {}
    for stage in stages:
        stage_cfg = copy.deepcopy(cfg)
        stage_cfg.stage = stage
        redo = stage in fresh
        complete, why = stage_status(stage_cfg, stage, run, data.digest()) if not redo else (False, "--fresh")
        complete, why = distributed.broadcast_object((complete, why), ctx)  # rank 0's view decides
        if complete:
            say(f"pipeline: {stage} is complete and valid; skipped")
            report[stage] = "skipped"
            continue
        say(f"pipeline: {stage}: {why}; running it")
        execute_stage(stage_cfg, ctx, run, data, command=command, fresh=redo, say=say)
        report[stage] = "ran"
    return report


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m training.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (training/configs/*.yaml)")
    parser.add_argument("--fresh", nargs="?", const="all", default="",
                        help="redo stages from scratch: all (no value) or a comma-separated list")
    parser.add_argument("--stages", default=",".join(STAGE_ORDER), help="which stages to run (default: all four)")
    parser.add_argument("overrides", nargs="*", help="key=value")
    args = parser.parse_intermixed_args(argv)  # options and key=value overrides in any order
    ctx: Optional[DistContext] = None
    if "=" in args.fresh:  # `--fresh key=value`: argparse took an override for the option's value
        args.overrides.insert(0, args.fresh)
        args.fresh = "all"
    try:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        fresh = STAGE_ORDER if args.fresh == "all" else tuple(s.strip() for s in args.fresh.split(",") if s.strip())
        unknown = [s for s in stages + fresh if s not in STAGE_ORDER]
        if unknown:
            raise ACATInputError(f"unknown stage(s) {unknown}; the stages are {list(STAGE_ORDER)}")
        stages = tuple(s for s in STAGE_ORDER if s in stages)
        cfg = load_config(args.config, args.overrides)
        ctx = distributed.setup(cfg.device, cfg.ddp_timeout_minutes)
        setup_determinism(cfg)
        command = command_line("training.pipeline", argv)
        for run_cfg in seed_configs(cfg):
            run_pipeline(run_cfg, ctx, command=command, fresh=fresh, stages=stages)
        return 0
    except (ACATInputError, StageError) as exc:
        distributed.report_error(exc, ctx, stage_error=isinstance(exc, StageError))
        return EXIT_BAD_INPUT
    finally:
        if ctx is not None:
            distributed.cleanup(ctx)


if __name__ == "__main__":
    sys.exit(main())
