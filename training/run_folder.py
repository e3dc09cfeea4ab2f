"""The run folder: where every stage writes, and how a stage knows whether its outputs are still valid.

::

    <out_dir>/
      config.yaml            resolved config of the latest command
      commands.jsonl         every train / pipeline / export command line run here (export copies them)
      cache/                 preprocessed scans (data.py), unless data.cache_dir points elsewhere
      baseline/ autoencoder/ acat/
        config.yaml  train.log  metrics.csv  tensorboard/
        last.pt  best.pt      checkpoints (checkpoint.py)
        model.safetensors     the best-validation weights
        done.json             written last: the stage is complete (fingerprint, sha256, metrics, command)
      saliency/
        maps/chunk_00000.npy  (n, S, 1, H, W) float32 saliency of cache rows [i*n, (i+1)*n)
        state.json            progress and fingerprint of the maps being computed
        done.json

A stage's *fingerprint* is what its outputs depend on: the config keys that matter to it (runtime
settings such as workers, device or logging do not), the data digest, and the sha256 of its upstream
outputs (saliency: the baseline's and autoencoder's weights; ACAT: the baseline's weights and the saliency
maps' fingerprint). A stage is complete when done.json exists, its fingerprint equals the current one and
its weights' sha256 matches; change the baseline and the saliency maps and ACAT are recomputed.
"""

from __future__ import annotations

import dataclasses

import datetime
import hashlib
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .checkpoint import sha256_file
from .config import TrainConfig
from .saliency_maps import maps_complete

STAGE_ORDER = ("baseline", "autoencoder", "saliency", "acat")
UPSTREAM = {"baseline": (), "autoencoder": (), "saliency": ("baseline", "autoencoder"),
            "acat": ("baseline", "saliency")}


class StageError(RuntimeError):
    """A stage cannot run as asked (missing upstream stage, a checkpoint from another config, NaN loss).

    The CLI prints it as one line and exits with status 2.
    """


@dataclass
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def done_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "done.json"

    def read_done(self, stage: str) -> Optional[dict]:
        path = self.done_path(stage)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def weights(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model.safetensors"

    def clear_stage(self, stage: str) -> None:
        """Remove a stage's outputs (done.json first, so a crash mid-way never leaves it 'complete')."""
        folder = self.stage_dir(stage)
        if self.done_path(stage).exists():
            self.done_path(stage).unlink()
        shutil.rmtree(folder, ignore_errors=True)

    def record_command(self, command: str, what: str, world_size: int = 1) -> None:
        """Append one line to commands.jsonl (rank 0 only)."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"time": now(), "what": what, "command": command, "world_size": world_size, "commit": git_commit()}
        with open(self.root / "commands.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def commands(self) -> list[dict]:
        path = self.root / "commands.jsonl"
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # empty, or torn by a full disk while it was appended
        return entries


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str:
    """The commit of the code that ran ('' outside a git checkout); '+dirty' when files were modified."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _launcher_command() -> Optional[str]:
    """torchrun's own command line, read from the parent process (Linux /proc), or None."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    for i, arg in enumerate(argv):
        if Path(arg).name == "torchrun":
            return shlex.join(["torchrun", *argv[i + 1:]])
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] == "torch.distributed.run":
            return shlex.join(["python", "-m", "torch.distributed.run", *argv[i + 2:]])
    return None


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that started this run, as typed (the interpreter's path shortened to "python").

    Under torchrun the launcher's own command line is read from the parent process; where that is not
    possible it is rebuilt from torchrun's environment (processes per node, number of nodes).
    """
    args = shlex.join(list(argv))
    if "TORCHELASTIC_RUN_ID" in os.environ:
        launcher = _launcher_command()
        if launcher is not None:
            return launcher
        local, world = os.environ.get("LOCAL_WORLD_SIZE", "1"), os.environ.get("WORLD_SIZE", "1")
        nodes = max(1, int(world) // max(1, int(local)))
        rebuilt = f"torchrun --nproc-per-node={local}" + (f" --nnodes={nodes}" if nodes > 1 else "")
        return f"{rebuilt} -m {module} {args}".strip()
    return f"python -m {module} {args}".strip()


# ---------------------------------------------------------------------------------------------------
# fingerprints


def _common(cfg: TrainConfig) -> dict:
    d = cfg.data
    return {"seed": cfg.seed, "input": cfg.to_dict()["input"],
            "data": {"source": d.source, "path": d.path, "task": d.task, "mosmed_classes": d.mosmed_classes,
                     "split_fractions": d.split_fractions, "split_seed": d.split_seed, "on_error": d.on_error,
                     # only when set: the runs of the brain and lung tasks keep their fingerprints
                     **({"labels": list(d.labels)} if d.labels else {}),
                     **({"healthy_class": d.healthy_class} if d.healthy_class else {})}}


def stage_config(cfg: TrainConfig, stage: str) -> dict:
    """The config keys a stage's results depend on (runtime settings excluded)."""
    full = cfg.to_dict()
    out = _common(cfg)
    # the organ restricts the maps only: the saliency stage's; ACAT depends on it through those maps (its inputs),
    # and a baseline or an autoencoder does not - so setting input.organ keeps them valid. Where it counts, the
    # organ the alignment gives anyway is keyed as "" (as every run before the setting was used)
    resolved = cfg.input.spec()
    default = dataclasses.replace(resolved, organ="").organ
    organ = "" if stage != "saliency" or resolved.organ == default else resolved.organ
    out["input"] = {**out["input"], "organ": organ}
    if stage == "baseline":
        out.update(model={"baseline": cfg.model.baseline, "baseline_config": cfg.model.baseline_config},
                   baseline=full["baseline"], bf16=cfg.bf16)
    elif stage == "autoencoder":
        out.update(model={"autoencoder_config": cfg.model.autoencoder_config}, autoencoder=full["autoencoder"],
                   bf16=cfg.bf16)
    elif stage == "saliency":
        sal = dict(full["saliency"])
        sal.pop("batch_size")  # memory only
        out = {"input": out["input"], "saliency": sal, "bf16": cfg.bf16}
    elif stage == "acat":
        out.update(model={"baseline": cfg.model.baseline, "baseline_config": cfg.model.baseline_config,
                          "acat_config": cfg.model.acat_config}, acat=full["acat"], bf16=cfg.bf16)
    else:
        raise ValueError(stage)
    if isinstance(out.get(stage), dict):  # runs made before these settings existed stay valid
        out[stage] = {k: v for k, v in out[stage].items() if not _later_default(k, v)}
    return out


#: settings added after runs existed, with the value that means "as before": a fingerprint leaves them out at
#: that value, and `differences` reads one that lacks them as holding it
LATER_DEFAULTS = {"init_weights": "", "sparsity": None, "whiten": None, "consistency_lr": 0.0}


def _later_default(key, value) -> bool:
    return key in LATER_DEFAULTS and value == LATER_DEFAULTS[key]


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def upstream_stages(cfg: TrainConfig, stage: str) -> tuple[str, ...]:
    """The stages whose outputs ``stage`` reads: the autoencoder reads the baseline only when trained with
    its classifier-consistency term."""
    if stage == "autoencoder" and cfg.autoencoder.consistency > 0:
        return ("baseline",)
    return UPSTREAM[stage]


def upstream_inputs(run: RunFolder, stage: str, cfg: Optional[TrainConfig] = None) -> dict:
    """sha256 of each upstream output; StageError naming the command to run when one is missing."""
    inputs = {}
    for up in (upstream_stages(cfg, stage) if cfg is not None else UPSTREAM[stage]):
        done = run.read_done(up)
        if done is None:
            raise StageError(f"the {up} stage has not finished in {run.root}; run it first "
                             f"(python -m training.train --config ... stage={up}, or training.pipeline)")
        if up == "saliency":
            inputs["saliency"] = digest(done["fingerprint"])
        else:
            weights = run.weights(up)
            if not weights.is_file() or sha256_file(weights) != done["sha256"]:
                raise StageError(f"{weights} is missing or differs from its done.json; run the {up} stage again")
            inputs[up] = done["sha256"]
    return inputs


def fingerprint(cfg: TrainConfig, stage: str, run: RunFolder, data_digest: str) -> dict:
    out = {"config": stage_config(cfg, stage), "data": data_digest, "inputs": upstream_inputs(run, stage, cfg)}
    init = getattr(getattr(cfg, stage, None), "init_weights", "")
    if init:  # fine-tuned: other starting weights at the same path are another training
        path = Path(init)
        if not path.is_file():
            raise StageError(f"{stage}.init_weights: no such file: {init}")
        out["init_weights_sha256"] = sha256_file(path)
    return out


def differences(old, new, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if (key not in old and _later_default(key, new[key])) or (key not in new and _later_default(key, old[key])):
                continue
            out += differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def stage_status(cfg: TrainConfig, stage: str, run: RunFolder, data_digest: str) -> tuple[bool, str]:
    """(complete and valid?, why not) for one stage of this run."""
    done = run.read_done(stage)
    if done is None:
        return False, "not finished"
    try:
        current = fingerprint(cfg, stage, run, data_digest)
    except StageError as exc:
        return False, str(exc)
    diff = differences(done.get("fingerprint", {}), current)
    if diff:
        return False, "changed since it ran: " + "; ".join(diff[:4])
    if stage == "saliency":
        return (True, "") if maps_complete(run, done) else (False, "saliency maps missing or damaged")
    weights = run.weights(stage)
    if not weights.is_file() or sha256_file(weights) != done.get("sha256"):
        return False, "model.safetensors is missing or differs from done.json"
    return True, ""

