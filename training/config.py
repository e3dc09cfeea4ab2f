"""Training configuration: a dataclass with defaults, YAML files on top, ``key=value`` overrides last.

::

    cfg = load_config("training/configs/brain_cpu.yaml", ["stage=baseline", "baseline.lr=3e-4"])
    cfg.baseline.lr           # 0.0003
    save_config(cfg, path)    # the resolved config, saved next to every result it produced

Overrides use dotted keys into the dataclass tree (``data.num_workers=4``) and free-form keys inside the
dict fields (``model.baseline_config.widths=[8,16,16,32,32,64,64]``); values are parsed as YAML, then
converted to the field's type, so ``1e-4`` is a float even though YAML 1.1 reads it as a string.
Unknown keys are errors: a typo must never train with a default silently. Relative paths (data.path,
out_dir, data.cache_dir) are relative to the working directory, normally the repository root.

``batch_size`` is the *global* batch: on N processes each takes ``batch_size / N`` scans, so the same
config gives the same optimisation on 1 GPU or 8 (see train.py).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ACATLogic.errors import ACATInputError
from ACATLogic.preprocess import InputSpec

from .checkpoint import atomic_write_text

STAGES = ("baseline", "autoencoder", "saliency", "acat")
#: the tasks whose classes are known without ``data.labels`` (the paper's two); any other task names its classes
BUILTIN_LABELS = {"brain": ("none", "left", "right", "both"), "lung": ("normal", "covid19")}
TASKS = tuple(BUILTIN_LABELS)
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SOURCES = ("phantom", "csv", "mosmed")
BEST_METRICS = {"val_loss": "min", "val_accuracy": "max", "val_balanced_accuracy": "max", "val_auc": "max"}


@dataclass
class InputConfig:
    """The model input (`ACATLogic.preprocess.InputSpec`): S slices of H x W, windowed, aligned."""

    slices: int = 11
    size: list = field(default_factory=lambda: [128, 128])  # (H, W)
    hu_window: list = field(default_factory=lambda: [40.0, 80.0])  # (level, width) in HU
    alignment: str = "brain_midline"  # "brain_midline" (brain) | "centre" (lung)
    fov_margin: float = 1.1
    organ: str = ""  # "brain" | "lungs" | "none" (`ACATLogic.organ`); "" = brain for brain_midline, else none

    def spec(self) -> InputSpec:
        return InputSpec(slices=int(self.slices), size=(int(self.size[0]), int(self.size[1])),
                         hu_window=(float(self.hu_window[0]), float(self.hu_window[1])),
                         alignment=self.alignment, fov_margin=float(self.fov_margin), organ=self.organ)


@dataclass
class DataConfig:
    """Where the scans come from and how they are read (see data.py for the three sources)."""

    source: str = "phantom"  # phantom (training/phantom manifest) | csv (any CSV manifest) | mosmed (CT-0..CT-4)
    path: str = ""  # manifest.csv, or the MosMed root folder
    # brain: none/left/right/both (the two-headed brain_mtl); lung: normal/covid19; any other name: your own
    # task, whose classes data.labels names
    task: str = "brain"
    labels: list = field(default_factory=list)  # the classes in output order; [] = the brain / lung task's own
    healthy_class: str = ""  # the healthy (negative) class, recorded in the model card; "" = the first label
    # MosMed folder -> label; CT-1 (mild, <25 % involvement) is left out as in the paper's binary task
    mosmed_classes: dict = field(default_factory=lambda: {"CT-0": 0, "CT-2": 1, "CT-3": 1, "CT-4": 1})
    split_fractions: list = field(default_factory=lambda: [0.7, 0.15, 0.15])  # when the data has no split
    split_seed: int = 0
    on_error: str = "fail"  # a bad scan: "fail" stops the run, "skip" reports it (with its path) and goes on
    cache_dir: str = ""  # preprocessed scans; default <out_dir>/cache (share it between runs and seeds)
    prepare_workers: int = 0  # processes decoding scans into the cache (0: in the main process)
    num_workers: int = 0  # DataLoader workers per training process
    pin_memory: Optional[bool] = None  # None: on when training on a GPU


@dataclass
class ModelConfig:
    """Architectures by registry name (`ACATLogic.models.create_model`) and their keyword arguments."""

    baseline: str = "brain_mtl"  # brain_mtl | lung_resnet50 | lung_resnet_small | lung_resnet
    baseline_config: dict = field(default_factory=dict)
    autoencoder_config: dict = field(default_factory=dict)
    acat_config: dict = field(default_factory=lambda: {"slice_hidden": 64, "attention_batch_norm": False})


@dataclass
class OptimConfig:
    """One training stage: Adam (L2 weight decay), cosine annealing per epoch from lr to min_lr."""

    epochs: int = 200
    batch_size: int = 8  # global: split evenly over the processes
    lr: float = 1e-4
    min_lr: float = 1e-7
    weight_decay: float = 5e-5
    class_weights: bool = True  # inverse class frequency of the training split (classifiers only)
    flip_lr: float = 0.5  # probability of mirroring a scan left<->right (brain labels swap sides)
    flip_ap: float = 0.0  # probability of mirroring anterior<->posterior
    blur_sigma_px: float = 0.0  # each training scan blurred in-plane by sigma uniform in [0, this) pixels
    noise_std: float = 0.0  # and given Gaussian noise of std uniform in [0, this) (window units)
    loss: str = "ce"  # classifiers: ce; autoencoder: mse | l1
    best_metric: str = "val_loss"  # val_loss | val_accuracy | val_balanced_accuracy | val_auc
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    # stop after this many epochs without a better best_metric (0: run every epoch), counted from the end of
    # the autoencoder's consistency_warmup
    patience: int = 0
    # autoencoder only: weight of KL(f(x) || f(D(E(x)))) with the trained baseline f as the judge, so that
    # the classifier reads a reconstruction as it reads the scan (training.autoencoder_fitness); 0 = off
    consistency: float = 0.0
    consistency_warmup: int = 0  # epochs of plain reconstruction before the consistency term starts
    # > 0: when the warm-up ends, a fresh Adam and cosine schedule start at this rate for the remaining epochs,
    # from the warm-up's last weights (the warm-up then anneals over its own epochs): reconstruction to
    # convergence, then a gentle fine-tune with the term - the two-phase recipe as one stage; 0 = one schedule
    consistency_lr: float = 0.0
    # fine-tuning: start from these weights instead of random ones - a model.safetensors written by training/
    # (e.g. another run's autoencoder/model.safetensors) of this stage's architecture and config; "" = random
    init_weights: str = ""


@dataclass
class SaliencyConfig:
    """Counterfactual saliency maps for ACAT's training input (`ACATLogic.saliency.CounterfactualSaliency`,
    paper Sec. 3.1): `ACATLogic.options.ExplainOptions` fields; None = the variant's default, so that the
    maps match what `acat explain` computes for the exported bundle (its card records these)."""

    variant: str = "residual"  # residual | paper (ACATLogic/options.py)
    output: Optional[str] = None  # decision | class
    alpha: Optional[float] = None
    steps: Optional[int] = None
    step_size: Optional[float] = None
    optimizer: Optional[str] = None  # normalised | sgd | adam
    start: Optional[str] = None  # image (residual decoding) | reconstruction (the paper)
    reference: Optional[str] = None
    early_stop: Optional[bool] = None
    stop_probability: Optional[float] = None
    sparsity: Optional[float] = None
    whiten: Optional[bool] = None
    organ_mask: Optional[bool] = None
    batch_size: int = 4  # scans optimised at once by each process (memory, not results)
    chunk_scans: int = 32  # scans per saliency file: the unit of resumption

    def options(self):
        """The `ExplainOptions` these maps are computed with (raises ValueError on a bad value)."""
        from ACATLogic.options import ExplainOptions

        return ExplainOptions(**{k: v for k, v in vars(self).items() if k not in ("batch_size", "chunk_scans")})

    def resolved(self) -> dict:
        """Every counterfactual parameter in force (`ExplainOptions.resolved`)."""
        return self.options().resolved()


def _autoencoder_defaults() -> OptimConfig:
    return OptimConfig(epochs=100, lr=1e-3, min_lr=1e-6, weight_decay=0.0, class_weights=False, flip_lr=0.5,
                       loss="mse", best_metric="val_loss")


def _acat_defaults() -> OptimConfig:
    return OptimConfig(epochs=100, lr=1e-5, min_lr=1e-7, flip_lr=0.0)


@dataclass
class TrainConfig:
    """Everything one training run needs. ``stage`` picks what `python -m training.train` runs."""

    stage: str = "baseline"
    out_dir: str = "runs/acat"
    seed: int = 0
    seeds: list = field(default_factory=lambda: [0])  # the pipeline runs each into out_dir/seed_N
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = False  # bf16 autocast (GPU; changes numerics, so it is part of a stage's fingerprint)
    channels_last: bool = False  # NHWC convolutions (GPU)
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch under DDP
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    checkpoint_every_steps: int = 0  # also checkpoint inside epochs (0: at epoch ends only)
    log_every_steps: int = 20
    tensorboard: bool = True
    step_sleep_s: float = 0.0  # sleep after every step: lets tests kill a run mid-epoch; keep 0
    ddp_timeout_minutes: int = 120  # collective timeout (rank 0 may build the cache while others wait)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: OptimConfig = field(default_factory=OptimConfig)
    autoencoder: OptimConfig = field(default_factory=_autoencoder_defaults)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    acat: OptimConfig = field(default_factory=_acat_defaults)

    def to_dict(self) -> dict:
        return asdict(self)

    def stage_optim(self, stage: Optional[str] = None) -> OptimConfig:
        stage = stage or self.stage
        if stage not in ("baseline", "autoencoder", "acat"):
            raise ValueError(f"the {stage} stage has no optimiser settings")
        return getattr(self, stage)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes in output order: ``data.labels``, else the brain / lung task's."""
        return tuple(self.data.labels) if self.data.labels else BUILTIN_LABELS.get(self.data.task, ())

    @property
    def healthy_index(self) -> int:
        """The healthy (negative) class's index: ``data.healthy_class``, else 0."""
        return self.class_names.index(self.data.healthy_class) if self.data.healthy_class else 0

    def baseline_model_config(self) -> dict:
        """``model.baseline_config``, plus the task's classes (``data.labels``) for an architecture that takes
        them (``class_names``: slice_resnet, the lung ResNets, an installed package's)."""
        from ACATLogic.models import registry

        config = dict(self.model.baseline_config)
        if self.data.labels and "class_names" not in config and registry.accepts(self.model.baseline, "class_names"):
            config["class_names"] = list(self.data.labels)
        return config

    def validate(self) -> "TrainConfig":
        """Raise `ACATInputError` on values that cannot work (before any data is read)."""
        def bad(message: str) -> None:
            raise ACATInputError(f"config: {message}")

        if self.stage not in STAGES:
            bad(f"stage must be one of {list(STAGES)}, not {self.stage!r}")
        if not TASK_NAME.fullmatch(str(self.data.task)):
            bad(f"data.task must be a name of letters, digits, '_', '.' or '-', not {self.data.task!r}")
        labels = [str(x) for x in self.data.labels]
        if labels and (len(labels) < 2 or len(set(labels)) != len(labels) or not all(x.strip() for x in labels)):
            bad(f"data.labels must name at least two distinct classes, not {self.data.labels}")
        if not self.class_names:
            bad(f"data.labels: name the classes of the task {self.data.task!r} in the model's output order, e.g. "
                "data.labels=[normal,cyst,mass]")
        if self.data.healthy_class and self.data.healthy_class not in self.class_names:
            bad(f"data.healthy_class {self.data.healthy_class!r} is not one of the classes {list(self.class_names)}")
        if labels and self.data.task in BUILTIN_LABELS and self.model.baseline == "brain_mtl" \
                and tuple(labels) != BUILTIN_LABELS["brain"]:
            bad(f"the brain model's classes are {list(BUILTIN_LABELS['brain'])}; data.labels {labels} differ")
        if self.data.source not in SOURCES:
            bad(f"data.source must be one of {list(SOURCES)}, not {self.data.source!r}")
        if self.data.on_error not in ("skip", "fail"):
            bad(f"data.on_error must be 'skip' or 'fail', not {self.data.on_error!r}")
        if not self.data.path:
            bad("data.path is empty: give the manifest.csv or the MosMed folder")
        fractions = [float(f) for f in self.data.split_fractions]
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            bad(f"data.split_fractions must be three non-negative numbers summing to 1, got {fractions}")
        if len(self.input.size) != 2 or len(self.input.hu_window) != 2:
            bad("input.size is [H, W] and input.hu_window is [level, width]")
        if self.input.alignment not in ("brain_midline", "centre"):
            bad(f"input.alignment must be 'brain_midline' or 'centre', not {self.input.alignment!r}")
        brain_model = self.model.baseline == "brain_mtl"
        if brain_model != (self.data.task == "brain"):
            bad(f"model.baseline {self.model.baseline!r} does not fit data.task {self.data.task!r} "
                "(brain_mtl, with its lesion and side heads, for brain only; lung_resnet* for lung; slice_resnet "
                "or an installed package's architecture for a task of your own)")
        if labels and not brain_model:
            try:
                from ACATLogic.models import create_model, registry

                takes = registry.accepts(self.model.baseline, "class_names")
                built = labels if takes else list(create_model(self.model.baseline, **self.model.baseline_config)
                                                  .class_names)
            except (TypeError, ValueError) as exc:
                bad(f"model.baseline {self.model.baseline!r}: {exc}")
            if built != labels:
                bad(f"model.baseline {self.model.baseline!r} gives the classes {built}, not data.labels {labels}; "
                    "use an architecture that takes class_names, such as slice_resnet")
        if brain_model and int(self.input.size[1]) % 2:
            bad(f"the brain model splits slices at the midline: input.size W must be even, got {self.input.size[1]}")
        for name in ("baseline", "autoencoder", "acat"):
            optim = getattr(self, name)
            if optim.batch_size < 1 or optim.epochs < 0 or optim.lr <= 0:
                bad(f"{name}: batch_size >= 1, epochs >= 0 and lr > 0 are needed")
            if optim.best_metric not in BEST_METRICS:
                bad(f"{name}.best_metric must be one of {list(BEST_METRICS)}, not {optim.best_metric!r}")
            if not (0 <= optim.flip_lr <= 1 and 0 <= optim.flip_ap <= 1):
                bad(f"{name}: flip probabilities must be in [0, 1]")
            if not (0 <= optim.blur_sigma_px <= 10 and 0 <= optim.noise_std <= 1):
                bad(f"{name}: blur_sigma_px must be in [0, 10] and noise_std in [0, 1]")
        if self.autoencoder.loss not in ("mse", "l1"):
            bad(f"autoencoder.loss must be 'mse' or 'l1', not {self.autoencoder.loss!r}")
        if self.autoencoder.best_metric != "val_loss":
            bad("autoencoder.best_metric can only be val_loss")
        if self.saliency.chunk_scans < 1 or self.saliency.batch_size < 1:
            bad("saliency: chunk_scans >= 1 and batch_size >= 1 are needed")
        try:
            self.saliency.options()
        except (TypeError, ValueError) as exc:
            bad(f"saliency: {exc}")
        if self.input.organ not in ("", "brain", "lungs", "none"):
            bad(f"input.organ must be brain, lungs or none, not {self.input.organ!r}")
        for name in ("baseline", "autoencoder", "acat"):
            if getattr(self, name).patience < 0:
                bad(f"{name}.patience must be >= 0")
            if name != "autoencoder" and (getattr(self, name).consistency or getattr(self, name).consistency_warmup):
                bad(f"{name}.consistency and {name}.consistency_warmup are for the autoencoder only")
        if self.autoencoder.consistency < 0 or self.autoencoder.consistency_warmup < 0:
            bad("autoencoder.consistency and autoencoder.consistency_warmup must be >= 0")
        for name in ("baseline", "acat"):
            if getattr(self, name).consistency_lr:
                bad(f"{name}.consistency_lr is for the autoencoder only")
        ae = self.autoencoder
        if ae.consistency_lr < 0:
            bad("autoencoder.consistency_lr must be >= 0")
        if ae.consistency_lr > 0 and not (0 < ae.consistency_warmup < ae.epochs and ae.consistency > 0):
            bad("autoencoder.consistency_lr restarts the schedule when the warm-up ends: it needs "
                "0 < autoencoder.consistency_warmup < autoencoder.epochs and autoencoder.consistency > 0 "
                "(or set autoencoder.consistency_lr=0 for one schedule)")
        if self.checkpoint_every_steps < 0:
            bad("checkpoint_every_steps must be >= 0")
        if not self.seeds:
            bad("seeds must list at least one seed")
        return self


# ---------------------------------------------------------------------------------------------------
# building a config from dicts, YAML and overrides


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _convert(value: Any, annotation: Any, where: str, current: Any = None) -> Any:
    """``value`` (from YAML) as ``annotation`` (int, float, bool, str, list, dict, Optional[...])."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ACATInputError(f"config: {where} is a section; give a mapping, not {value!r}")
        # a section updates the parent's default for it (the autoencoder's defaults are not OptimConfig())
        return _from_dict(annotation, value, f"{where}.", base=copy.deepcopy(current))
    try:
        if annotation is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if annotation is list or origin is list:
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                raise ValueError
            return value
        if annotation is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        raise ACATInputError(f"config: {where} must be {getattr(annotation, '__name__', annotation)}, "
                             f"got {value!r}") from None
    return value


def _from_dict(cls, values: dict, prefix: str = "", base: Any = None):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ACATInputError(f"config: unknown key {prefix}{key}{hint}")
    obj = base if base is not None else cls()
    for name, value in values.items():
        setattr(obj, name, _convert(value, hints[name], f"{prefix}{name}", getattr(obj, name)))
    return obj


def apply_override(cfg: TrainConfig, item: str) -> None:
    """Set one ``dotted.key=value`` on ``cfg`` (value parsed as YAML, converted to the field's type)."""
    if "=" not in item:
        raise ACATInputError(f"override {item!r} must look like key=value (e.g. baseline.lr=1e-4)")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    target: Any = cfg
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(target, dict):
            if last:
                target[part] = value
            else:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ACATInputError(f"config: {where} is not a mapping")
            continue
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            names = [f.name for f in dataclasses.fields(target)] if dataclasses.is_dataclass(target) else []
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean {'.'.join(parts[:depth] + [close[0]])}?)" if close else ""
            raise ACATInputError(f"config: unknown key {where}{hint}")
        if last:
            setattr(target, part, _convert(value, _hints(type(target))[part], where, getattr(target, part)))
        else:
            target = getattr(target, part)


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    """A config file's values; ``base: OTHER.yaml`` (relative to the file) is read first and each section of
    this file updates that file's (a section's keys, not the whole section; other keys replace)."""
    if not path.is_file():
        raise ACATInputError("no such config file", path)
    if path.resolve() in seen:
        raise ACATInputError("config: a base file includes itself", path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ACATInputError(f"not valid YAML ({' '.join(str(exc).split())[:160]})", path) from None
    if not isinstance(values, dict):
        raise ACATInputError("a config file holds a mapping of keys to values", path)
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise ACATInputError("config: base must name another config file", path)
    merged = _read_yaml(path.parent / base, seen + (path.resolve(),))
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any; and the file it names as ``base`` before it), then
    ``overrides``; validated."""
    values = _read_yaml(Path(path)) if path is not None else {}
    cfg = _from_dict(TrainConfig, values)
    for item in overrides:
        apply_override(cfg, item)
    return cfg.validate()


def config_from_dict(values: dict) -> TrainConfig:
    """A config saved by `save_config` (or found in a checkpoint) read back."""
    return _from_dict(TrainConfig, values).validate()


def config_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def save_config(cfg: TrainConfig, path: Path) -> None:
    """The resolved config as YAML, written atomically."""
    atomic_write_text(Path(path), "# resolved training config (defaults + YAML + overrides)\n" + config_yaml(cfg))
