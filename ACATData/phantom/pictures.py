"""A picture sheet of phantom cases, to judge their realism: ``python -m ACATData.phantom.pictures``.

For a few cases per class: the axial slice through the lesion's centre (or the brain's middle) in a
stroke window, the same slice with the lesion outlined, and the territory map (brain) or the lung mask
(lung). Written to docs/phantom_brain.png and docs/phantom_lung.png by default. SIMULATED data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ACATLogic.io.atomic import atomic_path
from ACATLogic.overview import tile
from ACATLogic.volume import to_canonical

from .common import BRAIN_LABELS, LUNG_LABELS

TILE = 240
TERRITORY_COLOURS = {1: (230, 90, 90), 2: (90, 90, 230), 3: (240, 170, 60), 4: (60, 170, 240), 5: (120, 200, 90),
                     6: (200, 90, 200)}


def _grey(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    g = np.clip((hu - (level - width / 2)) / width, 0, 1)
    return np.repeat(g[..., None], 3, axis=-1)


def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def case_tiles(case, task: str) -> list[Image.Image]:
    vol, r = to_canonical(case.volume)
    lesion = np.ascontiguousarray(r.apply(case.lesion_mask))
    organ = np.ascontiguousarray(r.apply(case.organ_mask))
    terr = np.ascontiguousarray(r.apply(case.territory_map)) if case.territory_map is not None else None
    if lesion.any():
        k = int(np.argmax(lesion.reshape(lesion.shape[0], -1).sum(axis=1)))
    else:
        k = int(np.argmax(organ.reshape(organ.shape[0], -1).sum(axis=1)))
    level, width = (40.0, 80.0) if task == "brain" else (-600.0, 1500.0)
    spacing_ji = (float(vol.spacing_mm[1]), float(vol.spacing_mm[0]))
    base = _grey(vol.voxels_hu[k], level, width)
    outlined = base.copy()
    outlined[_outline(lesion[k] > 0)] = (1.0, 0.2, 0.2)
    if terr is not None:
        colour = np.zeros(base.shape)
        for tid, c in TERRITORY_COLOURS.items():
            colour[terr[k] == tid] = np.array(c) / 255
        third = base * 0.45 + colour * 0.55 * (terr[k] > 0)[..., None]
        third[_outline(lesion[k] > 0)] = (1, 1, 1)
        third_name = "territories"
    else:
        third = base * 0.5
        third[organ[k] > 0] = third[organ[k] > 0] * 0.5 + np.array([0.2, 0.6, 0.2])
        third[_outline(lesion[k] > 0)] = (1, 0.2, 0.2)
        third_name = "lung mask"
    detail = case.label_name
    sizes = [str(les["size_class"]) for les in case.info.get("lesions", []) if les.get("size_class")]
    if sizes:
        detail += " " + ",".join(sizes)
    if case.info.get("severity"):
        detail += f" {case.info['severity']}"
    return [tile(t, spacing_ji, caption, size=TILE, smooth=False)
            for t, caption in ((base, f"{detail} slice {k}"), (outlined, "lesion outline"), (third, third_name))]


def sheet(task: str, per_class: int, seed: int) -> Image.Image:
    if task == "brain":
        from .brain import BrainParams, generate_brain_case as generate
        params, labels = BrainParams(), BRAIN_LABELS
    else:
        from .lung import LungParams, generate_lung_case as generate
        params, labels = LungParams(), LUNG_LABELS
    rows = []
    index = 0
    for label in range(len(labels)):
        for _ in range(per_class):
            rows.append(case_tiles(generate(seed, index, label, params), task))
            index += 1
    header = 36
    out = Image.new("RGB", (3 * TILE, header + TILE * len(rows)))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    draw.text((6, 4), f"SIMULATED {task} phantom cases (seed {seed}): real CT anatomy, simulated lesions", fill=(255, 255, 255), font=font)
    draw.text((6, 18), "radiological view: patient right on the left; " +
              ("stroke window 40/80 HU" if task == "brain" else "lung window -600/1500 HU"), fill=(200, 200, 200), font=font)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            out.paste(tile, (c * TILE, header + r * TILE))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ACATData.phantom.pictures", description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["brain", "lung", "both"], default="both")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    for task in (["brain", "lung"] if args.task == "both" else [args.task]):
        path = args.out_dir / f"phantom_{task}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, overwrite=True) as tmp:
            sheet(task, args.per_class, args.seed).save(tmp, format="PNG")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
