"""Side-by-side runs on one case, in this process: batched vs one-target-at-a-time counterfactuals, the
counterfactual method vs the comparison methods, and CPU threads 1 vs all.

Every variant is timed ``repeats`` times, interleaved (A B A B ...) so that a slow spell of the machine
falls on both; the tables show the median and the range.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ACATLogic.bundle import load_bundle, without_acat
from ACATLogic.explain import Explainer, cpu_threads, default_batch_chunks
from ACATLogic.io import read_volume
from ACATLogic.options import ExplainOptions
from ACATLogic.preprocess import prepare
from ACATLogic.saliency.counterfactual import CounterfactualSaliency

from flops import counterfactual_flops
from stats import summary

#: the methods the issue compares (Explainer names), in table order
METHODS = ("counterfactual", "gradient", "gradcam", "latent_shift")
REPRODUCTION = Path(__file__).resolve().parents[2] / "docs" / "results" / "brain" / "reproduction.json"


def _method(explainer: Explainer, steps: int, every_step: bool = False) -> CounterfactualSaliency:
    """The counterfactual method exactly as `Explainer.explain` builds it (its default options, folded models);
    ``every_step``: no early stop and no whitening probes, so that what is timed is exactly the work
    `counterfactual_flops` counts and GFLOP/s and the share of the matmul peak mean what they say."""
    options = ExplainOptions(steps=steps, early_stop=False, whiten=False) if every_step else ExplainOptions(steps=steps)
    return explainer.counterfactual_method(explainer.parameters(options))


def _batch_chunks(targets: int, slices: int, device: str = "cpu") -> int:
    return default_batch_chunks(torch.device(device), targets, slices)  # as Explainer._counterfactual


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def reproduction_quality(path: Path = REPRODUCTION) -> dict:
    """method -> {"hit_score", "time_per_scan_s"} from the phantom reproduction (docs/results/brain)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    out = {}
    for name, metrics in data.get("summary", {}).get("methods", {}).items():
        hit = (metrics.get("hit_score") or {}).get("mean")
        per_scan = (metrics.get("time_per_scan_s") or {}).get("mean")
        out[name] = {"hit_score": hit, "time_per_scan_s": per_scan}
    return {"source": str(path.relative_to(path.parents[3])), "command": data.get("command"),
            "n_test": data.get("n_test"), "methods": out}


def run_comparisons(case: dict, bundle_path: Path, *, repeats: int, steps: Optional[int],
                    log: Callable[[str], None] = print, with_acat: bool = True) -> dict:
    """``with_acat=False`` (``--quick``) leaves the bundle's ACAT classifier out, so that no explain computes its
    class-agnostic input (the paper's 4 targets x 20 steps, whatever ``steps`` says): the methods' rows then
    time the baseline's prediction and the method alone."""
    all_threads = cpu_threads()  # OMP_NUM_THREADS when set (make test shares the CPUs), else the CPUs we may use
    volume = read_volume(case["path"])
    bundle = load_bundle(bundle_path)
    if not with_acat:
        bundle = without_acat(bundle)
    explainer = Explainer(bundle, device="cpu", threads=all_threads)
    steps = int(steps if steps is not None else bundle.explanation_defaults["steps"])
    x = prepare(volume, bundle.spec).images
    targets = explainer.counterfactual_targets(explainer.parameters(ExplainOptions(steps=steps)))
    slices = x.shape[1]
    method = _method(explainer, steps)
    loop = _method(explainer, steps, every_step=True)  # the rate tables (images per batch, threads)
    # FLOPs of every step (no early stop: meta tensors carry no values to stop on; ``loop`` runs them all)
    flops = counterfactual_flops(explainer.fast_baseline, explainer.fast_autoencoder, x.shape, targets,
                                 len(bundle.labels), steps=steps, alpha=method.alpha, step_size=method.step_size,
                                 optimizer=method.optimizer, reference=method.reference, start=method.start)
    per_target_flops = [counterfactual_flops(explainer.fast_baseline, explainer.fast_autoencoder, x.shape, [t],
                                             len(bundle.labels), steps=steps, alpha=method.alpha,
                                             step_size=method.step_size, optimizer=method.optimizer,
                                             reference=method.reference, start=method.start) for t in targets]
    out: dict = {"case": case["name"], "bundle": bundle.id, "steps": steps, "chunks": int(x.shape[0]),
                 "targets": len(targets), "counterfactual_flops": flops,
                 "classifier": "acat" if explainer.acat is not None else "baseline"}

    # ---- batched targets (the implementation) vs one target at a time
    log(f"bench: batched vs one-target-at-a-time counterfactuals on {case['name']} ({repeats} runs each)")
    batched_runs, sequential_runs = [], []
    batched = sequential = None
    for _ in range(repeats):
        def run_batched():
            nonlocal batched
            batched = method.explain(x, targets=targets, normalise="joint",
                                     batch_scans=_batch_chunks(len(targets), slices))

        def run_sequential():
            nonlocal sequential
            sequential = [method.explain(x, targets=[t], normalise="joint", batch_scans=_batch_chunks(1, slices))
                          for t in targets]

        batched_runs.append(_timed(run_batched))
        sequential_runs.append(_timed(run_sequential))
    difference = max(float((batched.counterfactuals[i] - one.counterfactuals[0]).abs().max())
                     for i, one in enumerate(sequential))
    out["targets_batched"] = {"batched_s": summary(batched_runs), "sequential_s": summary(sequential_runs),
                              "speedup": summary([s / b for b, s in zip(batched_runs, sequential_runs)]),
                              "sequential_flops": sum(per_target_flops),
                              "max_abs_counterfactual_difference": difference}

    # ---- images per batch: the CPU default vs four times as many
    default = _batch_chunks(len(targets), slices)
    sizes = {"default": default, "4x": min(int(x.shape[0]), 4 * default)}
    log(f"bench: counterfactual batch size {default * len(targets) * slices} vs "
        f"{sizes['4x'] * len(targets) * slices} images on {case['name']}")
    size_runs: dict[str, list[float]] = {k: [] for k in sizes}
    for _ in range(repeats):
        for k, chunks in sizes.items():
            size_runs[k].append(_timed(lambda c=chunks: loop.explain(x, targets=targets, normalise="joint",
                                                                      batch_scans=c)))
    out["batch_images"] = {k: {"images": sizes[k] * len(targets) * slices, "counterfactual_s": summary(r),
                               "gflops": summary([flops / t / 1e9 for t in r])} for k, r in size_runs.items()}

    # ---- the methods, through Explainer.explain (preprocess + method + classify + map back)
    log(f"bench: methods {', '.join(METHODS)} on {case['name']}")
    runs: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(repeats):
        for m in METHODS:
            runs[m].append(_timed(lambda m=m: explainer.explain(volume, method=m, steps=steps)))
    quality = reproduction_quality()
    out["methods"] = {m: {"explain_s": summary(runs[m]),
                          "hit_score": quality.get("methods", {}).get(m, {}).get("hit_score"),
                          "reproduction_time_per_scan_s": quality.get("methods", {}).get(m, {}).get("time_per_scan_s")}
                      for m in METHODS}
    out["quality_source"] = {k: v for k, v in quality.items() if k != "methods"}

    # ---- CPU threads: 1 vs all, on the counterfactual loop
    log(f"bench: counterfactual loop with 1 and {all_threads} CPU threads")
    thread_runs: dict[int, list[float]] = {1: [], all_threads: []}
    for _ in range(repeats):
        for n in thread_runs:
            torch.set_num_threads(n)
            thread_runs[n].append(_timed(lambda: loop.explain(x, targets=targets, normalise="joint",
                                                              batch_scans=_batch_chunks(len(targets), slices))))
    torch.set_num_threads(all_threads)
    out["threads"] = {str(n): {"counterfactual_s": summary(r), "gflops": summary([flops / t / 1e9 for t in r])}
                      for n, r in thread_runs.items()}
    return out
