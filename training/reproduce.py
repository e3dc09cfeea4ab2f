"""The reproduction table: baseline vs ACAT and the saliency localisation table, over seeds (SIMULATED).

::

    python -m training.reproduce --config training/configs/brain_cpu.yaml --seeds 0,1,2 \\
        data.path=data/phantom/brain/manifest.csv out_dir=runs/brain-cpu --out docs/results/brain

For each seed N of ``--acat-seeds`` (default: every seed): Algorithm 1 (`training.pipeline`, run folder
``<out_dir>/seed_N``, finished stages skipped), the run exported to ``<out_dir>/seed_N/bundle``
(`training.export`) and evaluated on the
held-out test split with every saliency method (`training.evaluate`, ``<out_dir>/seed_N/evaluation``;
kept while the bundle's sha256 and the evaluation settings are unchanged). The other seeds train the
baseline only (the saliency stage is the costly one: on a 2-core CPU it takes about 20 minutes for 600 brain scans). Then, over
the seeds that have each number (mean ± standard error):

* classification (paper Tables 1 and 2): baseline vs ACAT accuracy on the test split, from each stage's
  ``test_predictions.csv`` joined with the manifest: accuracy by lesion size class for the brain task,
  sensitivity / specificity for the lung task;
* saliency localisation (paper Sec. 4.4 and appendix H): hit score, IoU and Dice of every method, with
  the counterfactual success rate and steps (paper Fig. 5);
* the paper's way to better maps (Sec. 4.4): the counterfactual method explaining the *ACAT* classifier
  (its saliency input fixed) instead of the baseline, evaluated the same way
  (``<out_dir>/seed_N/evaluation_acat_classifier``) and shown as its own row.

Writes ``OUT/reproduction.json`` (every per-seed number, the commands, versions) and
``OUT/reproduction.md`` (the tables), atomically. Re-running the same command recomputes nothing that
is complete, so a crashed run is resumed by running it again.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import platform
import shlex
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ACATLogic import __version__ as acat_version
from ACATLogic.bundle import load_bundle, sha256_file
from ACATLogic.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, ACATInputError
from ACATLogic.io.atomic import atomic_path
from ACATLogic.metrics import classification_metrics, mean_and_sem

from . import evaluate as evaluate_cli
from . import export as export_cli
from . import pipeline
from .config import load_config
from .export import BUNDLE_TASK
from ACATData.phantom.common import BRAIN_LABELS, LUNG_LABELS
from ACATData.phantom.io import read_manifest

PROG = "python -m training.reproduce"
NOTICE = "SIMULATED phantom benchmark"
DEFAULT_METHODS = ",".join(evaluate_cli.DEFAULT_METHODS)
MODELS = {"baseline": "Baseline", "acat": "ACAT"}
#: the localisation row of the counterfactual method explaining the ACAT classifier (paper Sec. 4.4)
ACAT_CLASSIFIER_ROW = "counterfactual_acat_classifier"
ROW_NAMES = {**evaluate_cli.DISPLAY_NAMES,
             ACAT_CLASSIFIER_ROW: "ACAT counterfactual, explaining the ACAT classifier (Sec. 4.4)"}
LABELS = {"brain_stroke": BRAIN_LABELS, "lung_covid": LUNG_LABELS}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_predictions(path: Path) -> list[dict]:
    if not path.is_file():
        raise ACATInputError("no test predictions (the stage finished before they were recorded: "
                             "re-run the stage with --fresh)", path)
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def seed_classification(run: Path, manifest: Path, class_names: Sequence[str], group_column: Optional[str],
                        models: Sequence[str] = tuple(MODELS)) -> dict:
    """{model: classification_metrics(...)} of the baseline (and ACAT) stages of one seed's run folder."""
    rows = {r["case_id"]: r for r in read_manifest(manifest)}
    out = {}
    for model in models:
        preds = read_predictions(run / model / "test_predictions.csv")
        missing = [p["case_id"] for p in preds if p["case_id"] not in rows]
        if missing:
            raise ACATInputError(f"test case {missing[0]} is not in the manifest", manifest)
        groups = None
        if group_column:
            groups = [[g for g in (rows[p["case_id"]].get(group_column) or "").split(";") if g] for p in preds]
        out[model] = classification_metrics([int(p["label"]) for p in preds], [int(p["predicted"]) for p in preds],
                                            class_names, groups=groups)
    return out


def _stat(values: Sequence[float]) -> dict:
    mean, sem = mean_and_sem(values)
    return {"mean": mean, "sem": sem, "values": list(values)}


def summarise(per_seed: list[dict], task: str) -> dict:
    """Mean ± SEM over seeds of every number the tables show (each over the seeds that have it)."""
    classification: dict = {}
    for model in MODELS:
        results = [s["classification"][model] for s in per_seed if model in s["classification"]]
        if not results:
            continue
        row = {"seeds": [s["seed"] for s in per_seed if model in s["classification"]],
               "accuracy": _stat([r["accuracy"] for r in results])}
        if task == "lung_covid":
            row["sensitivity"] = _stat([r["sensitivity"] for r in results])
            row["specificity"] = _stat([r["specificity"] for r in results])
        groups = sorted({g for r in results for g in r.get("accuracy_by_group", {})})
        row["accuracy_by_group"] = {
            g: _stat([r["accuracy_by_group"].get(g, {}).get("accuracy", math.nan) for r in results]) for g in groups}
        row["per_class_accuracy"] = {
            c: _stat([r["per_class_accuracy"][c] for r in results]) for c in results[0]["per_class_accuracy"]}
        classification[model] = row
    methods: dict = {}
    evaluated = [s for s in per_seed if s.get("evaluation")]
    names = list(evaluated[0]["evaluation"]["methods"]) if evaluated else []
    if evaluated and all(s.get("evaluation_acat_classifier") for s in evaluated):
        names.append(ACAT_CLASSIFIER_ROW)
    for method in names:
        rows = [s["evaluation_acat_classifier"]["methods"]["counterfactual"] if method == ACAT_CLASSIFIER_ROW
                else s["evaluation"]["methods"][method] for s in evaluated]
        entry = {"seeds": [s["seed"] for s in evaluated], "hit_score": _stat([r["hit_score"] for r in rows]),
                 "iou": _stat([r["mean_iou"] for r in rows]), "dice": _stat([r["mean_dice"] for r in rows]),
                 "time_per_scan_s": _stat([r["time_per_scan_s"] for r in rows])}
        if "counterfactual" in rows[0]:
            cf = [r["counterfactual"] for r in rows]
            entry["success_rate"] = _stat([c["success_rate"] for c in cf])
            # a seed whose counterfactuals never succeeded has no step count (undefined, not a failure):
            # the mean is over the seeds that have one, and the table says how many those are
            steps = [c["mean_steps_to_success"] for c in cf]
            entry["mean_steps"] = _stat([v for v in steps if v is not None and math.isfinite(v)])
            entry["mean_steps"]["of_seeds"] = len(steps)
            entry["mean_abs_change_outside_lesion_hu"] = _stat([c["mean_abs_change_outside_lesion_hu"] for c in cf])
        methods[method] = entry
    lines = {}  # the chance line and the line no model needs, over the seeds whose evaluation has them
    for line in evaluate_cli.REFERENCE_LINES:
        lines[line] = {}
        if evaluated and all(s.get("evaluation", {}).get(line) for s in evaluated):
            lines[line] = {key: _stat([s["evaluation"][line][key] for s in evaluated])
                           for key in ("hit_score", "mean_iou", "mean_dice")}
    paired: dict = {}
    if evaluated and all(s.get("evaluation", {}).get("paired") for s in evaluated):
        reference = evaluated[0]["evaluation"]["paired"]["reference"]
        for other in evaluated[0]["evaluation"]["paired"]["against"]:
            pairs = [s["evaluation"]["paired"]["against"][other] for s in evaluated]
            paired[other] = {key: {"difference": _stat([p[key]["mean_difference"] for p in pairs]),
                                   "ci95_above_zero": sum(1 for p in pairs if p[key]["ci95"][0] is not None
                                                          and p[key]["ci95"][0] > 0),
                                   "of_seeds": len(pairs)} for key in ("hit", "iou", "dice")}
        paired = {"reference": reference, "against": paired}
    return {"classification": classification, "methods": methods, **lines, "paired": paired}


def _fmt(stat: dict, digits: int = 3) -> str:
    mean, sem = stat["mean"], stat["sem"]
    if mean is None or not math.isfinite(mean):
        return "–"
    if sem is None or not math.isfinite(sem):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sem:.{digits}f}"


def _fmt_steps(stat: dict) -> str:
    """Steps to success, saying over how many seeds when some seeds had no success at all."""
    text = _fmt(stat, 1)
    have, of = len(stat["values"]), stat.get("of_seeds", len(stat["values"]))
    return f"{text} ({have} of {of} seeds)" if 0 < have < of else text


def render_markdown(report: dict) -> str:
    s = report["summary"]
    task = report["task"]
    lines = [f"# Reproduction table ({NOTICE}: {task})", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
             f"- data: `{report['manifest']}` (sha256 {report['manifest_sha256'][:12]}…), held-out test split "
             f"of {report['n_test']} scans; mean ± standard error over the seeds of each row (one seed: no "
             "error)", ""]
    lines += ["## Classification (test split)", ""]
    groups = sorted({g for m in s["classification"].values() for g in m["accuracy_by_group"]})
    head = ["model", "seeds", "accuracy"]
    if task == "lung_covid":
        head += ["sensitivity", "specificity"]
    head += [f"acc. {g}" for g in groups]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, name in MODELS.items():
        row = s["classification"].get(model)
        if row is None:
            continue
        cells = [name, ",".join(map(str, row["seeds"])), _fmt(row["accuracy"])]
        if task == "lung_covid":
            cells += [_fmt(row["sensitivity"]), _fmt(row["specificity"])]
        cells += [_fmt(row["accuracy_by_group"].get(g, {"mean": math.nan, "sem": math.nan})) for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    if groups:
        column = report.get("group_column")
        lines += ["", f"Accuracy by `{column}` counts each scan with a lesion of that class (paper Table 1)."]
    seeds = next(iter(s["methods"].values()), {}).get("seeds", [])
    lines += ["", f"## Saliency localisation (test split, the baseline explained unless the row says otherwise; "
              f"seeds {','.join(map(str, seeds))})",
              "", "| method | hit score | IoU | Dice | counterfactual success | steps to success | time / scan (s) |",
              "|---|---|---|---|---|---|---|"]
    for method, row in s["methods"].items():
        cells = [ROW_NAMES.get(method, method), _fmt(row["hit_score"]), _fmt(row["iou"]),
                 _fmt(row["dice"]),
                 _fmt(row["success_rate"]) if "success_rate" in row else "–",
                 _fmt_steps(row["mean_steps"]) if "mean_steps" in row else "–",
                 _fmt(row["time_per_scan_s"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    for line, name in evaluate_cli.REFERENCE_LINES.items():
        if s.get(line):
            c = s[line]
            lines.append(f"| {name} | {_fmt(c['hit_score'])} | {_fmt(c['mean_iou'])} | {_fmt(c['mean_dice'])} "
                         "| – | – | – |")
    lines += ["", "Hit: the territory (of six) that holds the map's maximum holds a lesion (paper Sec. 4.4; "
              "brain only). IoU / Dice: the top-n map voxels inside the organ, n = the lesion's size "
              f"(appendix H). Counterfactual success: {evaluate_cli.SUCCESS_RULE} (Fig. 5).", ""]
    paired = s.get("paired") or {}
    if paired.get("against"):
        ref = ROW_NAMES.get(paired["reference"], paired["reference"])
        lines += [f"### {ref} minus each method, case by case", "",
                  "Mean over seeds of each seed's mean paired difference (± standard error over seeds); in "
                  "brackets, the seeds whose bootstrap 95 % interval lies above zero.", "",
                  "| method | hit score difference | IoU difference | Dice difference |", "|---|---|---|---|"]
        for other, row in paired["against"].items():
            cells = [f"{_fmt(row[k]['difference'])} ({row[k]['ci95_above_zero']} of {row[k]['of_seeds']})"
                     for k in ("hit", "iou", "dice")]
            lines.append(f"| {ROW_NAMES.get(other, other)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pipeline(config: str, overrides: Sequence[str], seed: int, run: Path, stages: Sequence[str] = ()) -> None:
    cfg_args = ["--config", config, *overrides, f"seed={seed}", f"seeds=[{seed}]", f"out_dir={run}"]
    if stages:
        cfg_args += ["--stages", ",".join(stages)]
    rc = pipeline.main(cfg_args)
    if rc == EXIT_BAD_INPUT:  # the pipeline printed why (e.g. a checkpoint trained with other settings)
        raise ACATInputError(f"the pipeline of seed {seed} refused to run (its message is above)", run)
    if rc != 0:
        raise RuntimeError(f"the pipeline of seed {seed} failed (see {run}/run.log)")


def run_baseline(config: str, overrides: Sequence[str], seed: int, out_dir: Path) -> Path:
    """The baseline stage only of one seed (skipped when complete); returns its run folder."""
    run = out_dir / f"seed_{seed}"
    _pipeline(config, overrides, seed, run, stages=("baseline",))
    return run


def run_seed(config: str, overrides: Sequence[str], seed: int, out_dir: Path, methods: str,
             eval_limit: Optional[int], coverage: str) -> Path:
    """Pipeline, export and evaluation of one seed; returns its run folder. Complete parts are skipped."""
    run = out_dir / f"seed_{seed}"
    _pipeline(config, overrides, seed, run)
    # Exporting is cheap and deterministic (same weights -> same files -> same sha256), so it is always
    # redone; the evaluation, which is not cheap, is kept while the bundle's sha256 and the evaluation's
    # settings (hit rule, --eval-limit, --coverage, methods) are unchanged.
    bundle = run / "bundle"
    export_cli.export(run, bundle, bundle_id=f"reproduce-seed{seed}", overwrite=True,
                      command=f"python -m training.export {run} --out {bundle} --id reproduce-seed{seed} "
                              "--overwrite")
    cfg = load_config(config, [*overrides])
    sha256 = load_bundle(bundle).sha256()
    for folder, kwargs in (("evaluation", {"methods": methods}),
                           ("evaluation_acat_classifier", {"methods": "counterfactual", "saliency_classifier": "acat"})):
        evaluation = run / folder / "metrics.json"
        previous: dict = json.loads(evaluation.read_text()) if evaluation.is_file() else {}
        settings = previous.get("settings", {})
        # kept only when it scored these weights, with this hit rule, on the same scans, with the same methods
        same = (previous.get("bundle", {}).get("sha256") == sha256 and settings.get("hit") == evaluate_cli.HIT_RULE
                and settings.get("overlap") == evaluate_cli.OVERLAP_RULE
                and settings.get("success") == evaluate_cli.SUCCESS_RULE
                and previous.get("dataset", {}).get("limit") == eval_limit and settings.get("coverage") == coverage
                and settings.get("methods") == evaluate_cli.parse_methods(kwargs["methods"]))
        if not same:
            evaluate_cli.evaluate(bundle, cfg.data.path, out_dir=evaluation.parent, limit=eval_limit,
                                  coverage=coverage, overwrite=True, device=cfg.device, progress=False, **kwargs)
    return run


def reproduce(config: str, overrides: Sequence[str], seeds: Sequence[int], out: Path, *, methods: str,
              eval_limit: Optional[int] = None, coverage: str = "all", command: str = "",
              acat_seeds: Optional[Sequence[int]] = None) -> dict:
    """``seeds``: every seed trains the baseline; ``acat_seeds`` (default: all of them) also run the rest
    of Algorithm 1 (autoencoder, saliency maps, ACAT) and the saliency evaluation."""
    cfg = load_config(config, overrides)  # validates the config and overrides before any work
    if cfg.data.source != "phantom":
        raise ACATInputError("the reproduction table needs a phantom manifest (data.source=phantom): the "
                             "localisation metrics need lesion masks", cfg.data.path)
    acat_seeds = list(seeds) if acat_seeds is None else list(acat_seeds)
    if not acat_seeds or any(s not in seeds for s in acat_seeds):
        raise ACATInputError("--acat-seeds must be a non-empty subset of --seeds")
    manifest = Path(cfg.data.path)
    out_dir = Path(cfg.out_dir)
    task = BUNDLE_TASK[cfg.data.task]
    labels = list(LABELS[task])
    group_column = evaluate_cli.GROUP_COLUMN.get(task)
    per_seed = []
    for seed in seeds:
        if seed in acat_seeds:
            run = run_seed(config, overrides, seed, out_dir, methods, eval_limit, coverage)
            evaluation = json.loads((run / "evaluation" / "metrics.json").read_text())
            by_acat = json.loads((run / "evaluation_acat_classifier" / "metrics.json").read_text())
            per_seed.append({"seed": seed, "run": str(run), "bundle_sha256": evaluation["bundle"]["sha256"],
                             "classification": seed_classification(run, manifest, labels, group_column),
                             "evaluation": {"methods": evaluation["methods"],
                                            "n_cases": evaluation["dataset"]["n_cases"],
                                            "chance": evaluation.get("chance"),
                                            "contrast": evaluation.get("contrast"), "paired": evaluation.get("paired"),
                                            "settings": evaluation["settings"]},
                             "evaluation_acat_classifier": {"methods": by_acat["methods"],
                                                            "n_cases": by_acat["dataset"]["n_cases"],
                                                            "settings": by_acat["settings"]}})
        else:
            run = run_baseline(config, overrides, seed, out_dir)
            per_seed.append({"seed": seed, "run": str(run),
                             "classification": seed_classification(run, manifest, labels, group_column,
                                                                   models=("baseline",))})
    report = {"benchmark": NOTICE, "task": task, "labels": labels, "command": command,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "versions": {"acat": acat_version, "torch": torch.__version__, "python": platform.python_version(),
                           "numpy": np.__version__},
              "manifest": str(manifest), "manifest_sha256": sha256_file(manifest), "seeds": list(seeds),
              "acat_seeds": acat_seeds, "group_column": group_column,
              "n_test": per_seed[0]["classification"]["baseline"]["n"],
              "summary": summarise(per_seed, task), "per_seed": per_seed}
    report = _json_safe(report)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "reproduction.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    with atomic_path(out / "reproduction.md", overwrite=True) as tmp:
        tmp.write_text(render_markdown(report), encoding="utf-8")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (training/configs/*_cpu.yaml)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--acat-seeds", help="the seeds that also run the autoencoder, saliency and ACAT stages and "
                        "the saliency evaluation (default: every seed; the others train the baseline only)")
    parser.add_argument("--out", required=True, help="folder for reproduction.json and reproduction.md")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"saliency methods (default {DEFAULT_METHODS})")
    parser.add_argument("--eval-limit", type=int, help="evaluate only the first N test scans")
    parser.add_argument("--coverage", choices=["sampled", "all"], default="all",
                        help="slices the saliency methods see (training.evaluate; default all, as acat explain)")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of internal errors")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (data.path=..., out_dir=...)")
    args = parser.parse_intermixed_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        acat_seeds = None if args.acat_seeds is None else [int(s) for s in args.acat_seeds.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        print(f"{PROG}: error: --seeds must be comma-separated integers, e.g. 0,1,2", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        report = reproduce(args.config, args.overrides, seeds, Path(args.out), methods=args.methods,
                           eval_limit=args.eval_limit, coverage=args.coverage, command=f"{PROG} {shlex.join(argv)}",
                           acat_seeds=acat_seeds)
    except ACATInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, exit 1
        if args.verbose:
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}", file=sys.stderr)
        return EXIT_INTERNAL
    acc = report["summary"]["classification"]
    print(f"{NOTICE}: test accuracy baseline {_fmt(acc['baseline']['accuracy'])}, "
          f"ACAT {_fmt(acc['acat']['accuracy'])}; wrote {Path(args.out) / 'reproduction.md'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
