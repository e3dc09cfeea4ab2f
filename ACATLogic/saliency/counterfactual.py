"""Counterfactual saliency: ACAT's explanation (Fontanella et al., ICML 2023, Sec. 3.1, Eq. 1-2).

For a scan x (all its slices at once) and a target t::

    z0 = E(x)
    z' = argmin_z  -log p_t(f(image(z))) + alpha * |z - z0|_1          (alpha = 100, 20 steps)
    counterfactual_t = image(z')
    map_t = |counterfactual_t - reference|, normalised to [0, 1]

Two choices decide what the classifier reads (``start``):

* ``"reconstruction"`` (the paper): ``image(z) = D(z)``. At step 0 the classifier reads D(E(x)), which
  is not x when the autoencoder is imperfect - the optimisation then starts from another scan and the map
  records reconstruction artefacts. ``reference`` is D(E(x)) (default) or x.
* ``"image"`` (residual decoding): ``image(z) = clip(x + D(z) - D(E(x)), 0, 1)``. At step 0 the classifier
  reads exactly x; only the change the optimisation made is added, and the reference is x. Changes below
  `EXACT` (float rounding of the two decoder passes) are set to zero, so every voxel the optimisation did
  not change keeps its exact input value.

Targets are class indices t >= 0 (``-log p_t``), or ``~c`` (= -c-1) for "any class but c"
(``-log(1 - p_c)``): with c the healthy class, the pair ``[c, ~c]`` is the negative and the positive
counterfactual of the healthy-vs-abnormal decision (`decision_targets`), which the paper's class-agnostic
map averages and whose negative half its localisation score uses (Sec. 3.2, 4.4).

* The slices of a scan are optimised *jointly* through the scan-level classifier f.
* Every (target, scan) pair is its own objective in one batch; the result equals the pair-by-pair one.
* The L1 term is the mean over the latent's elements (``torch.nn.L1Loss`` in the reference code).
* Updates (``optimizer``): ``"sgd"``, ``z <- z - step_size * grad`` (the paper, step 0.1);
  ``"normalised"``, the gradient divided by its largest absolute value over the pair, so the largest
  latent change per step is ``step_size`` whatever the gradient's scale (the paper's plain step leaves a
  confident classifier's counterfactual far from its target after 20 steps); ``"adam"``.
* ``sparsity`` (rho in [0, 1), normalised steps only): after each step the latent change z - E(x) is
  soft-thresholded by rho * step_size - the proximal step of an L1 penalty on the change. A plain
  (sub)gradient of |z - z0|_1 never gives exact zeros (and the mean over ~10^5 latent values is too small
  to matter next to the classifier's gradient), so every latent value drifts and the decoded change
  spreads over the whole scan; with the proximal step a latent value moves only where the classifier's
  gradient exceeds rho of its largest value over the pair, and the change stays where the decision is.
  0 = off (the paper's objective as written).
* ``early_stop``: a pair stops (its z frozen, its counterfactual kept) at the first step whose target
  probability reaches ``stop_probability`` (0.8: the opposite decision's probability is then below the
  0.2 of the paper's Fig. 5). A pair already there at step 0 is left unchanged (an all-zero map). The
  stopped pairs leave the batch, so early stops also save time.
* ``whiten``: the map is the change divided by what the decoder does anyway. A latent step moves the image
  by ``J dz`` (J the decoder's Jacobian), and a step along the classifier's gradient g moves it by about
  ``J J^T g``: the decoder's own gain, highest at sharp edges (skull, ventricles), decides where the change
  shows as much as the classifier does. The diagonal of ``J J^T`` is estimated from `WHITEN_PROBES` random
  latent steps of size `WHITEN_STEP` (fixed seed, the same probes for every chunk: the same scan gives the same
  map however the chunks are batched), per voxel as the square
  of the mean absolute response relative to the scan's mean (floored at `WHITEN_FLOOR` of it), and the
  change is divided by it. The counterfactual images are not changed, only the map. Off = the paper's map.
* ``mask`` (B, S, 1, H, W) bool restricts the maps to an organ.
* ``autocast_dtype=torch.bfloat16`` runs the decoder and classifier passes in mixed precision.
* Maps are normalised to [0, 1] per target, over each scan (``normalise="per_scan"``) or over the whole
  batch when it holds chunks of one volume (``normalise="joint"``). The class-agnostic ``saliency`` is
  their mean (paper Sec. 3.1); with decision targets it is normalised again, because the target already
  reached contributes an all-zero map.
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

#: changes of residual decoding below this (in window units: 1e-5 of the window, 0.0008 HU for the brain
#: window) are float rounding of two decoder passes, not something the optimisation did
EXACT = 1e-5
#: a pair stops once its target probability reaches this (the opposite decision is then below 0.2)
STOP_PROBABILITY = 0.8
#: ``whiten``: random latent steps that measure the decoder's gain per voxel, their size (latent units), and
#: the smallest gain relative to the scan's mean that a change is divided by (flat regions do not explode)
WHITEN_PROBES = 8
WHITEN_STEP = 0.05
WHITEN_FLOOR = 0.2


def decision_targets(healthy: int = 0) -> list[int]:
    """[negative, positive] targets of the healthy-vs-abnormal decision: ``[healthy, ~healthy]``."""
    return [int(healthy), ~int(healthy)]


def target_log_prob(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_probs (N, C), targets (N,) long (t >= 0: class t; t < 0: any class but ~t) -> (N,) log p."""
    cls = torch.where(targets >= 0, targets, ~targets)
    own = log_probs.gather(1, cls.view(-1, 1))[:, 0]
    others = log_probs.masked_fill(F.one_hot(cls, log_probs.shape[1]).bool(), float("-inf")).logsumexp(dim=1)
    return torch.where(targets >= 0, own, others)


@dataclass
class CounterfactualResult:
    """Everything the optimisation produced (shapes with T targets, B scans, S slices).

    Attributes:
        saliency: (B, S, 1, H, W) in [0, 1], class-agnostic (mean of the per-target maps).
        maps: (T, B, S, 1, H, W) each target's map, normalised to [0, 1] (masked when a mask was given).
        counterfactuals: (T, B, S, 1, H, W) what the classifier read at the pair's last step, in [0, 1].
        reference: (B, S, 1, H, W) x (start "image"), D(E(x)) or x.
        differences: (T, B, S, 1, H, W) |counterfactual - reference| before normalisation (masked; divided by
            the decoder's gain with ``whiten``).
        trajectory: (T, B, steps + 1, C) class probabilities at every step (0 = before any update); after a
            pair stopped its last probabilities repeat.
        target_probability: (T, B, steps + 1) the target's probability (for ~c: 1 - p_c).
        reached_step: (T, B) first step at which the target probability exceeds 0.5, or -1 if never.
        stopped_step: (T, B) the step whose image is the counterfactual (early stop, else ``steps``).
        targets: the T targets.
        losses: (T, B, steps) the objective before each update (nan after the pair stopped).
        latent_l1: (T, B) mean |z' - z0| over the latent's elements at the end.
        gain: (B, S, 1, H, W) the decoder's gain the differences were divided by (``whiten``), else None.
    """

    saliency: torch.Tensor
    maps: torch.Tensor
    counterfactuals: torch.Tensor
    reference: torch.Tensor
    differences: torch.Tensor
    trajectory: torch.Tensor
    target_probability: torch.Tensor
    reached_step: torch.Tensor
    stopped_step: torch.Tensor
    targets: list
    losses: Optional[torch.Tensor] = None
    latent_l1: Optional[torch.Tensor] = None
    gain: Optional[torch.Tensor] = None

    def class_agnostic(self, normalise: Literal["per_scan", "joint"] = "per_scan",
                       whiten: Optional[bool] = None) -> torch.Tensor:
        """(B, S, 1, H, W) the class-agnostic map with its own normalisation (ACAT's saliency input is
        normalised per scan in training, whatever the Explainer shows). ``whiten=False`` gives the map of
        the same optimisation without the decoder's gain taken out (whitening changes the map only, not the
        counterfactuals); None: as the differences are."""
        differences = self.differences
        if whiten is False and self.gain is not None:
            differences = differences * self.gain.unsqueeze(0)
        elif whiten and self.gain is None:
            raise ValueError("these differences were not whitened: the decoder's gain was not measured")
        return class_agnostic(differences, self.targets, normalise)


def class_agnostic(differences: torch.Tensor, targets: Sequence[int],
                   normalise: Literal["per_scan", "joint"] = "per_scan") -> torch.Tensor:
    """differences (T, B, S, 1, H, W) -> (B, S, 1, H, W): the mean of the per-target maps, each normalised to
    [0, 1] (paper Sec. 3.1); normalised again with decision targets, whose reached target adds a zero map."""
    dims = (1, 2, 3, 4, 5) if normalise == "joint" else (2, 3, 4, 5)
    saliency = normalise_maps(differences, dims).mean(dim=0)
    if any(t < 0 for t in targets):
        saliency = normalise_maps(saliency, tuple(d - 1 for d in dims))
    return saliency


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
        The other arguments: module docstring. Their defaults are the paper's.

    Example::

        method = CounterfactualSaliency(baseline, autoencoder)
        saliency = method(x)                       # every class as a target
        result = method.explain(x, targets=[0])    # towards class 0 ("none") only
    """

    def __init__(self, classifier: Callable[[torch.Tensor], torch.Tensor], autoencoder: nn.Module, *,
                 alpha: float = 100.0, steps: int = 20, step_size: float = 0.1,
                 optimizer: Literal["sgd", "adam", "normalised"] = "sgd",
                 reference: Literal["reconstruction", "image"] = "reconstruction",
                 start: Literal["reconstruction", "image"] = "reconstruction",
                 early_stop: bool = False, stop_probability: float = STOP_PROBABILITY, sparsity: float = 0.0,
                 whiten: bool = False, num_classes: Optional[int] = None, autocast_dtype: Optional[torch.dtype] = None):
        if optimizer not in ("sgd", "adam", "normalised"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'normalised', not {optimizer!r}")
        if reference not in ("reconstruction", "image"):
            raise ValueError(f"reference must be 'reconstruction' or 'image', not {reference!r}")
        if start not in ("reconstruction", "image"):
            raise ValueError(f"start must be 'reconstruction' or 'image', not {start!r}")
        if not 0.5 <= stop_probability < 1:
            raise ValueError("stop_probability must be in [0.5, 1)")
        if not 0 <= sparsity < 1:
            raise ValueError("sparsity must be in [0, 1)")
        if sparsity and optimizer != "normalised":
            raise ValueError("sparsity needs the normalised optimizer (its threshold is a share of the step)")
        self.classifier = classifier
        self.autoencoder = autoencoder
        self.alpha, self.steps, self.step_size = float(alpha), int(steps), float(step_size)
        self.optimizer, self.reference, self.start = optimizer, reference, start
        self.early_stop, self.stop_probability = bool(early_stop), float(stop_probability)
        self.sparsity = float(sparsity)
        self.whiten = bool(whiten)
        self.autocast_dtype = autocast_dtype
        names = getattr(classifier, "class_names", None)
        self.num_classes = int(num_classes if num_classes is not None else len(names))

    def __call__(self, x: torch.Tensor, target=None) -> torch.Tensor:
        targets = None if target is None else ([int(target)] if not isinstance(target, (list, tuple)) else list(target))
        return self.explain(x, targets=targets).saliency

    def explain(self, x: torch.Tensor, targets: Optional[Sequence[int]] = None, *,
                normalise: Literal["per_scan", "joint"] = "per_scan", batch_scans: Optional[int] = None,
                mask: Optional[torch.Tensor] = None, context: Optional[torch.Tensor] = None,
                progress: ProgressCallback = no_progress, cancel=None) -> CounterfactualResult:
        """Run the optimisation for every target; ``batch_scans`` bounds how many scans go at once.

        ``context`` (B, ...): a second input per scan, passed as ``classifier(images, context)`` (ACAT's
        fixed saliency map when its classifier is the one explained, paper Sec. 4.4)."""
        if x.ndim != 5 or x.shape[2] != 1:
            raise ValueError(f"x must be (B, S, 1, H, W), got {tuple(x.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape):
            raise ValueError(f"mask must have x's shape {tuple(x.shape)}, got {tuple(mask.shape)}")
        targets = list(range(self.num_classes)) if targets is None else [int(t) for t in targets]
        if not targets or any(not (-self.num_classes <= t < self.num_classes) for t in targets):
            raise ValueError(f"targets must be class indices in [0, {self.num_classes}) or ~index, got {targets}")
        b = x.shape[0]
        group = b if batch_scans is None else max(1, int(batch_scans))
        parts = []
        with frozen(self.autoencoder, self.classifier if isinstance(self.classifier, nn.Module) else None):
            for first in range(0, b, group):
                last = min(b, first + group)

                def sub_progress(f, m, _s=first, _e=last):
                    progress((_s + f * (_e - _s)) / b, m)
                parts.append(self._optimise(x[first:last], targets, sub_progress, cancel,
                                            None if context is None else context[first:last]))
        cfs, ref, traj, p_target, stopped, losses, latent_l1, gain = (
            torch.cat([p[i] for p in parts], dim=0 if i in (1, 7) else 1) for i in range(8))
        diffs = (ref.unsqueeze(0) - cfs).abs()
        if self.whiten:
            diffs = diffs / gain.unsqueeze(0)
        if mask is not None:
            diffs = diffs * mask.to(diffs.dtype).unsqueeze(0)
        maps = normalise_maps(diffs, (1, 2, 3, 4, 5) if normalise == "joint" else (2, 3, 4, 5))
        saliency = class_agnostic(diffs, targets, normalise)
        hit = p_target > 0.5
        reached = torch.where(hit.any(dim=2), hit.float().argmax(dim=2),
                              torch.full(hit.shape[:2], -1.0, device=hit.device)).long()
        progress(1.0, "counterfactuals done")
        return CounterfactualResult(saliency, maps, cfs, ref, diffs, traj, p_target, reached, stopped, targets,
                                    losses, latent_l1, gain if self.whiten else None)

    # ---------------------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def decoder_gain(self, z0: torch.Tensor, d0: torch.Tensor) -> torch.Tensor:
        """(B, S, 1, H, W) the decoder's squared gain per voxel relative to each scan's mean, floored (``whiten``).

        z0: (B*S, ...) latents, d0: (B, S, 1, H, W) their decoding."""
        generator = torch.Generator(device="cpu").manual_seed(0)
        response = torch.zeros_like(d0)
        b, s = d0.shape[:2]
        with torch.no_grad(), self._autocast(d0.device):
            for _ in range(WHITEN_PROBES):
                # one chunk's probes, the same for every chunk: a chunk's map does not depend on which chunks
                # share its batch (CPU, GPU and training batch differently)
                probe = torch.randn((s, *z0.shape[1:]), generator=generator).repeat(b, *([1] * (z0.dim() - 1)))
                probe = probe.to(device=z0.device, dtype=z0.dtype)
                response += (self.autoencoder.decode(z0 + WHITEN_STEP * probe).reshape(d0.shape).float() - d0).abs()
        mean = response.mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return (response / mean).clamp_min(WHITEN_FLOOR) ** 2

    def _optimise(self, x: torch.Tensor, targets: list, progress: ProgressCallback, cancel, context=None):
        b, s, _, h, w = x.shape
        t = len(targets)
        n = t * b  # pairs, target-major: pair i is target i // b on scan i % b
        device = x.device
        with torch.no_grad():
            z0 = self.autoencoder.encode(x.reshape(b * s, 1, h, w))
            d0 = self.autoencoder.decode(z0).reshape(b, s, 1, h, w).float()
        gain = self.decoder_gain(z0, d0) if self.whiten else torch.ones_like(d0)
        z0 = z0.detach().reshape(b, s, *z0.shape[1:])
        residual = self.start == "image"
        ref = x if residual or self.reference == "image" else d0
        scan_of = torch.arange(n, device=device) % b
        pair_target = torch.as_tensor(targets, device=device).repeat_interleave(b)
        z = z0[scan_of].clone()  # (n, S, C_z, h', w')
        first_moment = torch.zeros_like(z) if self.optimizer == "adam" else None
        second_moment = torch.zeros_like(z) if self.optimizer == "adam" else None
        traj = torch.zeros(n, self.steps + 1, self.num_classes, device=device)
        p_target = torch.zeros(n, self.steps + 1, device=device)
        losses = torch.full((n, self.steps), float("nan"), device=device)
        stopped = torch.full((n,), self.steps, dtype=torch.long, device=device)
        final = torch.empty(n, s, 1, h, w, device=device)
        active = torch.arange(n, device=device)
        for step in range(self.steps + 1):
            if is_cancelled(cancel):
                raise Cancelled("cancelled")
            last = step == self.steps
            zi = z[active].requires_grad_(not last)
            with self._autocast(device), torch.set_grad_enabled(not last):
                decoded = self.autoencoder.decode(zi.flatten(0, 1)).reshape(len(active), s, 1, h, w)
                if residual:
                    change = decoded.float() - d0[scan_of[active]]
                    # rounding-level changes read as zero; the gradient still flows through every voxel
                    change = change - torch.where(change.abs() < EXACT, change, torch.zeros_like(change)).detach()
                    images = (x[scan_of[active]] + change).clamp(0.0, 1.0)
                else:
                    images = decoded
                logits = (self.classifier(images) if context is None
                          else self.classifier(images, context[scan_of[active]]))
            images, log_probs = images.float(), F.log_softmax(logits.float(), dim=-1)
            lp = target_log_prob(log_probs, pair_target[active])
            traj[active, step:] = log_probs.detach().exp().unsqueeze(1)
            p_target[active, step:] = lp.detach().exp().unsqueeze(1)
            if last:
                final[active] = images.detach()
                stopped[active] = step
                break
            keep = None  # every pair goes on (also on the meta device, where no value can be read)
            if self.early_stop:
                done = lp.detach().exp() >= self.stop_probability
                if bool(done.any()):
                    final[active[done]] = images.detach()[done]
                    stopped[active[done]] = step
                    if bool(done.all()):
                        break
                    keep = ~done
            l1 = (zi - z0[scan_of[active]]).abs().flatten(1).mean(dim=1)
            per_pair = -lp + self.alpha * l1
            losses[active, step] = per_pair.detach()
            (grad,) = torch.autograd.grad((per_pair if keep is None else per_pair[keep]).sum(), zi)
            grad, moved = (grad, active) if keep is None else (grad[keep], active[keep])
            with torch.no_grad():
                if self.optimizer == "sgd":
                    z[moved] -= self.step_size * grad
                elif self.optimizer == "normalised":
                    peak = grad.abs().flatten(1).amax(dim=1).clamp_min(1e-30)
                    z[moved] -= self.step_size * grad / peak.view(-1, *([1] * (grad.dim() - 1)))
                    if self.sparsity:  # proximal step of the L1 penalty: soft-threshold the change
                        change = z[moved] - z0[scan_of[moved]]
                        z[moved] = z0[scan_of[moved]] + change.sign() * (
                            change.abs() - self.sparsity * self.step_size).clamp_min(0.0)
                else:  # Adam (Kingma & Ba), bias-corrected; every pair started at step 0
                    m = first_moment[moved] * 0.9 + 0.1 * grad
                    v = second_moment[moved] * 0.999 + 0.001 * grad * grad
                    first_moment[moved], second_moment[moved] = m, v
                    m_hat, v_hat = m / (1 - 0.9 ** (step + 1)), v / (1 - 0.999 ** (step + 1))
                    z[moved] -= self.step_size * m_hat / (v_hat.sqrt() + 1e-8)
            active = moved
            progress((step + 1) / (self.steps + 1), f"counterfactual step {step + 1}/{self.steps}")
        with torch.no_grad():
            l1 = (z - z0[scan_of]).abs().flatten(1).mean(dim=1)
        shape = (t, b)
        return (final.reshape(t, b, s, 1, h, w), ref.detach().float(), traj.reshape(*shape, self.steps + 1, -1),
                p_target.reshape(*shape, self.steps + 1), stopped.reshape(shape), losses.reshape(*shape, self.steps),
                l1.reshape(shape), gain)
