"""The Explainer: one scan in, prediction + saliency + counterfactuals out, on the input's own grid.

::

    bundle = load_bundle("brain-stroke-phantom")
    explanation = Explainer(bundle, device="auto").explain(volume)            # ExplainOptions() defaults
    explanation = Explainer(bundle).explain(volume, ExplainOptions(variant="paper"))
    explanation.label, explanation.probabilities
    explanation.saliency            # CTVolume in [0, 1], same grid as `volume`
    explanation.counterfactuals     # {"none": CTVolume in HU, "abnormal": ...}

Pipeline (paper Algorithm 1 at inference; the options are `ACATLogic.options.ExplainOptions`):

1. `ACATLogic.preprocess.prepare`: canonical orientation, model grid, interleaved chunks covering every
   slice (each chunk is one uniform sample of the scan; the prediction is the mean of the chunks'
   class probabilities). The organ mask (`ACATLogic.organ`) from the same slices.
2. Counterfactuals from the baseline classifier and the autoencoder (`CounterfactualSaliency`). With the
   default ``output="decision"`` the targets are the healthy class and "abnormal" (any other class);
   the map shown is the negative counterfactual's (towards healthy; paper Sec. 4.4), or the positive
   one's when the scan is already read as healthy with p >= 0.8 (``parameters["saliency_map"]`` says
   which). With ``output="class"`` every class is a target and the class-agnostic mean is shown.
3. Prediction: the ACAT classifier on (scan, class-agnostic saliency) when the bundle has one, else the
   baseline. ACAT reads the map made as in its training (the card's explanation defaults), normalised
   per chunk as in training, whatever the options ask to show. With ``saliency_classifier="acat"`` the
   map shown is recomputed through the ACAT classifier (its saliency input fixed), as in Sec. 4.4.
4. Counterfactual volumes in HU: the input plus the change the optimisation made,
   ``HU + width * (counterfactual - reference)``, so voxels the model did not change keep their exact
   values.
5. Everything is mapped back onto the input grid (`PreparedScan.to_input_grid`).

The other methods (``gradient``, ``integrated_gradients``, ``gradcam``, ``latent_shift``) explain the
baseline classifier for comparison - its healthy-vs-abnormal decision (`DecisionClassifier`) by default,
the predicted class with ``output="class"`` - restricted to the same organ mask; they return a saliency
map and no counterfactual volumes.
"""

from __future__ import annotations

import contextlib
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
from .options import METHODS, ExplainOptions
from .organ import organ_mask
from .preprocess import PreparedScan, prepare
from .progress import ProgressCallback, is_cancelled, no_progress, scaled
from .saliency.counterfactual import (CounterfactualResult, CounterfactualSaliency, decision_targets, frozen,
                                      normalise_maps)
from .saliency.decision import DecisionClassifier
from .volume import CTVolume

#: the name of the positive decision target ("any class but the healthy one") on a task with more than
#: two classes; on a two-class task it is the other class's own name
ABNORMAL = "abnormal"


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


def cpu_threads() -> int:
    """Threads for CPU work: ``OMP_NUM_THREADS`` when it is set to a positive number (the usual way to share a
    machine), else the CPUs this process may run on (a container's or ``taskset``'s limit, not the host's)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def device_name(device: torch.device) -> str:
    """"cuda:0", "mps", "cpu": the device with the index CUDA uses for it (torch.device("cuda") has none)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device() if device.index is None else device.index}"
    return str(device)


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
    # the classifier the map explains (the baseline, or ACAT for saliency_classifier="acat") on the real image
    explained_probabilities: dict = field(default_factory=dict)
    # label -> CTVolume (HU) and mask name -> CTVolume in [0, 1]; both `LazyVolumes`, made when read
    counterfactuals: Mapping = field(default_factory=dict)
    attention: Mapping = field(default_factory=dict)
    slice_weights: Optional[list] = None  # ACAT's learned weight of each model slice, per chunk
    trajectory: dict = field(default_factory=dict)  # target label -> per step {label: probability}
    reached_step: dict = field(default_factory=dict)  # target label -> first step p_target > 0.5, or None
    stopped_step: dict = field(default_factory=dict)  # target label -> the step each chunk stopped at
    latent_l1: dict = field(default_factory=dict)  # target label -> mean |z' - E(x)| (mean over chunks)
    timings: dict = field(default_factory=dict)
    device: str = ""  # where it was computed: "cuda:0", "mps", "cpu" (report.json's "device")
    preprocessing: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


class _Run:
    """The state of one `Explainer.explain` call as it goes through the pipeline's steps."""

    def __init__(self, params: dict, options: ExplainOptions, volume: CTVolume, progress: ProgressCallback, cancel,
                 batch_chunks: Optional[int]):
        self.params, self.options, self.volume = params, options, volume
        self.progress, self.cancel, self.batch_chunks = progress, cancel, batch_chunks
        self.cf_progress = scaled(progress, 0.05, 0.85)
        self.timings: dict[str, float] = {}
        self.prepared: Optional[PreparedScan] = None
        self.x: Optional[torch.Tensor] = None
        self.organ: Optional[torch.Tensor] = None  # the organ mask of the map shown (None: not restricted)
        self.acat_organ: Optional[torch.Tensor] = None  # the one ACAT's input is made with, as in its training
        self.shown: Optional[CounterfactualResult] = None  # the counterfactuals whose maps are shown
        self.acat_input: Optional[torch.Tensor] = None
        self.attention: dict = {}
        self.classifier = "baseline"
        self.probs = self.explained = None

    def check_cancel(self) -> None:
        if is_cancelled(self.cancel):
            raise Cancelled("cancelled")

    @contextlib.contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


class Explainer:
    """Runs a verified `ModelBundle` on CT volumes. ``device``: "auto", "cpu", "cuda"/"gpu", "mps"."""

    def __init__(self, bundle: ModelBundle, device: str = "auto", threads: Optional[int] = None):
        self.bundle = bundle
        self.device = pick_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or cpu_threads())
        self.baseline = bundle.models["baseline"].to(self.device).eval()
        self.autoencoder = bundle.models["autoencoder"].to(self.device).eval()
        self.acat = bundle.models.get("acat")
        if self.acat is not None:
            self.acat = self.acat.to(self.device).eval()
        self.labels = bundle.labels
        # ACAT bundles: the variant whose class-agnostic maps the ACAT classifier was trained on (cards
        # written before variants existed were trained on the paper's)
        self.trained_options = ExplainOptions(variant=bundle.explanation_defaults.get("variant", "paper"))
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
    def parameters(self, options: ExplainOptions) -> dict:
        """What an explanation with ``options`` computes (report.json's "parameters"); checks the options."""
        if options.saliency_classifier == "acat" and self.acat is None:
            raise ACATInputError("this model bundle has no ACAT classifier; use the baseline's saliency")
        params = {"method": options.method, **options.resolved(self.bundle.explanation_defaults),
                  "saliency_classifier": options.saliency_classifier, "coverage": options.coverage,
                  "precision": options.precision, "organ": self.bundle.spec.organ}
        params["targets"] = [self.target_name(t) for t in self._target_ids(options.targets, params["output"])]
        return params

    @property
    def healthy(self) -> int:
        """The healthy class's index (the model card's ``healthy_index``; 0 in the bundled models)."""
        return self.bundle.healthy_index

    def target_name(self, target: int) -> str:
        """A class index's label; ~healthy is the other class on a two-class task, else `ABNORMAL`."""
        if target >= 0:
            return self.labels[target]
        return self.labels[1 - ~target] if len(self.labels) == 2 else ABNORMAL

    def explain(self, volume: CTVolume, options: Optional[ExplainOptions] = None, *,
                progress: ProgressCallback = no_progress, cancel=None, batch_chunks: Optional[int] = None,
                **changes) -> Explanation:
        """Explain ``volume`` (``options``, with any field replaced by a keyword: ``explain(v, method="gradient")``).

        ``options.device`` is the Explainer's business (its constructor); ``batch_chunks`` bounds how many
        chunks go through the optimisation at once (default: `default_batch_chunks`)."""
        try:
            options = (options or ExplainOptions()).replace(**changes)
        except (TypeError, ValueError) as exc:
            raise ACATInputError(str(exc)) from None
        run = _Run(self.parameters(options), options, volume, progress, cancel, batch_chunks)
        self._prepare(run)
        self._counterfactuals_and_acat_input(run)
        self._classify(run)
        if options.method == "counterfactual" and options.saliency_classifier == "acat":
            with run.timed("counterfactual_acat_s"):  # ACAT reads (scan, saliency): its saliency input stays fixed
                run.shown = self._counterfactual(self.acat, run.x, run.params, run.organ, batch_chunks,
                                                 run.cf_progress, cancel, context=run.acat_input.detach())
        with run.timed("map_back_s"):
            explanation = self._explanation(run)
        explanation.timings = {k: round(v, 4) for k, v in run.timings.items()}
        explanation.device = device_name(self.device)
        progress(1.0, "done")
        return explanation

    # ---------------------------------------------------------------------------------------------
    def _prepare(self, run: "_Run") -> None:
        """Model-space chunks of the scan and the organ mask (pipeline step 1)."""
        with run.timed("preprocess_s"):
            run.progress(0.0, "preparing the scan")
            run.prepared = prepare(run.volume, self.bundle.spec, coverage=run.options.coverage)
            run.x = run.prepared.images.to(self.device)
            # the map shown asks for it, or an ACAT classifier was trained on masked maps (its input is made as
            # in training whatever the options say: a --no-organ-mask map still gives ACAT a masked one)
            acat_masked = self.acat is not None and self.parameters(self.trained_options)["organ_mask"]
            if run.params["organ_mask"] or acat_masked:
                mask = organ_mask(run.x, self.bundle.spec.organ, self.bundle.spec.hu_window)
                run.organ = mask if run.params["organ_mask"] else None
                run.acat_organ = mask if acat_masked else None
        run.check_cancel()

    def _counterfactuals_and_acat_input(self, run: "_Run") -> None:
        """The counterfactuals shown (baseline explained) and the class-agnostic map an ACAT classifier reads,
        made as in its training; one optimisation serves both when the parameters agree (step 2)."""
        options = run.options
        if options.method != "counterfactual" and self.acat is None:
            return
        with run.timed("counterfactual_s"):
            if options.method == "counterfactual" and options.saliency_classifier == "baseline":
                run.shown = self._counterfactual(self.fast_baseline, run.x, run.params, run.organ, run.batch_chunks,
                                                 run.cf_progress, run.cancel)
            if self.acat is not None:
                trained = self.parameters(self.trained_options)
                # neither whitening (the map only, not the counterfactuals: an unwhitened input comes from
                # either) nor the coverage (what is written; run.x is the same) changes the optimisation
                same = run.shown is not None and all(run.params[k] == trained[k] for k in trained
                                                     if k not in ("method", "whiten", "coverage")) and \
                    (not trained["whiten"] or run.params["whiten"])
                source = run.shown if same else self._counterfactual(
                    self.fast_baseline, run.x, trained, run.acat_organ,
                    run.batch_chunks, run.cf_progress if run.shown is None else no_progress, run.cancel)
                run.acat_input = source.class_agnostic("per_scan", whiten=bool(trained["whiten"]))
        run.check_cancel()

    def _classify(self, run: "_Run") -> None:
        """The prediction (ACAT when the bundle has it), its attention maps, and the explained classifier's
        reading of the real image (step 3)."""
        with run.timed("classify_s"), torch.no_grad(), frozen(self.baseline, self.acat):
            if self.acat is not None:
                logits, run.classifier = self.acat(run.x, run.acat_input), "acat"
                run.attention = self.acat.attention_maps()
            else:
                logits, run.classifier = self.baseline(run.x), "baseline"
            run.probs = F.softmax(logits.float(), dim=-1).mean(dim=0).cpu()
            run.explained = run.probs  # the metrics' "original prediction" of the explained classifier
            if self.acat is not None and run.options.saliency_classifier == "baseline":
                run.explained = F.softmax(self.fast_baseline(run.x).float(), dim=-1).mean(dim=0).cpu()
        run.check_cancel()

    def _explanation(self, run: "_Run") -> Explanation:
        """The map shown, the counterfactual and attention volumes, on the input grid (steps 4-5)."""
        prepared, params, organ, volume = run.prepared, run.params, run.organ, run.volume
        label_id = int(run.probs.argmax())
        explanation = Explanation(
            label=self.labels[label_id], probabilities={n: float(p) for n, p in zip(self.labels, run.probs)},
            class_names=list(self.labels), method=run.options.method, parameters=params, classifier=run.classifier,
            explained_probabilities={n: float(p) for n, p in zip(self.labels, run.explained)},
            saliency=volume, preprocessing={"geometry": prepared.geometry.to_dict(),
                                            "input": self.bundle.spec.to_dict(),
                                            "chunks": int(prepared.slice_index.shape[0]),
                                            "slices_per_chunk": int(prepared.slice_index.shape[1]),
                                            "organ_fraction": (round(float(organ.float().mean()), 4)
                                                               if organ is not None else None)},
            warnings=list(prepared.notes))
        if organ is not None and not bool(organ.any()):
            explanation.warnings.append(f"no {self.bundle.spec.organ} was found in the scan: the map is empty "
                                        "(check that this is the kind of scan the model reads)")
        if run.options.method == "counterfactual":
            saliency_model, params["saliency_map"] = self._shown_map(run.shown, params["output"])
            explanation.counterfactuals = LazyVolumes({})
            self._add_counterfactuals(explanation, prepared, run.shown, volume)
        else:
            run.check_cancel()
            with run.timed("saliency_s"):
                saliency_model = self._comparison_method(run.options.method, run.x, label_id, params["output"], organ)
            params["saliency_map"] = run.options.method
        if not bool((saliency_model > 0).any()) and not (organ is not None and not bool(organ.any())):
            explanation.warnings.append(f"the {run.options.method} map is empty: nothing in the scan raised the "
                                        "explained score (try another method or --output class)")
        saliency = prepared.to_input_grid(saliency_model[:, :, 0])
        explanation.saliency = volume.with_voxels(np.clip(saliency, 0, 1, out=saliency))  # in place: one volume
        explanation.saliency.metadata.pop("series_selection", None)
        explanation.attention = LazyVolumes({})
        for name, mask in run.attention.items():
            if name == "slices":
                explanation.slice_weights = mask.cpu().tolist()
                continue
            up = F.interpolate(mask.flatten(0, 1).float(), size=self.bundle.spec.size, mode="bilinear",
                               align_corners=False).view(mask.shape[0], mask.shape[1], *self.bundle.spec.size)
            explanation.attention[name] = lambda up=up.cpu(): volume.with_voxels(prepared.to_input_grid(up))
        return explanation

    # ---------------------------------------------------------------------------------------------
    def _target_ids(self, targets: Optional[Sequence[str]], output: str) -> list[int]:
        if output == "decision":
            if targets:
                raise ACATInputError("--targets needs --output class (the decision's targets are fixed: "
                                     f"{self.labels[self.healthy]} and {self.target_name(~self.healthy)})")
            return decision_targets(self.healthy)
        if not targets:
            return list(range(len(self.labels)))
        ids = []
        for t in targets:
            if t not in self.labels:
                raise ACATInputError(f"unknown target {t!r}; this model's classes are {', '.join(self.labels)}")
            ids.append(self.labels.index(t))
        return ids

    def counterfactual_method(self, params: dict, classifier=None) -> CounterfactualSaliency:
        """The `CounterfactualSaliency` an explanation with ``params`` (`parameters`) runs (benchmarks use it)."""
        return CounterfactualSaliency(classifier if classifier is not None else self.fast_baseline,
                                      self.fast_autoencoder, alpha=params["alpha"], steps=params["steps"],
                                      step_size=params["step_size"], optimizer=params["optimizer"],
                                      reference=params["reference"], start=params["start"],
                                      early_stop=params["early_stop"], stop_probability=params["stop_probability"],
                                      sparsity=params["sparsity"], whiten=params["whiten"],
                                      num_classes=len(self.labels),
                                      autocast_dtype=torch.bfloat16 if params["precision"] == "bf16" else None)

    def counterfactual_targets(self, params: dict) -> list[int]:
        """The targets (class indices, ~healthy for "abnormal") of an explanation with ``params``."""
        return self._target_ids(params["targets"] if params["output"] == "class" else None, params["output"])

    def _counterfactual(self, classifier, x, params: dict, organ, batch_chunks, progress, cancel,
                        context: Optional[torch.Tensor] = None) -> CounterfactualResult:
        method = self.counterfactual_method(params, classifier)
        targets = self.counterfactual_targets(params)
        if batch_chunks is None:
            batch_chunks = default_batch_chunks(x.device, len(targets), x.shape[1])
        return method.explain(x, targets=targets, normalise="joint", batch_scans=batch_chunks, mask=organ,
                              context=context, progress=progress, cancel=cancel)

    @staticmethod
    def _shown_map(result: CounterfactualResult, output: str) -> tuple[torch.Tensor, str]:
        """(C, S, 1, H, W) the map shown, and which it is: "negative", "positive" or "class-agnostic"."""
        if output == "class":
            return result.saliency, "class-agnostic"
        if bool((result.maps[0] > 0).any()):
            return result.maps[0], "negative"
        return result.maps[1], "positive"  # already read as healthy: where it would see something

    def _add_counterfactuals(self, explanation: Explanation, prepared: PreparedScan, result, volume: CTVolume):
        width = float(self.bundle.spec.hu_window[1])
        for i, t in enumerate(result.targets):
            label = self.target_name(t)
            delta = ((result.counterfactuals[i] - result.reference)[:, :, 0] * width).cpu()  # (C, S, H, W) HU

            def counterfactual(delta=delta) -> CTVolume:
                cf = prepared.to_input_grid(delta)  # float32; the sum in place holds one volume, not three
                cf += volume.voxels_hu
                out = volume.with_voxels(cf)
                out.metadata.pop("series_selection", None)
                return out

            explanation.counterfactuals[label] = counterfactual
            mean_traj = result.trajectory[i].mean(dim=0).cpu()  # (steps + 1, C), over chunks
            explanation.trajectory[label] = [{n: round(float(p), 6) for n, p in zip(self.labels, row)}
                                             for row in mean_traj]
            p_target = result.target_probability[i].mean(dim=0).cpu()
            hit = torch.nonzero(p_target > 0.5)
            explanation.reached_step[label] = int(hit[0]) if len(hit) else None
            explanation.stopped_step[label] = result.stopped_step[i].cpu().tolist()
            explanation.latent_l1[label] = float(result.latent_l1[i].mean())

    def _comparison_method(self, method: str, x: torch.Tensor, label_id: int, output: str,
                           organ: Optional[torch.Tensor]) -> torch.Tensor:
        from .saliency import comparison_method

        baseline = self.baseline if method == "gradcam" else self.fast_baseline  # Grad-CAM reads a layer
        if output == "decision":
            classifier = DecisionClassifier(baseline, healthy=self.healthy)
            target = 1  # the abnormal score; latent shift moves towards healthy unless read as healthy
            if method == "latent_shift":
                target = 0 if label_id != self.healthy else 1
        else:
            classifier, target = baseline, label_id
            if method == "latent_shift":  # towards "no finding" unless that is the prediction
                target = self.healthy if label_id != self.healthy else (1 if self.healthy == 0 else 0)
        autoencoder = self.autoencoder if method == "gradcam" else self.fast_autoencoder
        saliency = comparison_method(method, classifier, autoencoder)
        maps = (saliency.raw(x, target) if hasattr(saliency, "raw") else saliency(x, target)).detach().float()
        if organ is not None:
            maps = maps * organ.to(maps.dtype)
        return normalise_maps(maps, (0, 1, 2, 3, 4))
