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
"""

from __future__ import annotations

import math
import warnings
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
    import torch

    from .models import create_model

    where = f"models.{role}.config"
    if not isinstance(architecture, str):
        return f"models.{role}.architecture must be a name"
    problem = _config_problem(config, where)
    if problem:
        return problem
    limit = MAX_PARAMETER_BYTES if budget_bytes is None else min(MAX_PARAMETER_BYTES, budget_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op" and such
        try:
            with torch.device("meta"):
                model = create_model(architecture, **config)
        except NotImplementedError:
            return ""  # an operation the meta device lacks: the real build will say what is wrong
        except (TypeError, ValueError, RuntimeError, KeyError, IndexError, OverflowError) as exc:
            return f"cannot build the {role} architecture {architecture!r} ({' '.join(str(exc).split())[:160]})"
        n_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        if n_bytes > limit:
            return (f"the {role} architecture {architecture!r} would have {n_bytes / 2**30:.1f} GiB of weights (at most "
                    f"{limit / 2**30:.1f} GiB); the card's config is damaged")
        x = torch.empty((1, slices, 1, size[0], size[1]), device="meta")
        try:
            with torch.no_grad():
                out = _forward(model.eval(), role, x)
        except NotImplementedError:
            return ""
        except (TypeError, ValueError, RuntimeError, IndexError, ZeroDivisionError, OverflowError) as exc:
            return (f"the {role} architecture {architecture!r} does not run on the card's input of {slices} x "
                    f"{size[0]} x {size[1]} ({' '.join(str(exc).split())[:160]})")
    if role != "autoencoder" and n_labels is not None and isinstance(out, torch.Tensor) \
            and tuple(out.shape) != (1, n_labels):
        return f"the {role} model gives outputs of shape {tuple(out.shape)}, not one per label ({n_labels})"
    return ""
