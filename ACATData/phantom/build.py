"""Build a phantom dataset: ``python -m ACATData.phantom --task brain|lung --n N --seed S --out DIR``.

Deterministic for a given seed and flags: case i is generated from ``case_rng(seed, i)`` alone, so the
result does not depend on the number of workers or the order they finish in. Labels follow the class
proportions exactly (rounded counts, then shuffled by the seed); splits are stratified 70/15/15.
Everything produced is SIMULATED data and is labelled so in the manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ACATLogic import __version__
from ACATLogic.errors import ACATInputError

from .common import BRAIN_LABELS, LUNG_LABELS, TERRITORIES
from .io import FORMATS, stratified_splits, write_case, write_manifest

TASKS = {"brain": ("brain_stroke", BRAIN_LABELS), "lung": ("lung_covid", LUNG_LABELS)}


def _generator(task: str):
    if task == "brain":
        from .brain import BrainParams, generate_brain_case
        return BrainParams, generate_brain_case
    from .lung import LungParams, generate_lung_case
    return LungParams, generate_lung_case


def class_counts(n: int, proportions: list[float]) -> list[int]:
    """Counts per class summing to n, by largest remainder; every class gets one when n allows."""
    p = np.asarray(proportions, dtype=float)
    p = p / p.sum()
    raw = p * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    if n >= len(p):
        for i in np.where(counts == 0)[0]:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return counts.tolist()


def assign_labels(n: int, proportions: list[float], seed: int) -> list[int]:
    labels = [c for c, k in enumerate(class_counts(n, proportions)) for _ in range(k)]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 104729]))
    rng.shuffle(labels)
    return [int(x) for x in labels]


def parse_value(text: str, current: Any) -> Any:
    """A command-line override converted to the type of the field's default (JSON for tuples/lists)."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(current, (tuple, list)):
        value = json.loads(text)
        return tuple(value) if isinstance(current, tuple) else list(value)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    return text


def apply_overrides(params, overrides: list[str]):
    fields = {f.name: f for f in dataclasses.fields(params)}
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ACATInputError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        try:
            changes[key] = parse_value(value, getattr(params, key))
        except (ValueError, json.JSONDecodeError) as exc:
            raise ACATInputError(f"--set {item!r}: {exc}") from None
    return dataclasses.replace(params, **changes)


def _one(job) -> dict:
    task, seed, index, label, params, out, fmt = job
    _, generate = _generator(task)
    case = generate(seed, index, label, params)
    case_id = f"{task}_{seed:04d}_{index:05d}"
    paths = write_case(case, Path(out), case_id, fmt)
    lesions = case.info.get("lesions", [])
    return {"case_id": case_id, "task": TASKS[task][0], "label": case.label, "label_name": case.label_name,
            **paths,
            "size_class": ";".join(str(les.get("size_class", "")) for les in lesions if les.get("size_class")),
            "lesion_territories": ";".join(str(les["territory"]) for les in lesions if les.get("territory")),
            "severity": str(case.info.get("severity", "")),
            "involvement_pct": (f"{case.info['involvement_pct']:.2f}" if "involvement_pct" in case.info else "")}


def build(task: str, n: int, seed: int, out: Path, fmt: str = "npz", params=None, workers: int | None = None,
          proportions: list[float] | None = None, progress: bool = False, command: str = "") -> Path:
    """Generate n cases into ``out`` and write the manifest. Returns the manifest path."""
    params_cls, _ = _generator(task)
    params = params or params_cls()
    labels_names = TASKS[task][1]
    proportions = proportions or list(getattr(params, "class_proportions", [1.0] * len(labels_names)))
    if len(proportions) != len(labels_names):
        raise ACATInputError(f"--proportions needs {len(labels_names)} values ({', '.join(labels_names)})")
    labels = assign_labels(n, proportions, seed)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(task, seed, i, labels[i], params, str(out), fmt) for i in range(n)]
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    rows: list[dict] = []
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=n, desc=f"{task} phantom", unit="case", file=sys.stderr)
    if workers == 1:
        for job in jobs:
            rows.append(_one(job))
            bar and bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")  # no forked torch threads
        with ctx.Pool(workers) as pool:
            for row in pool.imap_unordered(_one, jobs):
                rows.append(row)
                bar and bar.update(1)
    if bar:
        bar.close()
    rows.sort(key=lambda r: r["case_id"])
    for row, split in zip(rows, stratified_splits([r["label"] for r in rows], seed)):
        row["split"] = split
    description = {
        "what": "SIMULATED phantom benchmark: real CT anatomy with simulated lesions; not patient data",
        "task": TASKS[task][0], "labels": list(labels_names), "n": n, "seed": seed, "format": fmt,
        "class_proportions": proportions, "params": params.to_dict(),
        "territories": TERRITORIES if task == "brain" else None,
        "splits": {"rule": "stratified by label, 70/15/15, by seed",
                   "counts": {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}},
        "class_counts": {labels_names[c]: sum(r["label"] == c for r in rows) for c in range(len(labels_names))},
        "command": command, "acat_version": __version__,
    }
    return write_manifest(out, rows, description)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ACATData.phantom", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a SIMULATED phantom dataset (real CT anatomy, simulated lesions, ground truth).",
        epilog="every generator parameter is also a flag (--list-params shows them and their defaults):\n"
               "  --lesion-contrast-hu LO HI, --size-class-ml ..., --noise-sigma-hu LO HI,\n"
               "  --deformation-strength X, ... (the same as --set lesion_contrast_hu=[LO,HI])\n\n"
               "example:\n  python -m ACATData.phantom --task brain --n 40 --seed 0 --out data/brain --format dicom\n"
               "  python -m ACATData.phantom --task brain --n 600 --seed 0 --out data/brain --lesion-contrast-hu 3 8\n"
               "  python -m ACATData.phantom --task lung --n 20 --set noise_sigma_hu=[4,8]")
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--n", type=int, required=True, help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (manifest.csv + cases/)")
    parser.add_argument("--format", choices=FORMATS, default="npz", help="npz (default), dicom or nrrd")
    parser.add_argument("--workers", type=int, help="parallel processes (default: every core)")
    parser.add_argument("--proportions", help="class proportions, comma-separated, in label order")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any generator parameter (see --list-params); tuples as JSON, e.g. [3,8]")
    parser.add_argument("--list-params", action="store_true", help="print the parameters and defaults, then exit")
    args, extra = parser.parse_known_args(argv)
    try:
        params_cls, _ = _generator(args.task)
        params = params_cls()
        # every parameter is also a flag: --lesion-contrast-hu 3 8 == --set lesion_contrast_hu=[3,8]
        overrides = list(args.set)
        i = 0
        while i < len(extra):
            flag = extra[i]
            if not flag.startswith("--"):
                raise ACATInputError(f"unexpected argument {flag!r}")
            key = flag[2:].replace("-", "_")
            values = []
            i += 1
            while i < len(extra) and not extra[i].startswith("--"):
                values.append(extra[i])
                i += 1
            if not values:
                raise ACATInputError(f"{flag} needs a value")
            overrides.append(f"{key}={values[0] if len(values) == 1 else json.dumps([float(v) for v in values])}")
        params = apply_overrides(params, overrides)
        if args.list_params:
            print(json.dumps(params.to_dict(), indent=2))
            return 0
        if args.n < 1:
            raise ACATInputError("--n must be at least 1")
        proportions = [float(x) for x in args.proportions.split(",")] if args.proportions else None
        command = "python -m ACATData.phantom " + " ".join(sys.argv[1:] if argv is None else argv)
        manifest = build(args.task, args.n, args.seed, args.out, args.format, params, args.workers, proportions,
                         progress=True, command=command)
    except ACATInputError as exc:
        print(f"phantom: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {manifest} ({args.n} SIMULATED {args.task} cases)")
    return 0
