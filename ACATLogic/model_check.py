"""Checking a model card's architecture before any model is built.

A card names an architecture and its config (``models.ROLE.architecture`` / ``config``); building it
allocates every weight. A card with ``widths: [-4, ...]``, ``strides: [0, 2, 2]`` or ``channels: [..., 100000]``
used to fail only inside PyTorch: "negative dimension", an allocation of 360 GB attempted, or a zero stride
found at the first forward pass, each an internal error. `architecture_problem` says what is wrong, in
milliseconds and without allocating:

1. every number in the config is finite and in bounds: sizes (widths, channels, hidden units, depths,
   strides) whole numbers from 1 up to `SIZE_LIMITS`, no negative number anywhere;
2. the model is built on PyTorch's "meta" device (shapes only, no memory) and its parameters counted:
   more than `MAX_PARAMETER_BYTES` (or the memory budget, if lower) is refused;
3. a forward pass on the meta device with the card's input size (``input.slices`` x ``input.size``)
   must give one output per label: a zero stride or an input too small for the network fails here.

Steps 2-3 cost a fresh process 1.3-1.9 s (measured: README, Model bundles), nearly all of it PyTorch
importing its compiler and sympy for the meta device's Python kernels, for a check whose answer depends only
on the config, the input size, the model code and the PyTorch version. So a passing measurement (the weights' bytes and the output
shape) is kept in the user's cache (`ACATLogic.cache`, ``model-checks/torch-VERSION-CODE/``, or
``$ACAT_MODEL_CHECK_DIR``), keyed by all of those - the source of every file of ``ACATLogic/models`` and of
this module included - and every later load compares the kept numbers with its own memory budget and labels.
Never kept: failures, and architectures whose code is not all in ACATLogic/models (an installed package's,
or a built-in one whose config names one, such as an ACAT backbone). Trusted only from a regular file and a
folder that this user owns and nobody else may write (whoever can write there could switch the check off);
a cache that cannot be read or written is skipped; a new code version's first write removes the older
versions' folders.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import warnings
from pathlib import Path
from typing import Optional

#: bounds on the sizes a config may give (generous: the shipped models use 6 to 128 channels)
SIZE_LIMITS = {"widths": 8192, "channels": 8192, "hidden": 65536, "slice_hidden": 65536, "base_width": 1024,
               "depths": 64, "strides": 8}
#: more parameters than this is no CT classifier of this project (ResNet-50: 25 M parameters, 100 MB)
MAX_PARAMETER_BYTES = 4 << 30
MAX_LIST = 64
MAX_NUMBER = 1 << 20


def _config_problem(config: object, where: str) -> str:
    if not isinstance(config, dict):
        return f"{where} must be an object"
    for key, value in config.items():
        path = f"{where}.{key}"
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > MAX_LIST:
            return f"{path} has {len(value)} entries (at most {MAX_LIST})"
        for v in values:
            if isinstance(v, (dict, list)):
                return f"{path} must hold numbers, text or true/false, not nested values"
            if isinstance(v, bool) or v is None or isinstance(v, str):
                if isinstance(v, str) and len(v) > 64:
                    return f"{path} is too long"
                continue
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"{path} must be a finite number, not {v!r}"
            if key in SIZE_LIMITS:
                limit = SIZE_LIMITS[key]
                if not (isinstance(v, int) or float(v).is_integer()) or not 1 <= v <= limit:
                    return f"{path} must be whole numbers from 1 to {limit}, not {v!r}"
            elif v < 0 or v > MAX_NUMBER:
                return f"{path} must be from 0 to {MAX_NUMBER}, not {v!r}"
    return ""


def _forward(model, role: str, x):
    if role == "acat":
        return model(x, x)
    out = model(x)
    return out


def architecture_problem(role: str, architecture: object, config: object, *, slices: int, size: tuple[int, int],
                         n_labels: Optional[int] = None, budget_bytes: Optional[int] = None) -> str:
    """Why the card's ``role`` model cannot be built and run on the card's input, or "" (module docstring)."""
    where = f"models.{role}.config"
    if not isinstance(architecture, str):
        return f"models.{role}.architecture must be a name"
    problem = _config_problem(config, where)
    if problem:
        return problem
    limit = MAX_PARAMETER_BYTES if budget_bytes is None else min(MAX_PARAMETER_BYTES, budget_bytes)
    cache = _cache_file(role, architecture, config, slices, size)
    measured = _read_measurement(cache)
    if measured is None:
        problem, measured = _measure(role, architecture, config, slices=slices, size=size, limit=limit)
        if problem or measured is None:
            return problem
        _write_measurement(cache, measured)
    n_bytes, out_shape = measured["n_bytes"], measured["out_shape"]
    if n_bytes > limit:
        return _too_big(role, architecture, n_bytes, limit)
    if role != "autoencoder" and n_labels is not None and out_shape is not None and tuple(out_shape) != (1, n_labels):
        return f"the {role} model gives outputs of shape {tuple(out_shape)}, not one per label ({n_labels})"
    return ""


def _too_big(role: str, architecture: str, n_bytes: int, limit: int) -> str:
    return (f"the {role} architecture {architecture!r} would have {n_bytes / 2**30:.1f} GiB of weights (at most "
            f"{limit / 2**30:.1f} GiB); the card's config is damaged")


def _measure(role: str, architecture: str, config: dict, *, slices: int, size: tuple[int, int],
             limit: int) -> tuple[str, Optional[dict]]:
    """(problem, measurement): the model built and run on the meta device (steps 2-3); the measurement
    ({"n_bytes", "out_shape"}) only when both ran, None when the meta device lacks an operation."""
    import torch

    from .models import create_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op" and such
        try:
            with torch.device("meta"):
                model = create_model(architecture, **config)
        except NotImplementedError:
            return "", None  # an operation the meta device lacks: the real build will say what is wrong
        except (TypeError, ValueError, RuntimeError, KeyError, IndexError, OverflowError) as exc:
            return f"cannot build the {role} architecture {architecture!r} ({' '.join(str(exc).split())[:160]})", None
        n_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        if n_bytes > limit:
            return _too_big(role, architecture, n_bytes, limit), None
        x = torch.empty((1, slices, 1, size[0], size[1]), device="meta")
        try:
            with torch.no_grad():
                out = _forward(model.eval(), role, x)
        except NotImplementedError:
            return "", None
        except (TypeError, ValueError, RuntimeError, IndexError, ZeroDivisionError, OverflowError) as exc:
            return (f"the {role} architecture {architecture!r} does not run on the card's input of {slices} x "
                    f"{size[0]} x {size[1]} ({' '.join(str(exc).split())[:160]})"), None
    out_shape = [int(n) for n in out.shape] if isinstance(out, torch.Tensor) else None
    return "", {"n_bytes": int(n_bytes), "out_shape": out_shape}


# -- the cache of passing measurements (module docstring) -------------------------------------------
_CACHE_FORMAT = 1
#: the folder of kept checks instead of ``<cache>/model-checks`` (``make test`` gives each run its own)
CHECK_DIR_ENV = "ACAT_MODEL_CHECK_DIR"


def _model_code_digest() -> str:
    """sha256 of this module and every file under ACATLogic/models, read when this module is imported."""
    h = hashlib.sha256()
    here = Path(__file__).resolve()
    for path in [here, *sorted((here.parent / "models").rglob("*.py"))]:
        h.update(str(path.relative_to(here.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


_code_digest = _model_code_digest()


def _built_in(name: str) -> bool:
    from .models.registry import _REGISTRY

    factory = _REGISTRY.get(name)
    return factory is not None and getattr(factory, "__module__", "").startswith("ACATLogic.models.")


def _checks_dir() -> Path:
    """This code's folder of kept checks: one per PyTorch version and model code."""
    import torch

    from .cache import cache_dir

    root = os.environ.get(CHECK_DIR_ENV)
    base = Path(root) if root else cache_dir(create=False) / "model-checks"
    return base / f"torch-{torch.__version__.replace('+', '-')}-{_code_digest[:16]}"


def _cache_file(role: str, architecture: str, config: dict, slices: int, size) -> Optional[Path]:
    """Where the measurement of this exact check is kept, or None: an architecture whose code is not all in
    ACATLogic/models (one from an installed package, or a config naming one, such as an ACAT backbone)."""
    try:
        from . import models  # noqa: F401 - importing the package registers the built-in architectures
        from .models.registry import list_models

        names = set(list_models())
        named = [architecture] + [v for v in config.values() if isinstance(v, str) and v in names]
        if not all(_built_in(name) for name in named):
            return None
        key = json.dumps([_CACHE_FORMAT, role, architecture, config, int(slices), [int(n) for n in size]],
                         sort_keys=True)
        return _checks_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"
    except (OSError, RuntimeError, TypeError, ValueError):
        return None


def _private(st: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else: a kept check is trusted only then (Windows has no
    such owner and mode bits: there the user's own profile folder, which holds the cache, is what keeps
    others out)."""
    if not hasattr(os, "geteuid"):
        return True
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_measurement(path: Optional[Path]) -> Optional[dict]:
    """The kept measurement, or None when absent, not a private regular file in a private folder (another
    user could plant one there), or not exactly what `_measure` writes."""
    if path is None:
        return None
    try:
        folder = os.lstat(path.parent)
        if not stat.S_ISDIR(folder.st_mode) or not _private(folder):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not _private(st) or st.st_size > 4096:
                return None
            data = json.loads(os.read(fd, 4096))
        finally:
            os.close(fd)
        n_bytes, out_shape = data["n_bytes"], data["out_shape"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not whole(n_bytes) or not (out_shape is None or (isinstance(out_shape, list) and len(out_shape) <= 8
                                                         and all(whole(n) for n in out_shape))):
        return None
    return {"n_bytes": n_bytes, "out_shape": out_shape}


def _write_measurement(path: Optional[Path], measured: dict) -> None:
    """Keep ``measured`` at ``path`` (atomically: written beside, then renamed), in a folder only this user
    may write; the first write of a new code version removes the folders of older ones. Failures are ignored."""
    if path is None:
        return
    try:
        from .io.atomic import atomic_path

        if not path.parent.is_dir():
            path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            for old in path.parent.parent.glob("torch-*"):
                if old != path.parent and old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(measured), encoding="utf-8")
    except OSError:
        pass
