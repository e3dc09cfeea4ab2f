"""Checkpoints and weights: self-describing, written atomically, read without unpickling code.

A training checkpoint (``last.pt``, ``best.pt``) is a plain dict of tensors, numbers, strings, lists and
dicts (so ``torch.load(..., weights_only=True)`` reads it)::

    kind             "acat-training-checkpoint" | "acat-training-best"
    format_version   1
    stage            "baseline" | "autoencoder" | "acat"
    model            {"architecture": registry name, "config": constructor kwargs, "state_dict": ...}
    optimizer, scheduler                      state dicts (last.pt only)
    progress         {"epoch", "batches_done", "global_step", "loss_sum", "loss_count"} (last.pt only)
    best             {"metric", "value", "epoch"}
    history          one dict per finished epoch: the rows of metrics.csv
    rng              one entry per process: torch / cuda / numpy / python generator states
    fingerprint      what the stage was trained from (run_folder.fingerprint)
    config           the resolved TrainConfig as a dict
    torch_version

Final weights go to ``model.safetensors`` with the architecture and config in the file's metadata, so a
weights file names the model it belongs to (timm-style) and export needs nothing else.

Every file is written to a temporary name in the same folder, fsynced and renamed over the target
(`atomic_write_bytes`): a crash or SIGKILL at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ACATLogic.bundle import sha256_file, unique_state
from ACATLogic.errors import ACATInputError
from ACATLogic.models import create_model

CHECKPOINT_KIND = "acat-training-checkpoint"
BEST_KIND = "acat-training-best"
FORMAT_VERSION = 1
METADATA_KEY = "acat_training"  # safetensors metadata: {"architecture", "config", "stage"} as JSON

__all__ = ["atomic_write_bytes", "atomic_write_text", "capture_rng", "load_checkpoint", "load_weights",
           "restore_rng", "save_checkpoint", "save_weights", "sha256_file"]


def _fsync_dir(folder: Path) -> None:
    # the rename itself must reach the disk, or a power cut could bring the old name back
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temporary file in the same folder, fsync, os.replace."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path, value: Any) -> None:
    atomic_write_text(target, json.dumps(value, indent=2, sort_keys=False) + "\n")


def atomic_save_array(target: Path, array: np.ndarray) -> None:
    """An .npy file written atomically (np.save into memory first: chunks are small)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(target, buf.getvalue())


# ---------------------------------------------------------------------------------------------------
# random generator states


def capture_rng() -> dict:
    """This process's generator states, as tensors and lists (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])],
             "python": [py_state[0], list(py_state[1]), py_state[2]],
             "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None}
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------------
# checkpoints


def model_entry(model: nn.Module) -> dict:
    """{"architecture", "config", "state_dict"}: enough to rebuild the model without its code's defaults."""
    return {"architecture": model.registry_name, "config": dict(model.config),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` into memory, then an atomic write (a SIGKILL never leaves half a checkpoint)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, kind: str = CHECKPOINT_KIND) -> dict:
    """Read a checkpoint this project wrote (``weights_only=True``: tensors and plain data only)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        raise ValueError(f"{path} is not an ACAT training checkpoint of kind {kind!r}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {payload.get('format_version')!r}; this code reads "
                         f"{FORMAT_VERSION}")
    return payload


def model_from_entry(entry: dict) -> nn.Module:
    model = create_model(entry["architecture"], **entry["config"])
    model.load_state_dict(entry["state_dict"])
    return model


# ---------------------------------------------------------------------------------------------------
# final weights


def save_weights(model: nn.Module, path: Path, extra: Optional[dict] = None) -> str:
    """``model`` as safetensors (aliases removed) with architecture + config in the metadata; atomic.

    Returns the file's sha256 (what downstream stages and the bundle card record).
    """
    state = {k: v.detach().cpu().contiguous() for k, v in unique_state(model)[0].items()}
    description = {"architecture": model.registry_name, "config": model.config, **(extra or {})}
    # one metadata entry: safetensors keeps metadata in a hash map whose order changes from process to
    # process, and the file's sha256 must not (it decides whether downstream stages are recomputed)
    metadata = {METADATA_KEY: json.dumps(description, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial.safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return sha256_file(path)


def load_weights(path: Path) -> nn.Module:
    """Rebuild the model a `save_weights` file describes and load its tensors (strict, aliases aside)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = json.loads((fh.metadata() or {}).get(METADATA_KEY, "{}"))
    if "architecture" not in metadata:
        raise ACATInputError("no architecture in the weights' metadata: not a file written by training/", path)
    model = create_model(metadata["architecture"], **metadata.get("config", {}))
    state = load_file(str(path), device="cpu")
    _, aliases = unique_state(model)
    result = model.load_state_dict(state, strict=False)
    if set(result.missing_keys) - set(aliases) or result.unexpected_keys:
        raise ACATInputError(f"the weights do not fit {metadata['architecture']}: missing {result.missing_keys[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]}", path)
    return model
