"""Checkpoints and weights: self-describing, written atomically, read without unpickling code.

A training checkpoint (``last.pt``, ``best.pt``) is a plain dict of tensors, numbers, strings, lists and
dicts (so ``torch.load(..., weights_only=True)`` reads it)::

    kind             "acat-training-checkpoint" | "acat-training-best"
    format_version   2 (1: written before the sha256 in the zip comment; still read)
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
(`atomic_write_bytes`): a crash or SIGKILL at any moment leaves either the old file or the new one, and a
write that fails (a full disk) leaves the old one untouched.

Checkpoints are verified like model bundles. ``torch.save`` writes a zip archive; `save_checkpoint` puts
the sha256 of its records (names and contents) in the archive's comment (``acat-sha256:<hex>``), in the
same file, so the one atomic rename covers both. `load_checkpoint` recomputes it with Python's
``zipfile`` - which reads bytes and never unpickles - before ``torch.load(weights_only=True)`` parses
anything: a truncated, damaged or edited checkpoint, or a pickle put in its place, is refused with an
`ACATInputError` naming the file, and nothing in it runs. Checkpoints of format 1 (written before the
digest existed) are still read, through ``weights_only=True`` alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ACATLogic.bundle import sha256_file, unique_state
from ACATLogic.errors import ACATInputError, short_reason
from ACATLogic.io.atomic import usual_mode
from ACATLogic.models import create_model

CHECKPOINT_KIND = "acat-training-checkpoint"
BEST_KIND = "acat-training-best"
FORMAT_VERSION = 2  # 2: the sha256 of the records in the zip comment; 1: none (still read)
DIGEST_PREFIX = b"acat-sha256:"
METADATA_KEY = "acat_training"  # safetensors metadata: {"architecture", "config", "stage"} as JSON

__all__ = ["atomic_write_bytes", "atomic_write_text", "capture_rng", "load_checkpoint", "load_weights",
           "remove_partial_files", "restore_rng", "save_checkpoint", "save_weights", "sha256_file",
           "verify_checkpoint"]


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


def _write_failed(target: Path, exc: Exception) -> ACATInputError:
    return ACATInputError(f"cannot write ({getattr(exc, 'strerror', None) or short_reason(exc)}); the previous {target.name}, if any, "
                          "is unchanged: free some space (or fix the folder's permissions) and run the command "
                          "again to continue", target)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temporary file in the same folder, fsync, os.replace.

    A write that fails (a full disk, a quota) removes the temporary file, leaves ``target`` as it was and
    raises `ACATInputError` naming the file.
    """
    target = Path(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        usual_mode(tmp)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):
            raise _write_failed(target, exc) from exc
        raise
    _fsync_dir(target.parent)


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.*.partial*``) that a writer killed mid-write left in ``folder``;
    returns them. Call it only where no other process is writing into ``folder``."""
    removed = []
    for path in sorted(Path(folder).glob(".*.partial*")) if Path(folder).is_dir() else []:
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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


def records_sha256(archive: zipfile.ZipFile) -> str:
    """sha256 over a zip archive's records in name order: each name, size and content (the comment is
    left out: it holds the digest). Reading a record also checks its CRC-32 (zipfile raises BadZipFile)."""
    digest = hashlib.sha256()
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        digest.update(f"{info.filename}\0{info.file_size}\0".encode("utf-8"))
        with archive.open(info) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` into memory, the records' sha256 into the zip comment, then an atomic write (a
    SIGKILL never leaves half a checkpoint; a failed write leaves the previous one as it was)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    with zipfile.ZipFile(buf) as archive:
        digest = records_sha256(archive)
    with zipfile.ZipFile(buf, "a") as archive:
        archive.comment = DIGEST_PREFIX + digest.encode("ascii")
    atomic_write_bytes(path, buf.getvalue())


def verify_checkpoint(path: Path) -> Optional[str]:
    """Check a checkpoint file's sha256 without unpickling anything; returns the digest, or None for a
    format-1 checkpoint that has none. Raises `ACATInputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ACATInputError("the checkpoint is missing", path)
    try:
        with zipfile.ZipFile(path) as archive:
            comment = archive.comment
            actual = records_sha256(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise ACATInputError(f"not a readable ACAT checkpoint ({short_reason(exc)}): truncated, damaged, or not "
                             "written by ACAT training; it was not unpickled. Delete it (or pass --fresh) to "
                             "train this stage again", path) from None
    if not comment:
        return None
    if not comment.startswith(DIGEST_PREFIX):
        raise ACATInputError("not an ACAT checkpoint (its zip comment holds no acat-sha256); it was not "
                             "unpickled", path)
    if comment[len(DIGEST_PREFIX):].decode("ascii", "replace") != actual:
        raise ACATInputError("sha256 mismatch: the checkpoint is not the one training wrote (tampered or "
                             "corrupted file); it was not unpickled. Delete it (or pass --fresh) to train this "
                             "stage again", path)
    return actual


def load_checkpoint(path: Path, kind: str = CHECKPOINT_KIND) -> dict:
    """Read a checkpoint this project wrote: sha256 verified first (`verify_checkpoint`), then
    ``torch.load(weights_only=True)`` (tensors and plain data only). Raises `ACATInputError`."""
    path = Path(path)
    digest = verify_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ACATInputError(f"the checkpoint holds objects other than tensors and plain data; refused without "
                             f"running them ({short_reason(exc, 120)})", path) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise ACATInputError(f"not a readable ACAT checkpoint ({short_reason(exc)})", path) from None
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        raise ACATInputError(f"not an ACAT training checkpoint of kind {kind!r}", path)
    version = payload.get("format_version")
    if version not in (1, FORMAT_VERSION) or (digest is None) != (version == 1):
        raise ACATInputError(f"checkpoint format {version!r} {'without' if digest is None else 'with'} a sha256: "
                             f"this code reads format {FORMAT_VERSION} (and format 1, written before the digest)",
                             path)
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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial.safetensors", dir=path.parent)
        os.close(fd)
        usual_mode(tmp)
        save_file(state, tmp, metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, (OSError, SafetensorError)):  # safetensors reports a full disk as its own error
            raise _write_failed(path, exc) from exc
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
