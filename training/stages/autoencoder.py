"""Stage 1b: the slice autoencoder E, D (Algorithm 1, line 1), whose latent space the counterfactuals move in.

Trained to reconstruct every slice of the training scans: ``autoencoder.loss`` mse (default) or l1,
averaged over each scan's pixels, then summed over the batch / batch size (DDP-exact, see baseline.py).
The best-validation checkpoint (lowest validation loss) is kept; ``autoencoder.patience`` stops early.

With ``autoencoder.consistency`` > 0 the trained baseline f is the judge: each scan's loss adds
``consistency * KL(f(x) || f(D(E(x))))``, so the autoencoder learns to keep what the classifier reads
(the export's bar, `training.autoencoder_fitness`). The term is off for the first
``consistency_warmup`` epochs: from the start it pulls an untrained decoder towards a constant image the
classifier reads with confidence (measured: a collapse at weight 0.05 from epoch 1, and a reconstruction
error stuck at 0.04 with a 15-epoch ramp), so the autoencoder first learns to reconstruct, then to keep
what the classifier reads. With ``consistency_lr`` > 0 the two phases get a schedule each: the warm-up's
cosine anneals to ``min_lr`` over its own epochs, then a fresh Adam starts at ``consistency_lr`` from the
warm-up's last weights, and the best epoch is chosen among the epochs trained with the term (the recipe
that first passed the gate, `runs/brain_n9` then `runs/brain_n10` in docs/RESULTS.md, as one stage; there
the second run started from the first's best weights). The validation loss always carries the full weight, so the best epoch is
chosen on one objective, and ``patience`` counts only from the end of the warm-up. The judge is frozen
and in eval mode throughout; the stage then depends on the baseline (its sha256 is part of the
fingerprint). Validation reports the KL and the share of scans whose predicted class is the same on x
and D(E(x)) ("agreement").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ACATLogic.models import create_model

from ..config import TrainConfig
from .stage import TrainableStage

#: the frozen judge of each model in training (id(model) -> baseline), for `evaluate`, which the training
#: loop calls with the model alone
_JUDGES: dict[int, nn.Module] = {}


def build_model(cfg: TrainConfig, run=None) -> nn.Module:  # noqa: ARG001
    return create_model("autoencoder", **cfg.model.autoencoder_config)


def _errors(model: nn.Module, x: Tensor, judge=None) -> dict[str, Tensor]:
    """x: (B, S, 1, H, W) -> per-scan mse, l1 (and kl, agree with a judge), each (B,)."""
    recon = model(x)
    diff = recon.float() - x.float()
    out = {"mse": diff.pow(2).flatten(1).mean(1), "l1": diff.abs().flatten(1).mean(1)}
    if judge is not None:
        with torch.no_grad():
            target = F.log_softmax(judge(x).float(), dim=-1)
        read = F.log_softmax(judge(recon).float(), dim=-1)
        out["kl"] = (target.exp() * (target - read)).sum(dim=-1)
        out["agree"] = (target.argmax(-1) == read.argmax(-1)).float()
    return out


class ReconstructionLoss(nn.Module):
    """forward(batch {"x"}) -> per-scan reconstruction error (+ consistency * KL), summed / batch size."""

    def __init__(self, model: nn.Module, loss: str = "mse", judge=None, consistency: float = 0.0,
                 warmup: int = 0) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.consistency, self.warmup = float(consistency), int(warmup)
        self._judge = [judge]  # in a list: not a submodule (never trained, saved or put in train mode)

    def weight(self, epoch: int) -> float:
        """The consistency weight in (zero-based) ``epoch``: 0 during the warm-up, then ``consistency``."""
        return self.consistency if epoch >= self.warmup else 0.0

    def forward(self, batch: dict) -> Tensor:
        errors = _errors(self.model, batch["x"], self._judge[0])
        per_scan = errors["mse"] if self.loss == "mse" else errors["l1"]
        if "kl" in errors:
            per_scan = per_scan + self.weight(int(batch.get("epoch", 0))) * errors["kl"]
        return per_scan.sum() / per_scan.shape[0]


def _judge(cfg: TrainConfig, run, device) -> nn.Module | None:
    if cfg.autoencoder.consistency <= 0:
        return None
    from ..checkpoint import load_weights

    judge = load_weights(run.weights("baseline")).to(device).eval()
    for p in judge.parameters():
        p.requires_grad_(False)
    return judge


def make_loss(model: nn.Module, cfg: TrainConfig, train_labels=None, run=None) -> nn.Module:  # noqa: ARG001
    judge = _judge(cfg, run, next(model.parameters()).device) if run is not None else None
    if judge is not None:
        _JUDGES[id(model)] = judge
    return ReconstructionLoss(model, cfg.autoencoder.loss, judge, cfg.autoencoder.consistency,
                              cfg.autoencoder.consistency_warmup)


def evaluate(model: nn.Module, batch: dict, cfg: TrainConfig) -> dict:  # noqa: ARG001
    judge = _JUDGES.get(id(model))
    if judge is not None:
        judge.to(batch["x"].device)
    return _errors(model, batch["x"], judge)


def summarise(outputs: dict, cfg: TrainConfig) -> dict:
    def mean(name: str) -> float:
        return float(np.mean(outputs[name])) if len(outputs.get(name, [])) else float("nan")

    out = {"mse": mean("mse"), "l1": mean("l1")}
    out["loss"] = out["mse"] if cfg.autoencoder.loss == "mse" else out["l1"]
    if "kl" in outputs:
        out.update(kl=mean("kl"), agreement=mean("agree"))
        out["loss"] += cfg.autoencoder.consistency * out["kl"]
    return {"loss": out.pop("loss"), **out}


STAGE = TrainableStage("autoencoder", False, build_model, make_loss, evaluate, summarise)
