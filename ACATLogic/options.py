"""The options of one explanation, defined once: `ExplainOptions` (standard library only).

Every front end builds the same dataclass: the ``acat explain`` command line through
`add_explain_arguments` / `ExplainOptions.from_namespace`, the Slicer module and the web viewer through
their panels, and both turn it into the child's command line with `ExplainOptions.to_cli_args`.
`ACATLogic.explain.Explainer` takes it. A field left ``None`` means "the model card's default"
(`ACATLogic.bundle.ModelBundle.explanation_defaults`), so a card can carry its own tuned values.

Importable without torch (the Slicer module reads it before torch is installed).

Two counterfactual variants (README "Explaining a scan"):

* ``residual`` (default): the classifier reads ``x + D(z) - D(E(x))`` - the real image plus the change the
  optimisation made, so at step 0 it reads exactly x and every voxel the optimisation did not change stays
  the input. Targets are the healthy-vs-abnormal decision ("output=decision": the negative counterfactual
  towards the healthy class and the positive one towards "any other class"); the map shown is the
  negative one (paper Sec. 4.4); normalised steps, each pair stopping once its target probability reaches
  ``1 - 0.2``; maps restricted to the organ (brain parenchyma / lungs) found in the CT itself.
* ``paper``: Fontanella et al. exactly as written - the classifier reads D(z), every class is a target,
  plain gradient descent (step 0.1, 20 steps, no early stop), the class-agnostic mean of the per-class
  maps, no organ mask.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

METHODS = ("counterfactual", "latent_shift", "gradient", "gradcam", "integrated_gradients")
#: the saliency overlay's default threshold in every front end (overview.png, Slicer, web viewer): only the
#: voxels above this percentile of the map are coloured (95: the top 5 %)
OVERLAY_PERCENTILE = 95.0
VARIANTS = ("residual", "paper")
OPTIMIZERS = ("sgd", "adam", "normalised")
STARTS = ("image", "reconstruction")
REFERENCES = ("reconstruction", "image")
OUTPUTS = ("decision", "class")
COVERAGES = ("all", "sampled")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "gpu", "cuda", "mps")
SALIENCY_CLASSIFIERS = ("baseline", "acat")

#: What each variant sets when neither the options nor the model card say otherwise.
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "residual": {"start": "image", "optimizer": "normalised", "step_size": 0.2, "alpha": 100.0, "steps": 20,
                 "early_stop": True, "stop_probability": 0.8, "output": "decision", "organ_mask": True,
                 "reference": "image", "sparsity": 0.0, "whiten": False},
    "paper": {"start": "reconstruction", "optimizer": "sgd", "step_size": 0.1, "alpha": 100.0, "steps": 20,
              "early_stop": False, "stop_probability": 0.8, "output": "class", "organ_mask": False,
              "reference": "reconstruction", "sparsity": 0.0, "whiten": False},
}
#: the parameters a variant resolves (what report.json records under "parameters")
RESOLVED_KEYS = ("variant", "start", "optimizer", "step_size", "alpha", "steps", "early_stop", "stop_probability",
                 "output", "organ_mask", "reference", "sparsity", "whiten")


def _opt(help_text: str, *, flag: Optional[str] = None, choices: Optional[Sequence[str]] = None,
         kind: Any = str, default: Any = None, **extra: Any) -> Any:
    """A dataclass field with its command-line flag, type, choices and help."""
    return field(default=default, metadata={"help": help_text, "flag": flag, "choices": choices, "kind": kind,
                                            **extra})


@dataclass(frozen=True)
class ExplainOptions:
    """Everything that decides what `Explainer.explain` computes (not where its results go).

    ``None`` = the model card's default for this field, else the variant's (`VARIANT_DEFAULTS`).
    """

    method: str = _opt("the saliency method (default: counterfactual)", choices=METHODS,
                       default="counterfactual")
    variant: Optional[str] = _opt("counterfactual variant: residual (default: starts from the real image, "
                                  "explains the healthy-vs-abnormal decision) or paper (Fontanella et al. "
                                  "as written)", choices=VARIANTS)
    output: Optional[str] = _opt("what is explained: decision (healthy vs abnormal; the map shown is the "
                                 "counterfactual towards healthy) or class (every class a target, the "
                                 "class-agnostic mean shown)", choices=OUTPUTS)
    targets: Optional[tuple] = _opt("comma-separated target classes (output=class only; default: every class)",
                                    kind="list")
    steps: Optional[int] = _opt("optimisation steps (default 20)", kind=int)
    alpha: Optional[float] = _opt("weight of |z - E(x)|_1 (default 100)", kind=float)
    step_size: Optional[float] = _opt("step on z (residual: the largest change of one latent value per step, "
                                      "0.2; paper: plain gradient step 0.1)", kind=float)
    optimizer: Optional[str] = _opt("normalised (residual default: gradient divided by its largest value), "
                                    "sgd (paper) or adam", choices=OPTIMIZERS)
    start: Optional[str] = _opt("what the classifier reads at step 0: image (x + D(z) - D(E(x)); residual) "
                                "or reconstruction (D(z); paper)", choices=STARTS)
    reference: Optional[str] = _opt("start=reconstruction only: compare counterfactuals with D(E(x)) "
                                    "(default) or with the image", choices=REFERENCES)
    early_stop: Optional[bool] = _opt("stop each counterfactual once its target probability reaches 0.8 "
                                      "(residual default) or always run every step (paper)", kind=bool)
    stop_probability: Optional[float] = _opt("with early stop: the target probability at which a counterfactual "
                                             "stops (default 0.8: the opposite decision is then below 0.2)",
                                             kind=float)
    sparsity: Optional[float] = _opt("normalised steps: soft-threshold the latent change by this share of the step "
                                     "after each step (the proximal L1 step; 0 = off, the paper's objective)",
                                     kind=float)
    whiten: Optional[bool] = _opt("divide the counterfactual's change by the decoder's own gain (its response to "
                                  "random latent steps), so the map shows what the classifier asked for rather "
                                  "than where the decoder reacts most (sharp edges); off = the paper's map",
                                  kind=bool)
    organ_mask: Optional[bool] = _opt("restrict maps to the organ (brain parenchyma, lungs) found in the CT "
                                      "(residual default) or not (paper)", kind=bool)
    saliency_classifier: str = _opt("the classifier the counterfactuals explain (acat: paper Sec. 4.4)",
                                    choices=SALIENCY_CLASSIFIERS, default="baseline")
    coverage: str = _opt("explain every slice (default) or only the model's sampled slices", choices=COVERAGES,
                         default="all")
    precision: str = _opt("fp32 (default), or bf16 mixed precision for the decoder/classifier passes",
                          choices=PRECISIONS, default="fp32")
    device: str = _opt("where to compute (auto: CUDA, then MPS, then CPU)", choices=DEVICES, default="auto")

    def __post_init__(self) -> None:
        if self.targets is not None and not isinstance(self.targets, tuple):
            object.__setattr__(self, "targets", tuple(self.targets))
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    # -------------------------------------------------------------------------------------------
    def problem(self) -> str:
        """Why these options cannot run, in one line, or ""."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            if meta["choices"] and value not in meta["choices"]:
                return f"{f.name} must be one of {', '.join(meta['choices'])}, not {value!r}"
            kind = meta["kind"]
            if kind is bool and not isinstance(value, bool):
                return f"{f.name} must be true or false, not {value!r}"
            if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"{f.name} must be a number, not {value!r}"
        if self.steps is not None and not 0 <= self.steps <= 10000:
            return f"steps must be 0 to 10000, not {self.steps}"
        if self.alpha is not None and not 0 <= self.alpha < 1e9:
            return f"alpha must be >= 0, not {self.alpha}"
        if self.step_size is not None and not 0 < self.step_size < 1e6:
            return f"step_size must be > 0, not {self.step_size}"
        if self.stop_probability is not None and not 0.5 <= self.stop_probability < 1:
            return f"stop_probability must be in [0.5, 1), not {self.stop_probability}"
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            return f"sparsity must be in [0, 1), not {self.sparsity}"
        if self.sparsity and (self.optimizer in ("sgd", "adam") or (self.variant == "paper" and self.optimizer is None)):
            return "sparsity needs the normalised optimizer (--optimizer normalised, the residual variant's default)"
        if self.targets is not None and (not self.targets or not all(isinstance(t, str) and t for t in self.targets)):
            return "targets must be a non-empty list of class names"
        return ""

    def replace(self, **changes: Any) -> "ExplainOptions":
        return dataclasses.replace(self, **changes)

    def resolved(self, card_defaults: Optional[dict] = None) -> dict:
        """The counterfactual parameters in force: options, then the card's defaults, then the variant's.

        A card default is used only for the variant it was written for (a card tuned for ``residual``
        does not change ``--variant paper``)."""
        card = dict(card_defaults or {})
        variant = self.variant or card.get("variant") or "residual"
        base = dict(VARIANT_DEFAULTS[variant])
        if card.get("variant", "paper") == variant:  # cards written before variants existed: the paper's
            base.update({k: v for k, v in card.items() if k in base})
        out = {"variant": variant}
        for key in RESOLVED_KEYS[1:]:
            value = getattr(self, key)
            out[key] = base[key] if value is None else value
        out["steps"], out["alpha"], out["step_size"] = int(out["steps"]), float(out["alpha"]), float(out["step_size"])
        out["stop_probability"], out["sparsity"] = float(out["stop_probability"]), float(out["sparsity"])
        if out["optimizer"] != "normalised":  # a card's sgd / adam default: a share of the step means nothing
            out["sparsity"] = 0.0
        return out

    # -------------------------------------------------------------------------------------------
    def to_cli_args(self) -> list[str]:
        """``acat explain`` arguments for every field that differs from its default."""
        args: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = cli_flag(f)
            if f.metadata["kind"] is bool:
                args.append(flag if value else "--no-" + flag[2:])
            elif f.metadata["kind"] == "list":
                args += [flag, ",".join(value)]
            else:
                args += [flag, str(value)]
        return args

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> "ExplainOptions":
        """The options from `add_explain_arguments`' parsed arguments."""
        values = {}
        for f in dataclasses.fields(cls):
            value = getattr(namespace, f.name, None)
            if value is None:
                continue
            if f.metadata["kind"] == "list":
                value = tuple(t.strip() for t in value.split(",") if t.strip())
            values[f.name] = value
        return cls(**values)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


def cli_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """One command-line argument per `ExplainOptions` field (defaults None: the card decides)."""
    for f in dataclasses.fields(ExplainOptions):
        meta, flag = f.metadata, cli_flag(f)
        if meta["kind"] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=meta["help"])
        elif meta["kind"] == "list":
            parser.add_argument(flag, dest=f.name, help=meta["help"])
        else:
            parser.add_argument(flag, dest=f.name, type=meta["kind"], choices=meta["choices"], help=meta["help"])
