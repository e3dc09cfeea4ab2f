"""The GPU section: run only when ``torch.cuda.is_available()`` (otherwise the report says "no GPU").

All times are CUDA-event times (``torch.cuda.Event(enable_timing=True)`` around the work, then
``end.synchronize()``), so queued kernels are counted and host-side timers are not fooled by asynchrony.

* fp32 vs bf16 autocast: `Explainer.explain(precision=...)`, and the largest |difference| of the saliency
  maps (on the input grid, values in [0, 1]) that bf16 causes.
* TF32 on vs off (cuDNN convolutions and matmuls; PyTorch's default has TF32 on for cuDNN only), on the
  counterfactual loop, with the saliency difference against full fp32.
* torch.compile on vs off for the classifier and the decoder: first call (compilation) and steady state.
* batching over scans: N scans of the case in one batch of the counterfactual loop, scans per second.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from stats import summary


def cuda_seconds(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds between CUDA events recorded before and after ``fn()``, its result)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    result = fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3, result


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for cuDNN convolutions and CUDA matmuls on or off (restored afterwards)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers fp32_precision; the flags still work
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class CompiledAutoencoder(nn.Module):
    """The autoencoder with a compiled ``decode`` (the part inside the loop); ``encode`` runs once."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        self._decode = torch.compile(autoencoder.decode)

    def encode(self, x):
        return self.autoencoder.encode(x)

    def decode(self, z):
        return self._decode(z)


def run_gpu(case: dict, bundle_path: Path, *, repeats: int, steps: Optional[int],
            log: Callable[[str], None] = print) -> dict:
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no GPU"}
    from ACATLogic.bundle import load_bundle
    from ACATLogic.explain import Explainer
    from ACATLogic.io import read_volume
    from ACATLogic.options import ExplainOptions
    from ACATLogic.preprocess import prepare

    from comparisons import _batch_chunks, _method
    from flops import counterfactual_flops
    from machine import cuda_matmul_peak

    out: dict = {"available": True, "device": torch.cuda.get_device_name(0), "case": case["name"]}
    out["matmul_peak_fp32"] = cuda_matmul_peak(tf32=False)
    out["matmul_peak_tf32"] = cuda_matmul_peak(tf32=True)
    volume = read_volume(case["path"])
    bundle = load_bundle(bundle_path)
    explainer = Explainer(bundle, device="cuda")
    steps = int(steps if steps is not None else bundle.explanation_defaults["steps"])
    x = prepare(volume, bundle.spec).images.to("cuda")
    targets = explainer.counterfactual_targets(explainer.parameters(ExplainOptions(steps=steps)))
    batch = _batch_chunks(len(targets), x.shape[1], "cuda")
    method = _method(explainer, steps, every_step=True)  # the rate tables: every step, as the FLOP count
    flops = counterfactual_flops(explainer.fast_baseline, explainer.fast_autoencoder, x.shape, targets,
                                 len(bundle.labels), steps=steps, alpha=method.alpha, step_size=method.step_size,
                                 optimizer=method.optimizer, reference=method.reference, start=method.start)
    out["counterfactual_flops"] = flops

    def loop(m=method, xs=x, n_batch=batch):
        return m.explain(xs, targets=targets, normalise="joint", batch_scans=n_batch)

    # warm-up: cuDNN picks its algorithms, the caching allocator fills
    loop()

    # ---- fp32 vs bf16 through the Explainer (the whole explain call) and the saliency difference
    log(f"bench: GPU fp32 vs bf16 explain on {case['name']}")
    explain_runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    saliency = {}
    for _ in range(repeats):
        for precision in explain_runs:
            seconds, explanation = cuda_seconds(lambda p=precision: explainer.explain(volume, steps=steps, precision=p))
            explain_runs[precision].append(seconds)
            saliency[precision] = explanation.saliency.voxels_hu
    out["precision"] = {p: {"explain_s": summary(r)} for p, r in explain_runs.items()}
    out["precision"]["bf16_saliency_max_abs_difference"] = float(np.abs(saliency["bf16"] - saliency["fp32"]).max())

    # ---- TF32 on vs off, on the loop
    log("bench: GPU TF32 on vs off")
    tf32_runs: dict[str, list[float]] = {"off": [], "on": []}
    maps = {}
    for _ in range(repeats):
        for state in tf32_runs:
            with tf32(state == "on"):
                seconds, result = cuda_seconds(loop)
            tf32_runs[state].append(seconds)
            maps[state] = result.saliency
    out["tf32"] = {s: {"counterfactual_s": summary(r), "gflops": summary([flops / t / 1e9 for t in r])}
                   for s, r in tf32_runs.items()}
    out["tf32"]["saliency_max_abs_difference"] = float((maps["on"] - maps["off"]).abs().max())

    # ---- torch.compile on vs off
    log("bench: GPU torch.compile on vs off")
    try:
        compiled = _method(explainer, steps, every_step=True)
        compiled.classifier = torch.compile(explainer.fast_baseline)
        compiled.autoencoder = CompiledAutoencoder(explainer.fast_autoencoder)
        t0 = time.perf_counter()
        first, _ = cuda_seconds(lambda: loop(compiled))
        compile_runs = [cuda_seconds(lambda: loop(compiled))[0] for _ in range(repeats)]
        eager_runs = [cuda_seconds(loop)[0] for _ in range(repeats)]
        out["compile"] = {"first_call_s": first, "first_call_wall_s": time.perf_counter() - t0,
                          "compiled_s": summary(compile_runs), "eager_s": summary(eager_runs)}
    except Exception as exc:  # noqa: BLE001 - a missing compiler toolchain is a result, not a crash
        out["compile"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}

    # ---- batching over scans: throughput
    log("bench: GPU batch over scans")
    throughput = {}
    for n in (1, 4, 16):
        xs = x.repeat(n, 1, 1, 1, 1)  # n scans of this case's chunks, one batch

        def many(xs=xs, n=n):
            return method.explain(xs, targets=targets, normalise="per_scan", batch_scans=xs.shape[0])

        try:
            many()
            runs = [cuda_seconds(many)[0] for _ in range(repeats)]
        except torch.cuda.OutOfMemoryError:
            throughput[str(n)] = {"error": "out of GPU memory"}
            torch.cuda.empty_cache()
            continue
        throughput[str(n)] = {"counterfactual_s": summary(runs), "scans_per_s": summary([n / t for t in runs]),
                              "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2 ** 20}
        torch.cuda.reset_peak_memory_stats()
    out["batch_scans"] = throughput
    return out
