"""The contract every comparison saliency method keeps, and the helpers they share.

A method is a small object wrapping a classifier (MONAI ``monai.visualize`` style)::

    saliency = method(x, target)    # x: (B, S, 1, H, W) float32 in [0, 1] -> (B, S, 1, H, W)

and the returned map is

* float32, detached, on x's device, with x's shape;
* non-negative (a magnitude: each method documents what it takes the magnitude of);
* normalised per scan: divided by its maximum over all slices of that scan, so every scan's map has
  max 1, or is all zero where the method found nothing (never NaN). ``method.raw(x, target)`` gives
  the same map before normalisation, to normalise several calls together (chunks of one volume).

``target`` is the class the map is about: an int for the whole batch or a LongTensor (B,). Gradient,
Integrated Gradients and Grad-CAM explain the logit of ``target``; Latent Shift (a counterfactual)
shifts each scan *towards* ``target``.

Computing a map never changes the classifier: its modules run in eval mode (dropout off, batch-norm
statistics frozen, so scans in a batch stay independent) and each module's previous mode is restored,
even on error; ``requires_grad`` of parameters is never touched, and gradients are taken with
`torch.autograd.grad` with respect to inputs (or activations) only, so no ``.grad`` is ever written
into a parameter.
"""

from __future__ import annotations

import abc
import contextlib
import functools
from typing import Callable, Iterator, Protocol, Union, runtime_checkable

import torch
from torch import Tensor, nn

#: A class index for the whole batch, or one per scan: a LongTensor (B,).
Target = Union[int, Tensor]

#: ``classifier(x: (B, S, 1, H, W)) -> logits (B, num_classes)``; an `nn.Module`, or a
#: `functools.partial` / bound method / closure over one (for classifiers that take extra inputs).
Classifier = Callable[[Tensor], Tensor]


@runtime_checkable
class SaliencyMethod(Protocol):
    """What the application calls: ``method(x, target) -> (B, S, 1, H, W)`` in [0, 1], per-scan max 1."""

    def __call__(self, x: Tensor, target: Target) -> Tensor: ...


class ScanSaliency(SaliencyMethod, abc.ABC):
    """Base class: validates inputs, runs the classifier in eval mode, normalises per scan.

    Subclasses set ``self.classifier`` (and may list more modules in `modules_to_freeze`) and implement
    `saliency_magnitude`. `raw` gives the map before normalisation.
    """

    classifier: Classifier

    def __call__(self, x: Tensor, target: Target) -> Tensor:
        """x: (B, S, 1, H, W) float in [0, 1]; target: int or LongTensor (B,) -> (B, S, 1, H, W) in [0, 1]."""
        return normalise_per_scan(self.raw(x, target))

    def raw(self, x: Tensor, target: Target) -> Tensor:
        """The map before normalisation: float32 (B, S, 1, H, W), non-negative, in the method's own units.

        For normalising several calls together (e.g. chunks of one volume) instead of per scan.
        """
        check_scans(x)
        target_index = as_target_index(target, x.shape[0], x.device)
        with explanation_mode(*self.modules_to_freeze()):
            magnitude = self.saliency_magnitude(fresh_input(x), target_index)
        if magnitude.shape != x.shape:
            raise RuntimeError(f"{type(self).__name__} produced a map of shape {tuple(magnitude.shape)} "
                               f"for input {tuple(x.shape)}")
        magnitude = magnitude.detach().float()
        if not bool(torch.isfinite(magnitude).all()):
            raise ValueError(f"{type(self).__name__}: the map contains NaN or infinity "
                             f"(the classifier's gradients are not finite)")
        if bool((magnitude < 0).any()):
            raise RuntimeError(f"{type(self).__name__} produced negative saliency")
        return magnitude

    def modules_to_freeze(self) -> tuple:
        """Everything whose modules must run in eval mode while a map is computed."""
        return (self.classifier,)

    @abc.abstractmethod
    def saliency_magnitude(self, x: Tensor, target_index: Tensor) -> Tensor:
        """x: (B, S, 1, H, W) a detached copy; target_index: (B,) long -> (B, S, 1, H, W), >= 0, unnormalised.

        Called inside `explanation_mode` with gradients enabled.
        """


def check_scans(x: Tensor) -> None:
    """Raise ValueError unless x is a floating (B, S, 1, H, W) scan batch."""
    if not isinstance(x, Tensor) or x.ndim != 5 or x.shape[2] != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a scan batch (B, S, 1, H, W), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"x is empty: {tuple(x.shape)}")


def as_target_index(target: Target, batch: int, device: torch.device) -> Tensor:
    """int or LongTensor (B,) or a 0-d tensor -> LongTensor (B,) on ``device``.

    The range is checked against the logits by `select_target`, where the number of classes is known.
    """
    if isinstance(target, bool):
        raise TypeError("target must be a class index, not a bool")
    with torch.inference_mode(False):  # autograd saves the index (gather), so it must be a normal tensor
        if not isinstance(target, Tensor):
            return torch.full((batch,), int(target), dtype=torch.long, device=device)
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got {target.dtype}")
        index = target.detach().to(device=device, dtype=torch.long).reshape(-1).clone()
        if index.numel() == 1:
            return index.expand(batch).clone()
        if index.numel() != batch:
            raise ValueError(f"target has {index.numel()} entries for a batch of {batch} scans")
        return index


def select_target(logits: Tensor, target_index: Tensor) -> Tensor:
    """logits: (N, num_classes), target_index: (N,) -> (N,) the target's logit of every row."""
    if logits.ndim != 2 or logits.shape[0] != target_index.shape[0]:
        raise ValueError(f"the classifier must return logits (B, num_classes) for {target_index.shape[0]} scans, "
                         f"got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if bool(((target_index < 0) | (target_index >= num_classes)).any()):
        raise ValueError(f"target class indices must be in [0, {num_classes}), got {target_index.tolist()}")
    return logits.gather(1, target_index.to(logits.device).view(-1, 1))[:, 0]


def input_gradient(classifier: Classifier, x: Tensor, target_index: Tensor) -> Tensor:
    """d logit_target / d x for every scan (x: (N, S, 1, H, W), target_index: (N,)) -> (N, S, 1, H, W).

    One backward pass for the whole batch: summing the target logits is exact because scans do not
    interact in eval mode (each row's logit depends only on its own scan).
    """
    x = x.detach().requires_grad_(True)
    logits = classifier(x)
    (grad,) = torch.autograd.grad(select_target(logits, target_index).sum(), x)
    return grad


def normalise_per_scan(t: Tensor) -> Tensor:
    """t: (B, ...) non-negative -> float32 (B, ...) divided by each scan's maximum.

    A scan whose map is all zero stays all zero. Raises ValueError on negative or non-finite values:
    those are bugs upstream (take ``.abs()`` or ``.relu()`` first), and silently clipping them would hide one.
    """
    if t.ndim < 2:
        raise ValueError(f"expected a batch of maps (B, ...), got shape {tuple(t.shape)}")
    t = t.detach().float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("the saliency map contains NaN or infinity (the classifier's gradients are not finite)")
    if bool((t < 0).any()):
        raise ValueError("normalise_per_scan expects a non-negative map; take its magnitude first")
    flat = t.reshape(t.shape[0], -1)
    peak = flat.amax(dim=1, keepdim=True)
    return (flat / torch.where(peak > 0, peak, torch.ones_like(peak))).reshape(t.shape)


def fresh_input(x: Tensor) -> Tensor:
    """A detached copy of x that autograd can use, even if x was made under `torch.inference_mode`."""
    with torch.inference_mode(False):
        return x.detach().clone()


def modules_in(obj: object) -> list[nn.Module]:
    """The `nn.Module` objects a classifier callable runs: the module itself, or those held by a
    `functools.partial` (function and arguments), a bound method, or a closure. Anything else is the
    caller's job to put in eval mode."""
    found: list[nn.Module] = []
    seen: set[int] = set()

    def visit(o: object, depth: int) -> None:
        if o is None or id(o) in seen or depth > 3:
            return
        seen.add(id(o))
        if isinstance(o, nn.Module):
            found.append(o)
        elif isinstance(o, functools.partial):
            for item in (o.func, *o.args, *o.keywords.values()):
                visit(item, depth + 1)
        elif hasattr(o, "__self__") and callable(o):
            visit(o.__self__, depth + 1)
        elif callable(o) and getattr(o, "__closure__", None):
            for cell in o.__closure__:
                try:
                    visit(cell.cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass

    visit(obj, 0)
    return found


@contextlib.contextmanager
def explanation_mode(*callables: object) -> Iterator[None]:
    """Eval mode for every module the callables run, gradients on (also under no_grad/inference mode).

    Each submodule's own ``training`` flag is saved and restored, so a model left half in eval mode
    (e.g. frozen batch-norm during fine-tuning) comes back exactly as it was.
    """
    saved = [(m, m.training) for root in (mod for c in callables for mod in modules_in(c)) for m in root.modules()]
    for module, _ in saved:
        module.training = False
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in saved:
            module.training = training
