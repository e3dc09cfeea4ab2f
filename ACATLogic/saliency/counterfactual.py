"""Counterfactual saliency: ACAT's explanation (Fontanella et al., ICML 2023, Sec. 3.1, Eq. 1-2).

For a scan x (all its slices at once) and a target class t::

    z0 = E(x)
    z' = argmin_z  CE(f(D(z)), t) + alpha * |z - z0|_1          (alpha = 100, 20 steps)
    counterfactual_t = D(z')
    saliency = mean_t  normalise(|ref - D(z'_t)|)               (ref = D(E(x)) by default, or x)

* The slices of a scan are optimised *jointly* through the scan-level classifier f.
* Every target class is optimised in one batch (no Python loop over targets); scans and targets are
  independent, so the batched result equals the target-by-target result (tested to 1e-5).
* The L1 term is the mean over the latent's elements (as ``torch.nn.L1Loss`` in the reference code),
  cross-entropy is per scan; each (scan, target) pair is its own sum, so gradients never mix.
* Updates are plain gradient descent ``z <- z - step_size * grad`` (step 0.1, the reference code's
  beta), or Adam with ``optimizer="adam"``.
* ``reference="reconstruction"`` (default) compares counterfactuals with D(E(x)), so the map shows what
  the *optimisation* changed, not the autoencoder's reconstruction error; ``"image"`` compares with x,
  as the paper's text writes it.
* ``autocast_dtype=torch.bfloat16`` runs the decoder and classifier passes in mixed precision (z, the
  L1 term and the updates stay float32); off by default.
* Maps are normalised to [0, 1] per target before averaging - over each scan (``normalise="per_scan"``)
  or over the whole batch when the batch holds chunks of one volume (``normalise="joint"``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import Cancelled
from ..progress import ProgressCallback, is_cancelled, no_progress


@dataclass
class CounterfactualResult:
    """Everything the optimisation produced (shapes with T targets, B scans, S slices).

    Attributes:
        saliency: (B, S, 1, H, W) in [0, 1], class-agnostic (mean over targets).
        counterfactuals: (T, B, S, 1, H, W) D(z'_t) in [0, 1].
        reference: (B, S, 1, H, W) D(E(x)) or x.
        differences: (T, B, S, 1, H, W) |reference - counterfactual_t| before normalisation.
        trajectory: (T, B, steps + 1, C) class probabilities at every step (0 = before any update).
        reached_step: (T, B) first step at which p_target > 0.5, or -1 if never.
        targets: the T target class indices.
        losses: (T, B, steps) the objective CE + alpha * L1 before each update.
        latent_l1: (T, B) mean |z' - z0| over the latent's elements at the end.
    """

    saliency: torch.Tensor
    counterfactuals: torch.Tensor
    reference: torch.Tensor
    differences: torch.Tensor
    trajectory: torch.Tensor
    reached_step: torch.Tensor
    targets: list
    losses: Optional[torch.Tensor] = None
    latent_l1: Optional[torch.Tensor] = None


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration (restored afterwards)."""
    saved = []
    for m in modules:
        if isinstance(m, nn.Module):
            saved.append((m, m.training, [(p, p.requires_grad) for p in m.parameters()]))
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training, params in saved:
            m.train(training)
            for p, flag in params:
                p.requires_grad_(flag)


def normalise_maps(maps: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Divide by the max over ``dims`` (maps are non-negative); all-zero maps stay zero."""
    peak = maps.amax(dim=tuple(dims), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


class CounterfactualSaliency:
    """ACAT's counterfactual saliency, MONAI-style: ``method(x, target) -> (B, S, 1, H, W)``.

    Args:
        classifier: scan-level classifier, ``classifier(x: (B, S, 1, H, W)) -> logits (B, C)``.
        autoencoder: has ``encode(x2d: (N, 1, H, W)) -> z`` and ``decode(z) -> (N, 1, H, W)``.
        num_classes: C (default: ``len(classifier.class_names)``).

    Example::

        method = CounterfactualSaliency(baseline, autoencoder)
        saliency = method(x)                       # every class as a target
        result = method.explain(x, targets=[0])    # towards class 0 ("none") only
    """

    def __init__(self, classifier: Callable[[torch.Tensor], torch.Tensor], autoencoder: nn.Module, *,
                 alpha: float = 100.0, steps: int = 20, step_size: float = 0.1,
                 optimizer: Literal["sgd", "adam"] = "sgd",
                 reference: Literal["reconstruction", "image"] = "reconstruction",
                 num_classes: Optional[int] = None, autocast_dtype: Optional[torch.dtype] = None):
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', not {optimizer!r}")
        if reference not in ("reconstruction", "image"):
            raise ValueError(f"reference must be 'reconstruction' or 'image', not {reference!r}")
        self.classifier = classifier
        self.autoencoder = autoencoder
        self.alpha, self.steps, self.step_size = float(alpha), int(steps), float(step_size)
        self.optimizer, self.reference = optimizer, reference
        # Mixed precision for the decoder + classifier passes only; z, the L1 term and the updates stay
        # float32. Off by default: the difference it makes is measured before it is turned on.
        self.autocast_dtype = autocast_dtype
        names = getattr(classifier, "class_names", None)
        self.num_classes = int(num_classes if num_classes is not None else len(names))

    def __call__(self, x: torch.Tensor, target=None) -> torch.Tensor:
        targets = None if target is None else ([int(target)] if not isinstance(target, (list, tuple)) else list(target))
        return self.explain(x, targets=targets).saliency

    def explain(self, x: torch.Tensor, targets: Optional[Sequence[int]] = None, *,
                normalise: Literal["per_scan", "joint"] = "per_scan", batch_scans: Optional[int] = None,
                progress: ProgressCallback = no_progress, cancel=None) -> CounterfactualResult:
        """Run the optimisation for every target; ``batch_scans`` bounds how many scans go at once."""
        if x.ndim != 5 or x.shape[2] != 1:
            raise ValueError(f"x must be (B, S, 1, H, W), got {tuple(x.shape)}")
        targets = list(range(self.num_classes)) if targets is None else [int(t) for t in targets]
        if not targets or any(t < 0 or t >= self.num_classes for t in targets):
            raise ValueError(f"targets must be class indices in [0, {self.num_classes}), got {targets}")
        b = x.shape[0]
        group = b if batch_scans is None else max(1, int(batch_scans))
        parts = []
        with frozen(self.autoencoder, self.classifier if isinstance(self.classifier, nn.Module) else None):
            for start in range(0, b, group):
                stop = min(b, start + group)
                def sub_progress(f, m, _s=start, _e=stop):
                    progress((_s + f * (_e - _s)) / b, m)
                parts.append(self._optimise(x[start:stop], targets, sub_progress, cancel))
        cfs = torch.cat([p[0] for p in parts], dim=1)
        ref = torch.cat([p[1] for p in parts], dim=0)
        traj = torch.cat([p[2] for p in parts], dim=1)
        reached = torch.cat([p[3] for p in parts], dim=1)
        losses = torch.cat([p[4] for p in parts], dim=1)
        latent_l1 = torch.cat([p[5] for p in parts], dim=1)
        diffs = (ref.unsqueeze(0) - cfs).abs()
        dims = (1, 2, 3, 4, 5) if normalise == "joint" else (2, 3, 4, 5)
        saliency = normalise_maps(diffs, dims).mean(dim=0)
        progress(1.0, "counterfactuals done")
        return CounterfactualResult(saliency, cfs, ref, diffs, traj, reached, targets, losses, latent_l1)

    def _optimise(self, x: torch.Tensor, targets: list, progress: ProgressCallback, cancel):
        b, s, _, h, w = x.shape
        t = len(targets)
        with torch.no_grad():
            z0 = self.autoencoder.encode(x.reshape(b * s, 1, h, w))
            ref = self.autoencoder.decode(z0).reshape(b, s, 1, h, w) if self.reference == "reconstruction" else x
        z0 = z0.detach()
        zt0 = z0.unsqueeze(0).expand(t, *z0.shape).reshape(t * b * s, *z0.shape[1:])  # (T*B*S, C, h', w')
        z = zt0.clone().requires_grad_(True)
        labels = torch.as_tensor(targets, device=x.device).repeat_interleave(b)  # (T*B,), target-major
        adam = torch.optim.Adam([z], lr=self.step_size) if self.optimizer == "adam" else None
        trajectory, losses = [], []
        for step in range(self.steps + 1):
            if is_cancelled(cancel):
                raise Cancelled("cancelled")
            # the last pass only reads the result: no graph to keep for a backward pass that never comes
            with (torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
                  if self.autocast_dtype is not None else contextlib.nullcontext()), \
                    torch.set_grad_enabled(step < self.steps):
                images = self.autoencoder.decode(z).reshape(t * b, s, 1, h, w)
                logits = self.classifier(images)
            images, logits = images.float(), logits.float()
            trajectory.append(F.softmax(logits.detach().float(), dim=-1))
            if step == self.steps:
                break
            ce = F.cross_entropy(logits, labels, reduction="none")  # (T*B,)
            l1 = (z - zt0).abs().reshape(t * b, -1).mean(dim=1)  # (T*B,)
            per_pair = ce + self.alpha * l1
            losses.append(per_pair.detach().float())
            loss = per_pair.sum()  # a sum of independent per-(target, scan) losses
            (grad,) = torch.autograd.grad(loss, z)
            with torch.no_grad():
                if adam is None:
                    z -= self.step_size * grad
                else:
                    z.grad = grad
                    adam.step()
            progress((step + 1) / (self.steps + 1), f"counterfactual step {step + 1}/{self.steps}")
        with torch.no_grad():
            cfs = images.detach().reshape(t, b, s, 1, h, w)
        traj = torch.stack(trajectory, dim=1).reshape(t, b, self.steps + 1, -1)
        p_target = traj.gather(3, torch.as_tensor(targets, device=traj.device).view(t, 1, 1, 1)
                               .expand(t, b, self.steps + 1, 1))[..., 0]
        hit = p_target > 0.5
        reached = torch.where(hit.any(dim=2), hit.float().argmax(dim=2), torch.full((t, b), -1, device=hit.device))
        loss_traj = (torch.stack(losses, dim=1).reshape(t, b, self.steps) if losses
                     else torch.zeros(t, b, 0, device=x.device))
        with torch.no_grad():
            l1 = (z - zt0).abs().reshape(t, b, -1).mean(dim=2)
        return cfs, ref.detach(), traj, reached.long(), loss_traj, l1
