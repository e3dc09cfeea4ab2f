"""The settings of one explanation, converted to ``acat explain`` command-line arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

METHODS = ("counterfactual", "latent_shift", "gradient", "gradcam", "integrated_gradients")
DEVICES = ("auto", "cpu", "gpu")
REFERENCES = ("reconstruction", "image")
MODEL_DEFAULT = "model default"  # the panel's reference choice that leaves it to the model card


@dataclass
class ExplainSettings:
    """What the user chose in the panel. ``None`` (or 0 in the panel) means "the model card's default".

    Attributes:
        model: a bundle folder or the id of a bundled model.
        method: one of `METHODS`.
        device: "auto" (CUDA, then MPS, then CPU), "cpu" or "gpu".
        steps: optimisation steps of the counterfactual search (paper: 20).
        alpha: weight of |z - E(x)|_1 (paper: 100).
        stepSize: gradient step on the latent z (paper: 0.1).
        targets: target classes; empty = every class.
        reference: compare counterfactuals with the reconstruction D(E(x)) or with the image.
    """

    model: str
    method: str = "counterfactual"
    device: str = "auto"
    steps: Optional[int] = None
    alpha: Optional[float] = None
    stepSize: Optional[float] = None
    targets: list = field(default_factory=list)
    reference: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("choose a model (a bundled model or a model folder via 'Add model...')")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.reference is not None and self.reference not in REFERENCES:
            raise ValueError(f"unknown reference {self.reference!r}; choose one of {', '.join(REFERENCES)}")
        for name in ("steps", "alpha", "stepSize"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                setattr(self, name, None)  # the panel's 0 ("model default")
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]

    @classmethod
    def fromParameters(cls, p) -> "ExplainSettings":
        """From the module's parameter node (any object with its attribute names)."""
        return cls(model=p.model, method=p.method, device=p.device, steps=p.steps, alpha=p.alpha, stepSize=p.stepSize,
                   targets=p.targets, reference=None if p.reference == MODEL_DEFAULT else p.reference)

    def commandLineArguments(self, inputPath: str, outDir: str) -> list[str]:
        """``explain INPUT --out OUT --model ... --progress-format jsonl ...`` (after ``-m ACATCli``)."""
        args = ["explain", str(inputPath), "--out", str(outDir), "--model", str(self.model),
                "--method", self.method, "--device", self.device, "--progress-format", "jsonl"]
        if self.steps is not None:
            args += ["--steps", str(int(self.steps))]
        if self.alpha is not None:
            args += ["--alpha", repr(float(self.alpha))]
        if self.stepSize is not None:
            args += ["--step-size", repr(float(self.stepSize))]
        if self.targets:
            args += ["--targets", ",".join(self.targets)]
        if self.reference is not None:
            args += ["--reference", self.reference]
        return args
