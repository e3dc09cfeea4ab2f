"""Evaluate a model bundle's classification and explanations on a phantom dataset (SIMULATED benchmark).

::

    python -m training.evaluate --bundle Resources/Models/brain-demo --data data/brain/manifest.csv \\
        --methods counterfactual,latent-shift,gradient,gradcam,integrated-gradients --out results/eval

For every case of the split (``--split``, default test; ``--limit N`` keeps the first N in manifest
order), the `Explainer` runs once per method; the first run's prediction is the classification (every
method shares the classifier). Per case and method it records the paper's measures
(`ACATLogic.metrics`):

* hit (Sec. 4.4): does the territory holding the saliency maximum - taken over the six territories,
  the paper's "6 possible regions" - hold a lesion (brain scans with a lesion and a territory map;
  lung scans have no territories and get none);
* IoU / Dice (Appendix H): the top-n saliency voxels against the lesion mask, n = lesion voxel count;
* counterfactual quality (Fig. 5, method ``counterfactual`` only): towards the healthy class 0, for
  scans with a lesion that the model did not already call healthy (pushing a "healthy" prediction
  towards healthy cannot flip anything): success when p(predicted class) < 0.2 on the trajectory,
  steps to success, latent L1 and the mean |HU change| outside the lesion, inside the organ mask;
* time: ``time_s`` is the wall time of the whole Explainer call (what a user waits; for an ACAT bundle
  it includes the counterfactual saliency its classifier reads, whatever the method), ``map_time_s``
  the part that made this method's map (preprocessing + the method + mapping back). One untimed
  warm-up run per method on the first scan keeps start-up costs out of both.

Writes ``OUT/metrics.json`` (settings, provenance, aggregates and every per-case result; nan is
written as null) and ``OUT/metrics.md`` (the paper's table layout), each atomically.

``--coverage`` defaults to ``sampled`` (one uniform sample of the model's S slices per scan, maps
interpolated along k) rather than the Explainer's ``all``: an evaluation runs every method on every
scan, and "all" costs about K/S times more. Use ``--coverage all`` to score what the Slicer module shows.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ACATLogic import __version__ as acat_version
from ACATLogic.bundle import load_bundle, resolve_model, sha256_file
from ACATLogic.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, ACATInputError
from ACATLogic.explain import METHODS, Explainer, Explanation
from ACATLogic.io.atomic import atomic_path
from ACATLogic.metrics import (SUCCESS_PROBABILITY, CounterfactualOutcome, classification_metrics,
                               counterfactual_success, counterfactual_summary, hit_score, iou_dice,
                               mean_abs_change_outside_lesion, saliency_hit)

from .phantom.common import TERRITORIES
from .phantom.io import LoadedCase, load_case, read_manifest

PROG = "python -m training.evaluate"
NOTICE = "SIMULATED phantom benchmark"
#: command-line method names (hyphens) -> Explainer method names (underscores), in table order
CLI_METHODS = {m.replace("_", "-"): m for m in METHODS}
DISPLAY_NAMES = {"counterfactual": "ACAT counterfactual", "latent_shift": "Latent shift", "gradient": "Gradient",
                 "gradcam": "Grad-CAM", "integrated_gradients": "Integrated gradients"}
#: the manifest column whose values group the accuracy (paper Table 1: lesion size class for the brain)
GROUP_COLUMN = {"brain_stroke": "size_class", "lung_covid": "severity"}
TERRITORY_IDS = {name: tid for tid, name in TERRITORIES.items()}
#: how a hit is scored (recorded with the results; `ACATLogic.metrics.saliency_hit`)
HIT_RULE = "the saliency maximum over the six territories lies in a lesion territory"


def parse_methods(methods: Union[str, Sequence[str]]) -> list[str]:
    """"counterfactual,latent-shift" or a list (hyphens or underscores) -> unique Explainer names."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    out: list[str] = []
    for item in (m.strip() for m in items):
        name = CLI_METHODS.get(item, item)
        if name not in METHODS:
            raise ACATInputError(f"unknown method {item!r}; choose from {', '.join(CLI_METHODS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ACATInputError("no method given; choose from " + ", ".join(CLI_METHODS))
    return out


def command_line(bundle_path, manifest_path, methods: Sequence[str], out_dir, split: str, limit: Optional[int],
                 device: str, coverage: str, steps: Optional[int], saliency_classifier: str = "baseline") -> str:
    """The command line equivalent to an `evaluate` call (recorded when it was not run from a shell)."""
    argv = ["--bundle", str(bundle_path), "--data", str(manifest_path),
            "--methods", ",".join(m.replace("_", "-") for m in methods), "--out", str(out_dir), "--split", split,
            "--device", device, "--coverage", coverage]
    argv += ["--limit", str(limit)] if limit is not None else []
    argv += ["--steps", str(steps)] if steps is not None else []
    argv += ["--saliency-classifier", saliency_classifier] if saliency_classifier != "baseline" else []
    return f"{PROG} {shlex.join(argv)}"


def _json_safe(value):
    """nan/inf -> None and numpy scalars -> Python: strict JSON that any reader accepts."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _nanmean(values) -> float:
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


# ---------------------------------------------------------------------------------------------------------
def select_cases(rows: list[dict], split: str, limit: Optional[int], task: str, labels: Sequence[str],
                 manifest_path: Path) -> list[dict]:
    """The split's rows in manifest order (first ``limit``), checked against the bundle's task and labels."""
    chosen = [r for r in rows if r.get("split", "") == split]
    if not chosen:
        splits = sorted({r.get("split", "") for r in rows})
        raise ACATInputError(f"no case in split {split!r} (the manifest has splits {splits})", manifest_path)
    chosen = chosen[:limit] if limit is not None else chosen
    for row in chosen:
        where = f"case {row['case_id']}"
        if row.get("task") and row["task"] != task:
            raise ACATInputError(f"{where} is a {row['task']} case but the bundle is for {task}", manifest_path)
        if not 0 <= row["label"] < len(labels):
            raise ACATInputError(f"{where}: label {row['label']} is not a class of the bundle ({labels})",
                                 manifest_path)
        if row.get("label_name") and row["label_name"] != labels[row["label"]]:
            raise ACATInputError(f"{where}: label {row['label']} is {row['label_name']!r} in the manifest but "
                                 f"{labels[row['label']]!r} for the bundle", manifest_path)
        if not (manifest_path.parent / row["image"]).exists():
            raise ACATInputError(f"{where}: the image {row['image']!r} does not exist", manifest_path)
    return chosen


def lesion_territory_ids(case: LoadedCase) -> list[int]:
    """The scan's lesion territories: the manifest's names, else the territories under the lesion mask."""
    names = [n for n in (case.row.get("lesion_territories") or "").split(";") if n]
    unknown = [n for n in names if n not in TERRITORY_IDS]
    if unknown:
        raise ACATInputError(f"case {case.row['case_id']}: unknown territories {unknown}; "
                             f"expected names from {sorted(TERRITORY_IDS)}")
    if names:
        return sorted({TERRITORY_IDS[n] for n in names})
    if case.lesion_mask is None or case.territory_map is None:
        return []
    under = np.unique(case.territory_map[case.lesion_mask != 0])
    return [int(t) for t in under if t != 0]


def _map_time_s(explanation: Explanation) -> float:
    """Seconds spent making this method's map (without the ACAT classifier's own counterfactual pass).

    The Explainer's ``map_back_s`` already contains ``saliency_s`` (a comparison method's map is made
    inside that stage), so it is not added twice; the counterfactual's optimisation is a stage of its own.
    """
    t = explanation.timings
    own = (t.get("counterfactual_s", 0.0) + t.get("counterfactual_acat_s", 0.0)
           if explanation.method == "counterfactual" else 0.0)
    return float(t.get("preprocess_s", 0.0) + own + t.get("map_back_s", 0.0))


def counterfactual_quality(explanation: Explanation, case: LoadedCase, predicted: str, has_lesion: bool) -> dict:
    """Fig. 5 for one scan: the counterfactual towards the healthy class 0."""
    healthy = explanation.class_names[0]
    if not has_lesion:
        return {"applicable": False, "reason": "no lesion"}
    if predicted == healthy:
        return {"applicable": False, "reason": f"predicted {healthy}"}
    outcome = counterfactual_success(explanation.trajectory[healthy], predicted)
    change = math.nan
    if case.lesion_mask is not None and healthy in explanation.counterfactuals:
        change = mean_abs_change_outside_lesion(explanation.counterfactuals[healthy].voxels_hu,
                                                case.volume.voxels_hu, case.lesion_mask, case.organ_mask)
    return {"applicable": True, "success": outcome.success, "steps_to_success": outcome.steps_to_success,
            "latent_l1": explanation.latent_l1.get(healthy, math.nan),
            "mean_abs_change_outside_lesion_hu": change}


def evaluate_case(explainer: Explainer, case: LoadedCase, methods: Sequence[str], *, coverage: str,
                  steps: Optional[int], saliency_classifier: str = "baseline") -> dict:
    """Run every method on one case; returns its JSON-ready record (see the module docstring)."""
    row = case.row
    lesion_voxels = int(np.count_nonzero(case.lesion_mask)) if case.lesion_mask is not None else None
    has_lesion = lesion_voxels > 0 if lesion_voxels is not None else row["label"] != 0
    territories = lesion_territory_ids(case) if has_lesion and case.territory_map is not None else []
    record: dict = {"case_id": row["case_id"], "label": row["label"], "label_name": row.get("label_name", ""),
                    "size_class": row.get("size_class", ""), "severity": row.get("severity", ""),
                    "lesion_territories": row.get("lesion_territories", ""), "has_lesion": has_lesion,
                    "lesion_voxels": lesion_voxels, "methods": {}}
    for method in methods:
        t0 = time.perf_counter()
        explanation = explainer.explain(case.volume, method=method, coverage=coverage, steps=steps,
                                        **_classifier_option(method, saliency_classifier))
        wall_s = time.perf_counter() - t0
        if "predicted" not in record:  # the classifier is the same for every method: the first run decides
            record.update(predicted=explanation.class_names.index(explanation.label),
                          predicted_name=explanation.label, probabilities=explanation.probabilities,
                          classifier=explanation.classifier, warnings=explanation.warnings)
        saliency = explanation.saliency.voxels_hu
        hit = saliency_hit(saliency, case.territory_map, territories) if territories else None
        iou, dice = (iou_dice(saliency, case.lesion_mask) if has_lesion and case.lesion_mask is not None
                     else (math.nan, math.nan))
        result = {"hit": hit, "iou": iou, "dice": dice, "time_s": wall_s, "map_time_s": _map_time_s(explanation),
                  "timings": explanation.timings, "steps": explanation.parameters["steps"]}
        if method == "counterfactual":
            result["counterfactual"] = counterfactual_quality(explanation, case, record["predicted_name"],
                                                              has_lesion)
        record["methods"][method] = result
    return record


def _classifier_option(method: str, saliency_classifier: str) -> dict:
    """Only the counterfactual method can explain the ACAT classifier; the others explain the baseline."""
    return {"saliency_classifier": saliency_classifier} if method == "counterfactual" else {}


def _groups(record: dict, task: str) -> list[str]:
    column = GROUP_COLUMN.get(task)
    value = record.get(column, "") if column else ""
    return [g for g in value.split(";") if g]


def aggregate(cases: list[dict], methods: Sequence[str], class_names: Sequence[str], task: str) -> dict:
    """Classification (with accuracy per size class / severity) and one summary row per method."""
    classification = classification_metrics([c["label"] for c in cases], [c["predicted"] for c in cases],
                                            class_names, groups=[_groups(c, task) for c in cases])
    classification["group_column"] = GROUP_COLUMN.get(task)
    per_method: dict = {}
    for method in methods:
        results = [c["methods"][method] for c in cases]
        hits = sum(r["hit"] is True for r in results)
        misses = sum(r["hit"] is False for r in results)
        scored = [r for r in results if math.isfinite(r["iou"])]
        row = {"hit_score": hit_score(hits, misses), "hits": hits, "misses": misses,
               "mean_iou": _nanmean(r["iou"] for r in scored), "mean_dice": _nanmean(r["dice"] for r in scored),
               "n_overlap_cases": len(scored), "time_per_scan_s": _nanmean(r["time_s"] for r in results),
               "map_time_per_scan_s": _nanmean(r["map_time_s"] for r in results), "n_cases": len(results)}
        if method == "counterfactual":
            quality = [r["counterfactual"] for r in results if r["counterfactual"]["applicable"]]
            row["counterfactual"] = counterfactual_summary(
                [CounterfactualOutcome(q["success"], q["steps_to_success"]) for q in quality],
                [q["latent_l1"] for q in quality], [q["mean_abs_change_outside_lesion_hu"] for q in quality])
        per_method[method] = row
    return {"classification": classification, "methods": per_method}


# ---------------------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(report: dict) -> str:
    """metrics.md: provenance at the head, then the paper-style tables."""
    b, d, s, v = report["bundle"], report["dataset"], report["settings"], report["versions"]
    hashes = "; ".join(f"{role} `{sha}`" for role, sha in b["sha256"].items())
    lines = [f"# ACAT evaluation: {NOTICE}", "",
             f"> **{NOTICE}.** Real CT anatomy with simulated lesions and known ground truth. These numbers "
             "describe the method on simulated data: they are not clinical performance and are not comparable "
             "with the paper's IST-3 / MosMed results.", "",
             "| | |", "|---|---|",
             f"| Command | `{_md(report['command'])}` |",
             f"| Date | {report['date']} |",
             f"| Versions | acat {v['acat']}, torch {v['torch']}, python {v['python']}, numpy {v['numpy']} |",
             f"| Bundle | `{_md(b['id'])}` {b['version']} (task {b['task']}) at `{_md(b['path'])}` |",
             f"| Bundle sha256 | {hashes} |",
             f"| Dataset | `{_md(d['manifest'])}` (sha256 `{d['manifest_sha256']}`), split `{d['split']}`, "
             f"{d['n_cases']} cases |",
             f"| Settings | device {s['device']}, coverage {s['coverage']}, counterfactual steps {s['steps']}, "
             f"the counterfactual method explains the {s.get('saliency_classifier', 'baseline')} classifier |", ""]

    lines += ["## Explanations (hit score: Sec. 4.4; IoU/Dice: Appendix H; counterfactual success: Fig. 5)", "",
              "| Method | Hit score | IoU | Dice | Time/scan (s) | Map time/scan (s) | CF success rate |",
              "|---|---|---|---|---|---|---|"]
    for method, row in report["methods"].items():
        scored = row["hits"] + row["misses"]
        hit = f"{_fmt(row['hit_score'])} ({row['hits']}/{scored})" if scored else "n/a"
        cf = row.get("counterfactual")
        success = (f"{_fmt(cf['success_rate'])} ({cf['successes']}/{cf['n']})" if cf and cf["n"] else
                   ("n/a" if cf else "-"))
        lines.append(f"| {DISPLAY_NAMES[method]} | {hit} | {_fmt(row['mean_iou'])} | {_fmt(row['mean_dice'])} | "
                     f"{_fmt(row['time_per_scan_s'], 2)} | {_fmt(row['map_time_per_scan_s'], 2)} | {success} |")
    lines += ["", "Hit score over scans with a lesion and a territory map; IoU/Dice over scans with a lesion "
              "(top-n saliency voxels, n = lesion voxel count). Time/scan: the whole Explainer call; map "
              "time: this method's map alone.", ""]

    cf = report["methods"].get("counterfactual", {}).get("counterfactual")
    if cf is not None:
        lines += ["## Counterfactual quality (Fig. 5)", "",
                  f"| Scans | Success rate (p < {s['success_probability']}) | Mean steps to success | "
                  "Mean latent L1 | Mean \\|ΔHU\\| outside lesion |", "|---|---|---|---|---|",
                  f"| {cf['n']} | {_fmt(cf['success_rate'])} | {_fmt(cf['mean_steps_to_success'], 1)} | "
                  f"{_fmt(cf['mean_latent_l1'], 4)} | {_fmt(cf['mean_abs_change_outside_lesion_hu'], 2)} |", "",
                  "Towards the healthy class, over scans with a lesion not already predicted healthy; the HU "
                  "change is measured inside the organ mask.", ""]

    c = report["classification"]
    names = c["class_names"]
    lines += ["## Classification", "", f"Accuracy {_fmt(c['accuracy'])} over {c['n']} scans"
              + (f"; sensitivity {_fmt(c['sensitivity'])}, specificity {_fmt(c['specificity'])} "
                 f"(positive = {names[1]})" if "sensitivity" in c else "") + ".", "",
              "| Class | Scans | Accuracy (recall) |", "|---|---|---|"]
    lines += [f"| {n} | {c['per_class_n'][n]} | {_fmt(c['per_class_accuracy'][n])} |" for n in names]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(map(str, counts)) + " |" for n, counts in zip(names, c["confusion_matrix"])]
    if c.get("accuracy_by_group"):
        titles = {"size_class": "lesion size class (Table 1)", "severity": "severity"}
        title = titles.get(c["group_column"], c["group_column"])
        lines += ["", f"Accuracy by {title}:", "", "| Group | Scans | Accuracy |", "|---|---|---|"]
        lines += [f"| {g} | {r['n']} | {_fmt(r['accuracy'])} |" for g, r in c["accuracy_by_group"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
def evaluate(bundle_path, manifest_path, methods: Union[str, Sequence[str]], out_dir, split: str = "test",
             limit: Optional[int] = None, device: str = "auto", coverage: str = "sampled",
             steps: Optional[int] = None, *, overwrite: bool = False, command: Optional[str] = None,
             progress: bool = True, saliency_classifier: str = "baseline") -> dict:
    """Evaluate ``bundle_path`` on the ``split`` cases of ``manifest_path``; write and return the report.

    ``methods``: Explainer names or command-line names ("latent-shift"), as a list or comma-separated.
    ``saliency_classifier="acat"`` explains the ACAT classifier instead of the baseline with the
    counterfactual method (its saliency input fixed; paper Sec. 4.4); the other methods always explain
    the baseline.
    ``out_dir`` receives metrics.json and metrics.md (an existing metrics.json is an error unless
    ``overwrite``). ``command`` is the command line to record (default: the equivalent one).
    Raises `ACATInputError` for anything the user can fix, before any long computation where possible.
    """
    methods = parse_methods(methods)
    if coverage not in ("all", "sampled"):
        raise ACATInputError(f"coverage must be 'all' or 'sampled', not {coverage!r}")
    if limit is not None and limit < 1:
        raise ACATInputError("--limit must be at least 1")
    if steps is not None and steps < 1:
        raise ACATInputError("--steps must be at least 1")
    if saliency_classifier not in ("baseline", "acat"):
        raise ACATInputError(f"--saliency-classifier must be baseline or acat, not {saliency_classifier!r}")
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise ACATInputError("the dataset manifest does not exist (expected a manifest.csv)", manifest_path)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ACATInputError("the output path is a file, not a folder", out_dir)
    if (out_dir / "metrics.json").exists() and not overwrite:
        raise ACATInputError("already holds metrics.json; choose another folder or add --overwrite", out_dir)
    bundle_folder = resolve_model(str(bundle_path))
    bundle = load_bundle(bundle_folder)
    task = bundle.card["task"]
    if saliency_classifier == "acat" and "acat" not in bundle.models:
        raise ACATInputError("--saliency-classifier acat needs a bundle with an ACAT classifier", bundle_folder)
    rows = select_cases(read_manifest(manifest_path), split, limit, task, bundle.labels, manifest_path)
    if command is None:
        command = command_line(bundle_path, manifest_path, methods, out_dir, split, limit, device, coverage, steps,
                               saliency_classifier)

    explainer = Explainer(bundle, device=device)
    from tqdm import tqdm

    cases = []
    bar = tqdm(rows, desc="evaluating", unit="scan", file=sys.stderr, disable=not (progress and sys.stderr.isatty()))
    for row in bar:
        bar.set_postfix_str(row["case_id"], refresh=False)
        case = load_case(manifest_path, row)
        if not cases:
            # One untimed run per method first: the first call pays one-off costs (allocator, kernel
            # selection, CUDA context) that would otherwise be charged to the first scan's time.
            for method in methods:
                explainer.explain(case.volume, method=method, coverage=coverage, steps=1,
                                  **_classifier_option(method, saliency_classifier))
        cases.append(evaluate_case(explainer, case, methods, coverage=coverage, steps=steps,
                                   saliency_classifier=saliency_classifier))

    summary = aggregate(cases, methods, bundle.labels, task)
    effective_steps = cases[0]["methods"][methods[0]]["steps"]
    report = {
        "benchmark": NOTICE,
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"acat": acat_version, "torch": torch.__version__, "python": platform.python_version(),
                     "numpy": np.__version__},
        "bundle": {"id": bundle.id, "version": bundle.card.get("version", ""), "task": task,
                   "path": str(bundle_folder), "labels": bundle.labels, "sha256": bundle.sha256()},
        "dataset": {"manifest": str(manifest_path), "manifest_sha256": sha256_file(manifest_path), "split": split,
                    "limit": limit, "n_cases": len(cases)},
        "settings": {"methods": methods, "device": str(explainer.device), "coverage": coverage, "hit": HIT_RULE,
                     "saliency_classifier": saliency_classifier,
                     "steps": effective_steps, "success_probability": SUCCESS_PROBABILITY, "warmup": True},
        **summary,
        "cases": cases,
    }
    report = _json_safe(report)
    with atomic_path(out_dir / "metrics.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    with atomic_path(out_dir / "metrics.md", overwrite=True) as tmp:
        tmp.write_text(render_markdown(report), encoding="utf-8")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Evaluate a model bundle and its explanations on a phantom dataset ({NOTICE}).\n"
                    "Writes OUT/metrics.json (every case) and OUT/metrics.md (paper-style tables).",
        epilog=f"example:\n  {PROG} --bundle Resources/Models/brain-demo --data data/brain/manifest.csv \\\n"
               "      --methods counterfactual,gradient --out results/eval --limit 10\n"
               "Exit codes: 0 success, 2 bad input, 1 internal error.")
    parser.add_argument("--bundle", required=True, help="a model bundle folder or the id of a bundled model")
    parser.add_argument("--data", required=True, help="the dataset's manifest.csv")
    parser.add_argument("--methods", default=",".join(CLI_METHODS),
                        help=f"comma-separated, from {', '.join(CLI_METHODS)} (default: all)")
    parser.add_argument("--out", required=True, help="the folder for metrics.json and metrics.md")
    parser.add_argument("--split", default="test", help="which split of the manifest (default: test)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N cases of the split")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"])
    parser.add_argument("--coverage", default="sampled", choices=["all", "sampled"],
                        help="slices explained per scan: the model's sample (default, fast) or all")
    parser.add_argument("--steps", type=int, help="counterfactual steps (default: the model card's)")
    parser.add_argument("--saliency-classifier", choices=["baseline", "acat"], default="baseline",
                        help="the classifier the counterfactual method explains (acat: paper Sec. 4.4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/metrics.json")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of internal errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        report = evaluate(args.bundle, args.data, args.methods, args.out, split=args.split, limit=args.limit,
                          device=args.device, coverage=args.coverage, steps=args.steps, overwrite=args.overwrite,
                          saliency_classifier=args.saliency_classifier,
                          command=f"{PROG} {shlex.join(argv)}", progress=not args.quiet)
    except ACATInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if args.verbose:
            traceback.print_exc()
        text = " ".join(str(exc).split())[:200]
        print(f"{PROG}: internal error: {type(exc).__name__}: {text} (run with --verbose for details)",
              file=sys.stderr)
        return EXIT_INTERNAL
    if not args.quiet:
        c = report["classification"]
        print(f"{NOTICE}: {c['n']} cases, accuracy {_fmt(c['accuracy'])}; "
              f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'metrics.md'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
