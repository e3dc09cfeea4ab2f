"""The demo case: the real Cranium head CT with one simulated MCA infarct, as a CT DICOM series (SIMULATED).

::

    python -m ACATData.phantom.demo --out demo-output/phantom_case            # left MCA lesion, DICOM
    python -m ACATData.phantom.demo --out /tmp/right --side right --format nrrd

What `make demo` explains and what the bundled-model tests run `acat explain` on: a large (60-100 ml)
lesion in the middle cerebral artery territory of one hemisphere, drawn with the phantom benchmark's own
generator (`ACATData.phantom.brain`) at the benchmark's default contrast and noise, in the standard LPS
storage order. The folder is a one-case phantom dataset: ``manifest.csv`` and ``cases/<id>/`` with the
image (a DICOM series for ``--format dicom``) and its ground truth (lesion mask, territory map).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional

from ACATLogic.errors import ACATInputError

from .brain import BrainParams
from .build import build
from .io import FORMATS, read_manifest

#: a seed whose case has a typical head pose (any seed gives a valid case)
DEMO_SEED = 7
SIDES = {"left": 1, "right": 2}


def demo_params(base: Optional[BrainParams] = None) -> BrainParams:
    """The benchmark's parameters, with one large MCA lesion and the standard storage order."""
    return dataclasses.replace(base or BrainParams(), size_classes=("IS-4",), size_class_weights=(1.0,),
                               size_class_ml=((60.0, 100.0),), artery_weights=(1.0, 0.0, 0.0),
                               orientation_variation=False)


def write_demo_case(out: Path, *, side: str = "left", seed: int = DEMO_SEED, fmt: str = "dicom") -> dict:
    """Write the demo case into ``out`` (a one-case dataset); returns its manifest row (paths resolved)."""
    if side not in SIDES:
        raise ACATInputError(f"--side must be one of {', '.join(SIDES)}, not {side!r}")
    proportions = [0.0, 0.0, 0.0, 0.0]
    proportions[SIDES[side]] = 1.0
    manifest = build("brain", 1, seed, Path(out), fmt, demo_params(), workers=1, proportions=proportions,
                     command=f"python -m ACATData.phantom.demo --out {out} --side {side} --seed {seed} --format {fmt}")
    row = read_manifest(manifest)[0]
    row["manifest"] = str(manifest)
    row["image_path"] = str(Path(manifest).parent / row["image"])
    return row


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ACATData.phantom.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (manifest.csv + cases/)")
    parser.add_argument("--side", choices=sorted(SIDES), default="left", help="the lesion's hemisphere")
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--format", choices=FORMATS, default="dicom")
    args = parser.parse_args(argv)
    try:
        row = write_demo_case(args.out, side=args.side, seed=args.seed, fmt=args.format)
    except ACATInputError as exc:
        print(f"phantom demo: error: {exc}", file=sys.stderr)
        return 2
    print(row["image_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
