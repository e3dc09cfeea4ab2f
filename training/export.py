"""Turn a finished run into a model bundle the Slicer module and ``acat explain`` load.

::

    python -m training.export runs/brain-cpu --out Resources/Models/brain-cpu --version 0.1.0

The bundle (`ACATLogic.bundle.save_bundle`): baseline, autoencoder and ACAT weights as safetensors, and
a card holding the input spec, the counterfactual parameters the saliency stage used, the data the models
saw, and every validation and test metric of done.json - each with the exact command line that
produced it (recorded by train / pipeline in done.json and commands.jsonl; absolute paths written relative
to the run, the data and the bundle: `training.portable`), the task's name, classes and healthy class from the
training config, and a README.md in the Hugging Face model-card layout. The bundle is loaded back
(`load_bundle`: sha256, names and shapes checked) before the command reports success.

Refused: an autoencoder that fails `training.autoencoder_fitness.GATE` on the validation split (the
classifier must read D(E(x)) as it reads x, and the reconstructions must keep the lesions); its three
numbers go into the card's metrics.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

import yaml

from ACATLogic.bundle import load_bundle, save_bundle
from ACATLogic.errors import EXIT_BAD_INPUT, ACATInputError
from ACATLogic.options import RESOLVED_KEYS

from . import autoencoder_fitness
from .checkpoint import atomic_write_text, load_weights, sha256_file
from .config import InputConfig
from .manifest import is_simulated
from .model_card import hub_front_matter, slug
from .portable import dataset_folder, portable
from .run_folder import RunFolder, command_line, digest

BUNDLE_TASK = {"brain": "brain_stroke", "lung": "lung_covid"}


def _done(run: RunFolder, stage: str) -> dict:
    done = run.read_done(stage)
    if done is None:
        raise ACATInputError(f"the {stage} stage has not finished in this run (no {stage}/done.json); "
                             "run python -m training.pipeline first", run.root)
    return done


def card_metrics(run: RunFolder, roles: dict[str, str]) -> list[dict]:
    """One entry per finite validation / test metric of each exported stage, with its command line."""
    metrics = []
    for role, stage in roles.items():
        done = _done(run, stage)
        for split in ("test", "val"):
            for name, value in done.get("metrics", {}).get(split, {}).items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    metrics.append({"name": name, "value": float(value), "split": split, "model": role,
                                    "command": done["command"]})
    return metrics


def dataset_command(manifest_path) -> str:
    """The command that built a phantom dataset (its manifest.json), or "" for other data."""
    import json

    description = Path(manifest_path).with_name("manifest.json")
    try:
        return str(json.loads(description.read_text(encoding="utf-8")).get("command", ""))
    except (OSError, ValueError):
        return ""


def render_model_readme(card: dict, export_command: str = "", data_command: str = "", *, simulated: bool = True,
                        datasets=()) -> str:
    """The bundle's model card in words (README.md): what it is, on what data, how well, made how - in the
    Hugging Face model-card layout (YAML front matter, then the text). "SIMULATED" only for simulated data."""
    spec = card["input"]
    data = ("Trained on SIMULATED data (the phantom benchmark): real CT anatomy with simulated lesions; its "
            "numbers say nothing about patients." if simulated else
            "Its numbers come from the data named below; check them on your own data before relying on them.")
    healthy = card["labels"][card.get("healthy_index", 0)]
    lines = [hub_front_matter(card, simulated=simulated, datasets=datasets).rstrip("\n"), "",
             f"# {card['id']} (version {card['version']})", "",
             f"**{card['intended_use']}** {data}", "",
             f"- task: `{card['task']}`; classes: {', '.join(card['labels'])} (healthy / negative: {healthy})",
             f"- input: {spec['slices']} axial slices of {spec['size'][0]} x {spec['size'][1]} pixels, HU window "
             f"(level, width) {tuple(spec['hu_window'])}, alignment `{spec['alignment']}`, maps restricted to "
             + (f"the {spec['organ']} found in the CT" if spec.get("organ", "none") != "none"
                and card.get("explanation", {}).get("organ_mask") else "no organ"),
             "- models: " + "; ".join(f"{role} `{m['architecture']}` ({m['weights']})"
                                     for role, m in card["models"].items()),
             f"- explanation defaults: " + ", ".join(f"{k} {v}" for k, v in card["explanation"].items()),
             f"- training data: {card['training_data']}", f"- licence: {card['licence']}", "",
             "## Metrics", "", "| model | split | metric | value |", "|---|---|---|---|"]
    for m in card["metrics"]:
        lines.append(f"| {m['model']} | {m['split']} | {m['name']} | {m['value']:.4f} |")
    commands = ([data_command] if data_command else []) + list(
        dict.fromkeys(m["command"] for m in card["metrics"] if m.get("command")))
    if export_command:
        commands.append(export_command)
    lines += ["", "## Commands that produced it", "",
              "From the repository root, with `RUN` the training run's folder, `DATA` the dataset's and `BUNDLE` "
              "this folder:", "", "```sh", *commands, "```", "",
              "Method: Fontanella et al., \"ACAT: Adversarial Counterfactual Attention for Classification and "
              "Detection in Medical Imaging\", ICML 2023.", ""]
    return "\n".join(lines)


def _organ(run: RunFolder, saliency_done: dict) -> str:
    """The organ the run's maps are restricted to: the saliency stage's (its fingerprint holds it; the others'
    leave it out, `run_folder.stage_config`), else the one the baseline's config named ("" = the default)."""
    organ = saliency_done.get("fingerprint", {}).get("config", {}).get("input", {}).get("organ")
    if organ is not None:
        return organ
    try:
        resolved = yaml.safe_load((run.stage_dir("baseline") / "config.yaml").read_text(encoding="utf-8"))
        return str(resolved.get("input", {}).get("organ", "") or "")
    except (OSError, yaml.YAMLError, AttributeError):
        return ""


def export(run_dir, out, *, bundle_id: Optional[str] = None, version: str = "0.1.0", licence: str = "Apache-2.0",
           description: str = "", overwrite: bool = False, include_acat: bool = True,
           command: Optional[str] = None, require_fit: bool = True) -> Path:
    """Write the bundle of ``run_dir`` to ``out``; returns ``out``. Raises `ACATInputError`.

    ``require_fit=False`` (`training.evaluate --run` only, into a temporary folder; not offered by the
    command line) writes the bundle whatever the autoencoder gate says; the card still holds the numbers."""
    run = RunFolder(Path(run_dir))
    if not run.root.is_dir():
        raise ACATInputError("no such run folder", run.root)
    roles = {"baseline": "baseline", "autoencoder": "autoencoder"}
    if include_acat:
        roles["acat"] = "acat"
    models = {}
    for role, stage in roles.items():
        done = _done(run, stage)
        weights = run.weights(stage)
        if not weights.is_file() or sha256_file(weights) != done["sha256"]:
            raise ACATInputError(f"the {stage} weights are missing or differ from done.json", weights)
        models[role] = load_weights(weights).eval()
    fitness_numbers = autoencoder_fitness.measure_run(run.root)
    unfit = autoencoder_fitness.problems(fitness_numbers)
    if unfit and require_fit:
        raise ACATInputError("the autoencoder is not fit for counterfactuals on the validation split: "
                             + "; ".join(unfit) + " - train it longer (autoencoder.epochs, autoencoder.patience) "
                             "or give it more capacity (model.autoencoder_config), then export again", run.root)
    baseline_done = _done(run, "baseline")
    trained_from = baseline_done["fingerprint"]["config"]
    task = trained_from["data"]["task"]
    labels = list(models["baseline"].class_names)
    healthy = trained_from["data"].get("healthy_class") or labels[0]
    data_dir = dataset_folder(trained_from["data"]["path"])
    simulated = trained_from["data"]["source"] == "phantom" or is_simulated(trained_from["data"]["path"])
    here = lambda text: portable(text, run.root, data_dir=data_dir, bundle_dir=out)  # noqa: E731 - no absolute path
    saliency_done = run.read_done("saliency") or {}
    if include_acat and saliency_done:
        made_from = _done(run, "acat").get("fingerprint", {}).get("inputs", {}).get("saliency")
        if made_from != digest(saliency_done.get("fingerprint")):
            raise ACATInputError("ACAT was trained on other saliency maps than the run's (the saliency stage ran "
                                 "again since); run the acat stage (training.pipeline) before exporting", run.root)
    spec = InputConfig(**{**trained_from["input"], "organ": _organ(run, saliency_done)}).spec()
    explanation = {k: v for k, v in saliency_done.get("parameters", {}).items() if k in RESOLVED_KEYS}
    if explanation and "variant" not in explanation:  # a run from before variants: the paper's maps
        explanation["variant"] = "paper"
    data = baseline_done.get("data", {})
    source = trained_from["data"]
    training_data = (f"{source['source']} data {here(source['path'])}: {data.get('train', '?')}/{data.get('val', '?')}/"
                     f"{data.get('test', '?')} scans (train/val/test), {data.get('skipped', 0)} skipped; "
                     f"split seed {source['split_seed']}; training seed {trained_from['seed']}")
    commands = {stage: (run.read_done(stage) or {}).get("command", "") for stage in ("baseline", "autoencoder",
                                                                                     "saliency", "acat")}
    if not description:
        stages = "; ".join(f"{s}: {c}" for s, c in commands.items() if c)
        description = (f"ACAT {task} models ({models['baseline'].registry_name}) trained with training/ "
                       f"(Algorithm 1 of Fontanella et al., ICML 2023). Commands - {stages}")
    fitness_command = f"python -m training.autoencoder_fitness {run.root}"
    metrics = card_metrics(run, roles) + [
        {"name": f"fitness_{name}", "value": float(fitness_numbers[name]), "split": "val", "model": "autoencoder",
         "command": fitness_command}
        for name, _, _ in autoencoder_fitness.GATE if math.isfinite(fitness_numbers[name])]
    metrics = [{**m, "command": here(m["command"])} for m in metrics]
    card_task = BUNDLE_TASK.get(task, task)
    save_bundle(out, models=models, bundle_id=bundle_id or Path(out).name, version=version, task=card_task,
                spec=spec, training_data=training_data, metrics=metrics, licence=licence,
                explanation=explanation, description=here(description), overwrite=overwrite,
                healthy_index=labels.index(healthy))
    bundle = load_bundle(out)  # refuse to report success for a bundle the application could not open
    datasets = [f"acat-phantom-{card_task}" if simulated else slug(data_dir.name if data_dir else task)]
    atomic_write_text(Path(out) / "README.md",
                      render_model_readme(bundle.card, here(command or ""), here(dataset_command(source["path"])),
                                          simulated=simulated, datasets=datasets))
    if command:
        run.record_command(command, "export")
    return Path(out)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the run folder (out_dir of the training config)")
    parser.add_argument("--out", required=True, help="bundle folder, e.g. Resources/Models/brain-cpu")
    parser.add_argument("--id", help="bundle id (default: the --out folder's name)")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--licence", default="Apache-2.0")
    parser.add_argument("--description", default="")
    parser.add_argument("--without-acat", action="store_true", help="export the baseline and autoencoder only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    args = parser.parse_args(argv)
    try:
        out = export(args.run_dir, args.out, bundle_id=args.id, version=args.version, licence=args.licence,
                     description=args.description, overwrite=args.overwrite, include_acat=not args.without_acat,
                     command=command_line("training.export", argv))
    except (ACATInputError, FileExistsError) as exc:
        reason = f"{exc}: the bundle folder exists; pass --overwrite" if isinstance(exc, FileExistsError) else exc
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
