"""The Explainer: one scan in, prediction + saliency + counterfactuals out, on the input's own grid.

::

    bundle = load_bundle("Resources/Models/brain-demo")
    explanation = Explainer(bundle, device="auto").explain(volume, method="counterfactual")
    explanation.label, explanation.probabilities
    explanation.saliency            # CTVolume in [0, 1], same grid as `volume`
    explanation.counterfactuals     # {"none": CTVolume in HU, ...}

Pipeline (paper Algorithm 1 at inference):

1. `ACATLogic.preprocess.prepare`: canonical orientation, model grid, interleaved chunks covering every
   slice (each chunk is one uniform sample of the scan; the prediction is the mean of the chunks'
   class probabilities).
2. Counterfactual saliency from the baseline classifier and the autoencoder (always needed by an ACAT
   bundle, whose classifier reads the saliency map).
3. Prediction: the ACAT classifier on (scan, saliency) when the bundle has one, else the baseline.
   With ``saliency_classifier="acat"`` the saliency shown is recomputed with the ACAT classifier (its
   saliency input fixed), as in the paper's Sec. 4.4; the default shows the baseline's map, which is
   what ACAT itself attends to.
4. Counterfactual volumes in HU: the input plus the change the optimisation made,
   ``HU + width * (D(z'_t) - reference)``, so voxels the model did not change keep their exact values.
5. Everything is mapped back onto the input grid (`PreparedScan.to_input_grid`).

The other methods (``gradient``, ``integrated_gradients``, ``gradcam``, ``latent_shift``) explain the
baseline classifier for comparison; they return a saliency map and no counterfactual volumes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bundle import ModelBundle
from .errors import ACATInputError, Cancelled
from .fold_batch_norm import folded_if_equal
from .preprocess import PreparedScan, prepare
from .progress import ProgressCallback, is_cancelled, no_progress, scaled
from .saliency.counterfactual import CounterfactualSaliency, frozen, normalise_maps
from .volume import CTVolume

METHODS = ("counterfactual", "latent_shift", "gradient", "gradcam", "integrated_gradients")


def pick_device(device: str = "auto") -> torch.device:
    """"auto": CUDA, then Apple MPS, then CPU. Otherwise the named device (error if unavailable)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ACATInputError("no CUDA GPU is available here; use --device cpu or auto")
    return torch.device("cuda" if device == "gpu" else device)


def default_batch_chunks(device: torch.device, targets: int, slices: int) -> int:
    """Chunks optimised at once, so that about this many images go through decoder + classifier together:
    256 on a GPU (bounds memory; larger batches keep it busy), 64 on a CPU, where a larger batch's
    activations no longer fit the caches and every image costs more (44 images per batch ran 15-20%
    faster than 176 on the brain models; `make bench`, docs/BENCHMARKS.md)."""
    images = 64 if torch.device(device).type == "cpu" else 256
    return max(1, images // (targets * slices))


class LazyVolumes(Mapping):
    """name -> CTVolume on the input grid, made from the small model-space map each time it is read.

    A full-size volume of a 300-slice 512 x 512 CT takes 300 MB; an explanation has one counterfactual per
    class and three attention maps. Made when read and never kept here, they cost memory only while their
    reader holds them (the writer writes one at a time). Reading twice gives two equal volumes.
    """

    def __init__(self, makers: dict):
        self._makers = dict(makers)

    def __setitem__(self, name: str, maker: Callable[[], CTVolume]) -> None:
        self._makers[name] = maker

    def __getitem__(self, name: str) -> CTVolume:
        return self._makers[name]()

    def __iter__(self):
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def __repr__(self) -> str:
        return f"LazyVolumes({list(self._makers)})"


@dataclass
class Explanation:
    """The result of `Explainer.explain`; every volume is on the input volume's own grid."""

    label: str
    probabilities: dict
    class_names: list
    method: str
    parameters: dict
    classifier: str  # "acat" or "baseline": which model gave the prediction
    saliency: CTVolume
    # label -> CTVolume (HU) and mask name -> CTVolume in [0, 1]; both `LazyVolumes`, made when read
    counterfactuals: Mapping = field(default_factory=dict)
    attention: Mapping = field(default_factory=dict)
    slice_weights: Optional[list] = None  # ACAT's learned weight of each model slice, per chunk
    trajectory: dict = field(default_factory=dict)  # target label -> per step {label: probability}
    reached_step: dict = field(default_factory=dict)  # target label -> first step p > 0.5, or None
    latent_l1: dict = field(default_factory=dict)  # target label -> mean |z' - E(x)| (mean over chunks)
    timings: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


class Explainer:
    """Runs a verified `ModelBundle` on CT volumes. ``device``: "auto", "cpu", "cuda"/"gpu", "mps"."""

    def __init__(self, bundle: ModelBundle, device: str = "auto", threads: Optional[int] = None):
        self.bundle = bundle
        self.device = pick_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.baseline = bundle.models["baseline"].to(self.device).eval()
        self.autoencoder = bundle.models["autoencoder"].to(self.device).eval()
        self.acat = bundle.models.get("acat")
        if self.acat is not None:
            self.acat = self.acat.to(self.device).eval()
        self.labels = bundle.labels
        # The optimisation loops (counterfactual, latent shift, gradients) run copies of the baseline and the
        # autoencoder with BatchNorm folded into the convolutions: the same functions, a third less CPU time
        # (`ACATLogic.fold_batch_norm`). Grad-CAM reads a layer's activations, so it keeps the originals.
        probe = torch.rand((1, bundle.spec.slices, 1, *bundle.spec.size), generator=torch.Generator().manual_seed(0))
        probe = probe.to(self.device)
        self.fast_baseline = folded_if_equal(self.baseline, lambda m: m(probe))
        self.fast_autoencoder = folded_if_equal(self.autoencoder, lambda m: m.decode(m.encode(probe[0])))
        # channels-last convolutions run about 2x faster on CPU (measured on the demo models; see README)
        for model in (self.baseline, self.autoencoder, self.acat, self.fast_baseline, self.fast_autoencoder):
            if model is not None and self.device.type == "cpu":
                model.to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------------------------------------
    def explain(self, volume: CTVolume, *, method: str = "counterfactual",
                targets: Optional[Sequence[str]] = None, steps: Optional[int] = None,
                alpha: Optional[float] = None, step_size: Optional[float] = None,
                optimizer: Optional[str] = None, reference: Optional[str] = None,
                saliency_classifier: str = "baseline", coverage: str = "all",
                batch_chunks: Optional[int] = None, precision: str = "fp32",
                progress: ProgressCallback = no_progress, cancel=None) -> Explanation:
        if method not in METHODS:
            raise ACATInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if precision not in ("fp32", "bf16"):
            raise ACATInputError("precision must be 'fp32' or 'bf16'")
        if saliency_classifier not in ("baseline", "acat"):
            raise ACATInputError("saliency_classifier must be 'baseline' or 'acat'")
        if saliency_classifier == "acat" and self.acat is None:
            raise ACATInputError("this model bundle has no ACAT classifier; use the baseline's saliency")
        defaults = self.bundle.explanation_defaults
        params = {"alpha": float(alpha if alpha is not None else defaults["alpha"]),
                  "steps": int(steps if steps is not None else defaults["steps"]),
                  "step_size": float(step_size if step_size is not None else defaults["step_size"]),
                  "optimizer": optimizer or defaults["optimizer"],
                  "reference": reference or defaults["reference"],
                  "saliency_classifier": saliency_classifier, "coverage": coverage, "precision": precision}
        target_ids = self._target_ids(targets)
        params["targets"] = [self.labels[t] for t in target_ids]
        timings: dict[str, float] = {}

        def check_cancel():
            if is_cancelled(cancel):
                raise Cancelled("cancelled")

        t0 = time.perf_counter()
        progress(0.0, "preparing the scan")
        prepared = prepare(volume, self.bundle.spec, coverage=coverage)
        x = prepared.images.to(self.device)
        timings["preprocess_s"] = time.perf_counter() - t0
        check_cancel()

        cf_progress = scaled(progress, 0.05, 0.85)
        needs_cf = method == "counterfactual" or self.acat is not None
        result = None
        if needs_cf:
            t1 = time.perf_counter()
            result = self._counterfactual(self.fast_baseline, x, target_ids, params, batch_chunks, cf_progress,
                                          cancel)
            timings["counterfactual_s"] = time.perf_counter() - t1
        check_cancel()

        t2 = time.perf_counter()
        with torch.no_grad(), frozen(self.baseline, self.acat):
            if self.acat is not None:
                logits = self.acat(x, result.saliency)
                classifier_name = "acat"
            else:
                logits = self.baseline(x)
                classifier_name = "baseline"
            probs = F.softmax(logits.float(), dim=-1).mean(dim=0).cpu()
            attention = self.acat.attention_maps() if self.acat is not None else {}
        timings["classify_s"] = time.perf_counter() - t2
        check_cancel()

        if method == "counterfactual" and saliency_classifier == "acat":
            fixed = result.saliency.detach()
            t3 = time.perf_counter()
            # ACAT reads (scan, saliency): the saliency is fixed and repeated for every target (target-major
            # batches), so all chunks go in one batch here.
            result = self._counterfactual(
                lambda imgs: self.acat(imgs, fixed.repeat(imgs.shape[0] // fixed.shape[0], 1, 1, 1, 1)),
                x, target_ids, params, x.shape[0], cf_progress, cancel)
            timings["counterfactual_acat_s"] = time.perf_counter() - t3

        t4 = time.perf_counter()
        label_id = int(probs.argmax())
        explanation = Explanation(
            label=self.labels[label_id], probabilities={n: float(p) for n, p in zip(self.labels, probs)},
            class_names=list(self.labels), method=method, parameters=params, classifier=classifier_name,
            saliency=volume, preprocessing={"geometry": prepared.geometry.to_dict(),
                                            "input": self.bundle.spec.to_dict(),
                                            "chunks": int(prepared.slice_index.shape[0]),
                                            "slices_per_chunk": int(prepared.slice_index.shape[1])},
            warnings=list(prepared.notes))
        if method == "counterfactual":
            saliency_model = result.saliency
            explanation.counterfactuals = LazyVolumes({})
            self._add_counterfactuals(explanation, prepared, result, volume)
        else:
            check_cancel()
            t5 = time.perf_counter()
            saliency_model = self._comparison_method(method, x, label_id)
            timings["saliency_s"] = time.perf_counter() - t5
        saliency = prepared.to_input_grid(saliency_model[:, :, 0])
        explanation.saliency = volume.with_voxels(np.clip(saliency, 0, 1, out=saliency))  # in place: one volume
        explanation.saliency.metadata.pop("series_selection", None)
        explanation.attention = LazyVolumes({})
        for name, mask in attention.items():
            if name == "slices":
                explanation.slice_weights = mask.cpu().tolist()
                continue
            up = F.interpolate(mask.flatten(0, 1).float(), size=self.bundle.spec.size, mode="bilinear",
                               align_corners=False).view(mask.shape[0], mask.shape[1], *self.bundle.spec.size)
            explanation.attention[name] = lambda up=up.cpu(): volume.with_voxels(prepared.to_input_grid(up))
        timings["map_back_s"] = time.perf_counter() - t4
        explanation.timings = {k: round(v, 4) for k, v in timings.items()}
        progress(1.0, "done")
        return explanation

    # ---------------------------------------------------------------------------------------------
    def _target_ids(self, targets: Optional[Sequence[str]]) -> list[int]:
        if not targets:
            return list(range(len(self.labels)))
        ids = []
        for t in targets:
            if t not in self.labels:
                raise ACATInputError(f"unknown target {t!r}; this model's classes are {', '.join(self.labels)}")
            ids.append(self.labels.index(t))
        return ids

    def _counterfactual(self, classifier, x, target_ids, params, batch_chunks, progress, cancel):
        method = CounterfactualSaliency(classifier, self.fast_autoencoder, alpha=params["alpha"],
                                        steps=params["steps"], step_size=params["step_size"],
                                        optimizer=params["optimizer"],
                                        reference=params["reference"], num_classes=len(self.labels),
                                        autocast_dtype=torch.bfloat16 if params["precision"] == "bf16" else None)
        if batch_chunks is None:
            batch_chunks = default_batch_chunks(x.device, len(target_ids), x.shape[1])
        return method.explain(x, targets=target_ids, normalise="joint", batch_scans=batch_chunks,
                              progress=progress, cancel=cancel)

    def _add_counterfactuals(self, explanation: Explanation, prepared: PreparedScan, result, volume: CTVolume):
        width = float(self.bundle.spec.hu_window[1])
        deltas = {}
        for i, t in enumerate(result.targets):
            label = self.labels[t]
            deltas[label] = ((result.counterfactuals[i] - result.reference)[:, :, 0] * width).cpu()  # (C, S, H, W) HU

            def counterfactual(delta=deltas[label]) -> CTVolume:
                cf = prepared.to_input_grid(delta)  # float32; the sum in place holds one volume, not three
                cf += volume.voxels_hu
                out = volume.with_voxels(cf)
                out.metadata.pop("series_selection", None)
                return out

            explanation.counterfactuals[label] = counterfactual
            mean_traj = result.trajectory[i].mean(dim=0).cpu()  # (steps + 1, C), over chunks
            explanation.trajectory[label] = [{n: round(float(p), 6) for n, p in zip(self.labels, row)}
                                             for row in mean_traj]
            hit = torch.nonzero(mean_traj[:, t] > 0.5)
            explanation.reached_step[label] = int(hit[0]) if len(hit) else None
            explanation.latent_l1[label] = float(result.latent_l1[i].mean())

    def _comparison_method(self, method: str, x: torch.Tensor, label_id: int) -> torch.Tensor:
        from .saliency import comparison_method

        target = label_id
        if method == "latent_shift":  # towards "no finding" unless that is the prediction
            target = 0 if label_id != 0 else 1
        if method == "gradcam":  # reads the activations of one of the original model's layers
            saliency = comparison_method(method, self.baseline, self.autoencoder)
        else:
            saliency = comparison_method(method, self.fast_baseline, self.fast_autoencoder)
        maps = saliency.raw(x, target) if hasattr(saliency, "raw") else saliency(x, target)
        return normalise_maps(maps.detach().float(), (0, 1, 2, 3, 4))
