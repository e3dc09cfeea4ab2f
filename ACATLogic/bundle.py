"""Model bundles: ``.safetensors`` weights + a ``model.json`` card, verified before anything is built.

A bundle is a folder::

    model.json                 the card (below)
    baseline.safetensors       the baseline classifier f
    autoencoder.safetensors    the autoencoder E, D
    acat.safetensors           optional: the ACAT classifier

The card (format_version 1) holds: ``id``, ``version``, ``task`` (any name: the task is what its ``labels``
say, not one of a fixed list), ``labels`` (the classes in output order), ``healthy_index`` (optional, default
0: the healthy / negative class, the counterfactual's "no finding"), ``input`` (see
`ACATLogic.preprocess.InputSpec`), ``models`` (per role: ``architecture``, ``config``, ``weights``,
``sha256``), ``explanation`` (default counterfactual parameters), ``training_data``, ``metrics`` (each
with the ``command`` that produced it), ``licence`` and ``intended_use``. Unknown fields are refused,
so that a card from a newer or tampered source is never half-understood.

Loading never unpickles: weights are read with safetensors only, their sha256 must match the card, and
every tensor's name and shape must match the architecture the card describes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# where bundles are found is the catalogue's (one discovery for every front end); re-exported for the callers
# that resolve a name and then load it
from .catalogue import CARD_NAME, DEFAULT_MODEL, available_models, models_dirs, resolve_model  # noqa: F401
from .errors import ACATInputError
from .io.atomic import atomic_directory
from .options import RESOLVED_KEYS, VARIANT_DEFAULTS, ExplainOptions
from .organ import ORGANS
from .preprocess import InputSpec

FORMAT_VERSION = 1
ROLES = ("baseline", "autoencoder", "acat")
REQUIRED_ROLES = ("baseline", "autoencoder")
#: the bundled models' tasks; a card may name any task (`TASK_NAME`): its labels say what the classes are
TASKS = ("brain_stroke", "lung_covid")
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESEARCH_ONLY = "Research use only. Not for diagnosis or any clinical decision."
_CARD_FIELDS = {"format_version", "id", "version", "task", "labels", "input", "models", "explanation",
                "training_data", "metrics", "licence", "intended_use", "description", "healthy_index"}
_MODEL_FIELDS = {"architecture", "config", "weights", "sha256"}
_MAX_CARD_BYTES = 1 << 20
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelBundle:
    """A loaded, verified bundle: the card and the built models (eval mode, on CPU)."""

    path: Path
    card: dict
    spec: InputSpec
    models: dict = field(default_factory=dict)  # role -> nn.Module

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def labels(self) -> list[str]:
        return list(self.card["labels"])

    @property
    def healthy_index(self) -> int:
        """The index of the healthy (negative) class in `labels`: the card's ``healthy_index``, else 0. The
        decision a counterfactual explains is "this class" against "any other"."""
        return int(self.card.get("healthy_index", 0))

    @property
    def explanation_defaults(self) -> dict:
        """The card's counterfactual parameters (`ACATLogic.options.ExplainOptions.resolved` reads them)."""
        return dict(self.card.get("explanation") or {})

    def sha256(self) -> dict:
        return {role: entry["sha256"] for role, entry in self.card["models"].items()}


def unique_state(model: torch.nn.Module) -> tuple[dict, dict]:
    """The state dict without aliases (one module registered under two names shares its tensors),
    and the aliases found (alias name -> kept name). Safetensors refuses shared tensors."""
    state, aliases, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride())) if tensor.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        state[name] = tensor
    return state, aliases


def _fail(message: str, path: Path) -> ACATInputError:
    return ACATInputError(message, path)


def _input_problem(spec: InputSpec) -> str:
    """Why an input spec cannot describe a model's input, or "" (bounds generous for any CT classifier)."""
    if not 1 <= spec.slices <= 1024:
        return f"slices must be 1 to 1024, not {spec.slices}"
    if not all(4 <= n <= 4096 for n in spec.size):
        return f"size must be 4 to 4096 pixels per side, not {list(spec.size)}"
    level, width = spec.hu_window
    if not (math.isfinite(level) and math.isfinite(width) and 0 < width <= 100000 and abs(level) <= 100000):
        return f"hu_window must be a finite (level, width) with width > 0, not {list(spec.hu_window)}"
    if spec.alignment not in ("brain_midline", "centre"):
        return f"alignment must be brain_midline or centre, not {spec.alignment!r}"
    if spec.organ not in ORGANS:
        return f"organ must be one of {', '.join(ORGANS)}, not {spec.organ!r}"
    if not (math.isfinite(spec.fov_margin) and 0.1 <= spec.fov_margin <= 10):
        return f"fov_margin must be 0.1 to 10, not {spec.fov_margin}"
    return ""


def explanation_card(explanation: Optional[dict] = None) -> dict:
    """A card's "explanation": the variant (default residual) with every parameter written out."""
    explanation = dict(explanation or {})
    variant = explanation.get("variant", "residual")
    return {"variant": variant, **VARIANT_DEFAULTS[variant], **explanation}


def _explanation_problem(explanation) -> str:
    """Why a card's "explanation" (counterfactual defaults) cannot be used, or ""."""
    if not isinstance(explanation, dict):
        return "it must be an object"
    unknown = set(explanation) - set(RESOLVED_KEYS)
    if unknown:
        return f"unknown fields {sorted(unknown)}"
    try:
        ExplainOptions(**explanation)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return ""


def read_card(folder: Path) -> dict:
    """Parse and validate ``model.json`` (no weights read). Raises `ACATInputError`."""
    folder = Path(folder)
    if folder.is_file():
        if folder.suffix.lower() in PICKLE_SUFFIXES:
            raise _fail("is a pickled PyTorch file; ACAT loads only .safetensors bundles with a model.json card "
                        "(a pickle can run code when opened)", folder)
        folder = folder.parent if folder.name == CARD_NAME else folder
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES) if folder.is_dir() else []
        hint = f" (found pickled files {pickles[:3]}, which ACAT never loads)" if pickles else ""
        raise _fail(f"not a model bundle: no {CARD_NAME}{hint}", folder)
    if card_path.stat().st_size > _MAX_CARD_BYTES:
        raise _fail("the model card is larger than 1 MB; refusing to parse it", card_path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(f"the model card is not valid JSON ({exc})", card_path) from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise _fail("the model card is nested too deeply to be a model card", card_path) from None
    if not isinstance(card, dict):
        raise _fail("the model card must be a JSON object", card_path)
    unknown = set(card) - _CARD_FIELDS
    if unknown:
        raise _fail(f"unknown fields in the model card: {sorted(unknown)}", card_path)
    if card.get("format_version") != FORMAT_VERSION:
        raise _fail(f"unsupported card format_version {card.get('format_version')!r} (this ACAT reads "
                    f"{FORMAT_VERSION})", card_path)
    for key in ("id", "version", "task", "labels", "input", "models", "licence", "intended_use"):
        if key not in card:
            raise _fail(f"the model card lacks '{key}'", card_path)
    if not (isinstance(card["task"], str) and TASK_NAME.fullmatch(card["task"])):
        raise _fail(f"the task must be a name of letters, digits, '_', '.' or '-' (at most 64), not "
                    f"{card['task']!r}", card_path)
    if not (isinstance(card["labels"], list) and all(isinstance(x, str) and x.strip() for x in card["labels"])
            and len(card["labels"]) >= 2 and len(set(card["labels"])) == len(card["labels"])):
        raise _fail("'labels' must be a list of at least two distinct names", card_path)
    healthy = card.get("healthy_index", 0)
    if isinstance(healthy, bool) or not isinstance(healthy, int) or not 0 <= healthy < len(card["labels"]):
        raise _fail(f"'healthy_index' must be the index of the healthy (negative) class in 'labels', 0 to "
                    f"{len(card['labels']) - 1}, not {healthy!r}", card_path)
    if not isinstance(card["input"], dict):
        raise _fail("invalid 'input' in the model card (it must be an object)", card_path)
    try:
        spec = InputSpec.from_dict(card["input"])
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise _fail(f"invalid 'input' in the model card ({exc})", card_path) from None
    problem = _input_problem(spec)
    if problem:
        raise _fail(f"invalid 'input' in the model card: {problem}", card_path)
    problem = _explanation_problem(card.get("explanation", {}))
    if problem:
        raise _fail(f"invalid 'explanation' in the model card: {problem}", card_path)
    models = card["models"]
    if not isinstance(models, dict) or set(models) - set(ROLES):
        raise _fail(f"'models' must map roles {list(ROLES)} to weights", card_path)
    for role in REQUIRED_ROLES:
        if role not in models:
            raise _fail(f"the model card has no '{role}' model", card_path)
    for role, entry in models.items():
        if not isinstance(entry, dict) or set(entry) != _MODEL_FIELDS:
            raise _fail(f"models.{role} must have exactly the fields {sorted(_MODEL_FIELDS)}", card_path)
        weights = str(entry["weights"])
        if Path(weights).name != weights or not weights.endswith(".safetensors"):
            raise _fail(f"models.{role}.weights must be a .safetensors file name in the bundle folder", card_path)
    return card


def check_architectures(card: dict, card_path: Path) -> None:
    """Every model the card describes: sane config, weights that fit the memory, a forward pass that works
    on the card's input size; checked on PyTorch's meta device, before anything is built
    (`ACATLogic.model_check`). Raises `ACATInputError`."""
    from .io.limits import memory_budget_bytes
    from .model_check import architecture_problem

    spec = InputSpec.from_dict(card["input"])
    for role, entry in card["models"].items():
        problem = architecture_problem(role, entry["architecture"], entry["config"], slices=spec.slices,
                                       size=spec.size, n_labels=len(card["labels"]), budget_bytes=memory_budget_bytes())
        if problem:
            raise _fail(f"invalid architecture in the model card: {problem}", card_path)


def without_acat(bundle: "ModelBundle") -> "ModelBundle":
    """The same bundle less its ACAT classifier: the baseline predicts (the comparison methods' evaluation,
    the benchmark's --quick runs)."""
    if "acat" not in bundle.models:
        return bundle
    return replace(bundle, models={k: m for k, m in bundle.models.items() if k != "acat"})


def load_bundle(folder, *, device: str | torch.device = "cpu") -> ModelBundle:
    """Read, verify (sha256, names, shapes) and build every model of a bundle.

    ``folder``: a bundle folder (or its model.json), or the id of an installed bundle - ``load_bundle(
    "brain-stroke-phantom")``, as ``acat explain --model`` takes it (`ACATLogic.catalogue.resolve_model`)."""
    from .models import create_model  # registry import populates the architectures

    folder = resolve_model(os.fspath(folder)) if not Path(folder).exists() else Path(folder)
    card = read_card(folder)
    if folder.is_file():
        folder = folder.parent
    check_architectures(card, folder / CARD_NAME)  # before any weight is read or any model is built
    built = {}
    for role, entry in card["models"].items():
        weights = folder / entry["weights"]
        if not weights.is_file():
            missing = not weights.exists()
            raise _fail(f"the {role} weights named in the card are missing" if missing else
                        f"the {role} weights are not a regular file (a pipe, socket or device); a bundle holds "
                        ".safetensors files", weights)
        digest = sha256_file(weights)
        if digest != entry["sha256"]:
            raise _fail(f"sha256 mismatch: the {role} weights are not the ones the card describes "
                        "(tampered or corrupted file)", weights)
        try:
            model = create_model(entry["architecture"], **entry["config"])
        except (TypeError, ValueError, KeyError) as exc:
            raise _fail(f"cannot build the {role} architecture {entry['architecture']!r} ({exc})",
                        folder / CARD_NAME) from None
        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise _fail(f"not a readable safetensors file ({exc})", weights) from None
        expected, aliases = unique_state(model)
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise _fail(f"the {role} weights do not fit the architecture: missing {missing[:3]}, "
                        f"unexpected {extra[:3]}", weights)
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise _fail(f"the {role} weight {name} has shape {tuple(tensor.shape)}, the architecture needs "
                            f"{tuple(expected[name].shape)}", weights)
        result = model.load_state_dict(state, strict=False)
        if set(result.missing_keys) - set(aliases) or result.unexpected_keys:
            raise _fail(f"the {role} weights do not load into the architecture", weights)
        built[role] = model.eval().to(device)
    labels = card["labels"]
    names = list(getattr(built["baseline"], "class_names", labels))
    if names != labels:
        raise _fail(f"the card's labels {labels} differ from the model's classes {names}", folder / CARD_NAME)
    return ModelBundle(folder, card, InputSpec.from_dict(card["input"]), built)


def save_bundle(folder, *, models: dict, bundle_id: str, version: str, task: str, spec: InputSpec,
                training_data: str, metrics: Optional[list] = None, licence: str = "Apache-2.0",
                explanation: Optional[dict] = None, description: str = "", overwrite: bool = False,
                healthy_index: int = 0) -> Path:
    """Write a bundle atomically: one safetensors file per role, sha256 in the card."""
    folder = Path(folder)
    labels = list(models["baseline"].class_names)
    card = {"format_version": FORMAT_VERSION, "id": bundle_id, "version": version, "task": task,
            "labels": labels, "healthy_index": int(healthy_index), "description": description,
            "input": spec.to_dict(), "models": {},
            "explanation": explanation_card(explanation), "training_data": training_data,
            "metrics": metrics or [], "licence": licence, "intended_use": RESEARCH_ONLY}
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        for role, model in models.items():
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}")
            name = f"{role}.safetensors"
            state = {k: v.detach().cpu().contiguous() for k, v in unique_state(model)[0].items()}
            # One metadata entry: safetensors keeps metadata in a hash map whose order changes from
            # process to process, and the same weights must give the same file (and sha256).
            metadata = {"acat_bundle": json.dumps({"bundle": bundle_id, "role": role}, sort_keys=True)}
            save_file(state, str(tmp / name), metadata=metadata)
            card["models"][role] = {"architecture": model.registry_name, "config": model.config,
                                    "weights": name, "sha256": sha256_file(tmp / name)}
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return folder
