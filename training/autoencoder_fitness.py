"""Is an autoencoder fit for counterfactuals? Measured on the validation split, enforced at export.

A counterfactual is only as good as its autoencoder: if the classifier reads D(E(x)) otherwise than x, an
optimisation that starts from the reconstruction starts from another scan, and a map made against the
reconstruction shows its artefacts. Three numbers, each over the validation scans (`fitness`):

* ``agreement``: the share of scans whose predicted class is the same on x and on D(E(x));
* ``probability_change``: the mean over scans of the largest change of any class probability,
  ``max_c |p_c(x) - p_c(D(E(x)))|``;
* ``lesion_contrast_kept``: how much of a lesion's contrast the reconstruction keeps - the mean over
  lesion scans of (ring - lesion) on D(E(x)) divided by the same on x, where "lesion" is the mean of the
  windowed image over the lesion mask on the model grid and "ring" over the 2-pixel band around it
  (phantom data only: real data has no lesion masks, and the number is then absent).

`GATE` holds the bar (`problems` says what fails it): ``training.export`` refuses a bundle whose
autoencoder fails it and writes the numbers into the model card.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: the export's bar: (metric, comparison, threshold)
GATE = (("agreement", ">=", 0.95), ("probability_change", "<=", 0.05), ("lesion_contrast_kept", ">=", 0.70))
RING_PX = 2
MIN_CONTRAST = 0.02  # of the window: lesions fainter than this in x are not scored (no contrast to keep)


def _ring(lesion: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> the band of ``RING_PX`` pixels around it (same slices)."""
    grown = F.max_pool2d(lesion[:, None].float(), 2 * RING_PX + 1, stride=1, padding=RING_PX)[:, 0] > 0
    return grown & ~lesion


def contrast(image: torch.Tensor, lesion: torch.Tensor) -> float:
    """(N, H, W) image and lesion mask -> mean(ring) - mean(lesion), or nan without a lesion pixel."""
    ring = _ring(lesion) & (image > 0) & (image < 1)  # the band's parenchyma, not bone or air
    if not bool(lesion.any()) or not bool(ring.any()):
        return math.nan
    return float(image[ring].mean() - image[lesion].mean())


@torch.no_grad()
def fitness(baseline, autoencoder, images: np.ndarray, lesions: Optional[Sequence[Optional[np.ndarray]]] = None,
            device: str | torch.device = "cpu", batch_size: int = 8) -> dict:
    """images: (N, S, 1, H, W) in [0, 1]; lesions: per scan a (S, 1, H, W) mask on the same grid, or None.

    Returns the three numbers (module docstring) and ``n``, ``n_lesion_scans``."""
    baseline, autoencoder = baseline.to(device).eval(), autoencoder.to(device).eval()
    agree, change, kept = [], [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[start:start + batch_size], dtype=np.float32)).to(device)
        recon = autoencoder(x)
        p, q = F.softmax(baseline(x).float(), -1), F.softmax(baseline(recon).float(), -1)
        agree += (p.argmax(-1) == q.argmax(-1)).cpu().tolist()
        change += (p - q).abs().amax(-1).cpu().tolist()
        for n in range(x.shape[0]):
            mask = None if lesions is None else lesions[start + n]
            if mask is None or not np.any(mask):
                continue
            m = torch.from_numpy(np.asarray(mask, dtype=bool)).to(device)[:, 0]
            before = contrast(x[n, :, 0], m)
            if math.isfinite(before) and before >= MIN_CONTRAST:
                kept.append(contrast(recon[n, :, 0], m) / before)
    return {"agreement": float(np.mean(agree)) if agree else math.nan,
            "probability_change": float(np.mean(change)) if change else math.nan,
            "lesion_contrast_kept": float(np.mean(kept)) if kept else math.nan,
            "n": len(agree), "n_lesion_scans": len(kept)}


def problems(numbers: dict) -> list[str]:
    """What fails the bar, one line each ([] = fit). A number that could not be measured (nan) is not
    held against the autoencoder; a missing agreement is (nothing was measured at all)."""
    out = []
    for name, how, threshold in GATE:
        value = numbers.get(name, math.nan)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if name == "agreement":
                out.append("no validation scan was measured")
            continue
        ok = value >= threshold if how == ">=" else value <= threshold
        if not ok:
            out.append(f"{name} {value:.3f} (needs {how} {threshold})")
    return out


def phantom_lesions(cfg, records) -> list[Optional[np.ndarray]]:
    """(S, 1, H, W) lesion masks on the model grid of each record, sampled as the cache sampled the scan
    (phantom data; None where a case has no lesion mask)."""
    from ACATLogic.preprocess import prepare

    from ACATData.phantom.io import load_case, read_manifest

    rows = {r["case_id"]: r for r in read_manifest(cfg.data.path)}
    spec = cfg.input.spec()
    out = []
    for record in records:
        row = rows.get(record.case_id)
        case = load_case(cfg.data.path, row) if row is not None else None
        if case is None or case.lesion_mask is None or not case.lesion_mask.any():
            out.append(None)
            continue
        prepared = prepare(case.volume, spec, coverage="sampled")
        out.append((prepared.to_model_grid(case.lesion_mask != 0)[0] > 0.5).numpy()[:, None])
    return out


class GaussianBlur(torch.nn.Module):
    """An in-plane Gaussian blur of ``sigma`` pixels standing in for an autoencoder (``--blur``): how much the
    classifier's reading changes under a smoothing no lesion survives unchanged measures whether it reads
    texture rather than density - the fault that keeps every autoencoder from the gate (docs/PHANTOM.md)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        radius = max(1, int(math.ceil(3 * sigma)))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
        self.register_buffer("kernel", kernel / kernel.sum())
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, r, k = x.shape, self.radius, self.kernel
        f = x.reshape(-1, 1, shape[-2], shape[-1])
        f = F.conv2d(F.pad(f, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        f = F.conv2d(F.pad(f, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        return f.view(shape)


def measure_run(run_dir, split: str = "val", device: str = "cpu", bundle=None, blur: Optional[float] = None) -> dict:
    """`fitness` of a finished run's baseline and autoencoder on one split of its data (``bundle``: a model
    bundle folder or id whose baseline and autoencoder are measured instead, on the run's data; ``blur``: a
    Gaussian blur of that many pixels in place of the autoencoder, `GaussianBlur`)."""
    from pathlib import Path

    from .checkpoint import load_weights
    from .config import load_config
    from .data import open_data
    from .run_folder import RunFolder

    run = RunFolder(Path(run_dir))
    stage = "baseline" if blur is not None else "autoencoder"
    cfg = load_config(str(run.stage_dir(stage) / "config.yaml"), [])
    data = open_data(cfg, log=lambda message: None)
    rows, _ = data.split(split)
    records = [r for r, row in zip(data.records, data.rows) if r.split == split]
    images = np.load(data.images_path, mmap_mode="r")[rows]
    lesions = phantom_lesions(cfg, records) if cfg.data.source == "phantom" else None
    if bundle is not None:
        from ACATLogic.bundle import load_bundle

        models = load_bundle(bundle).models
        baseline, autoencoder = models["baseline"], models["autoencoder"]
    else:
        baseline = load_weights(run.weights("baseline"))
        autoencoder = GaussianBlur(blur) if blur is not None else load_weights(run.weights("autoencoder"))
    if blur is not None:
        autoencoder = GaussianBlur(blur)
    numbers = fitness(baseline, autoencoder, images, lesions, device=device)
    return {**numbers, "split": split}


def main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m training.autoencoder_fitness",
                                     description="Measure a run's autoencoder against the export's bar.")
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="val")
    parser.add_argument("--bundle", help="measure this bundle's baseline and autoencoder (folder or id) on the run's data")
    parser.add_argument("--blur", type=float, metavar="SIGMA_PX",
                        help="measure the classifier against a Gaussian blur of SIGMA_PX pixels instead of the autoencoder")
    args = parser.parse_args(argv)
    if args.blur is not None and not 0 < args.blur <= 10:
        parser.error("--blur must be in (0, 10] pixels")
    numbers = measure_run(args.run_dir, args.split, bundle=args.bundle, blur=args.blur)
    print(json.dumps({**numbers, "problems": problems(numbers)}, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
