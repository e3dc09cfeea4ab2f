"""`training.evaluate` end to end: a tiny hand-made phantom dataset, a random bundle, all five methods."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ACATLogic.errors import ACATInputError
from ACATLogic.bundle import load_bundle
from ACATLogic.volume import CTVolume
from ACATLogic.explain import Explainer
from ACATLogic.metrics import contrast_map, counterfactual_success, iou_dice, saliency_hit
from training.evaluate import (DISPLAY_NAMES, HIT_RULE, NOTICE, OVERLAP_RULE, SUCCESS_RULE, counterfactual_quality,
                               evaluate, main, parse_methods)
from ACATData.phantom.common import BRAIN_LABELS, TERRITORIES, PhantomCase
from ACATData.phantom.io import load_case, read_manifest, write_case, write_manifest

from bundles import make_random_bundle

REPO = Path(__file__).resolve().parents[1]
SHAPE_KJI = (24, 48, 40)
SPACING_IJK_MM = (4.0, 4.0, 5.0)
ALL_METHODS = ["counterfactual", "latent-shift", "gradient", "gradcam", "integrated-gradients"]


def _head(label: int, lesions: list[str], seed: int) -> PhantomCase:
    """An elliptic "head": 1000 HU skull, 35 HU brain in six territories, dark 10 HU balls as lesions.

    The grid is LPS-aligned, so i runs towards patient Left: territories left of the midline have the
    larger i. Front to back (j runs Posterior): ACA, MCA, PCA thirds.
    """
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE_KJI), indexing="ij")
    cj, ci, rj, ri = 23.5, 19.5, 21.0, 17.0
    r = np.sqrt(((j - cj) / rj) ** 2 + ((i - ci) / ri) ** 2)
    inside_slices = (k >= 2) & (k <= 21)
    head = inside_slices & (r <= 1.0)
    brain = inside_slices & (r <= 0.85)
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE_KJI, -1000.0, np.float32)
    hu[head] = 1000.0
    hu[brain] = 35.0 + rng.normal(0, 3, brain.sum())
    left = i > ci
    third = np.where(j < cj - rj / 3, 0, np.where(j > cj + rj / 3, 2, 1))  # 0 anterior, 1 middle, 2 posterior
    territory = np.where(third == 0, 3, np.where(third == 1, 1, 5)) + (~left)  # ACA 3/4, MCA 1/2, PCA 5/6
    territory_map = np.where(brain, territory, 0).astype(np.uint8)
    lesion_mask = np.zeros(SHAPE_KJI, np.uint8)
    ids = {name: tid for tid, name in TERRITORIES.items()}
    for n, name in enumerate(lesions, start=1):
        kk, jj, ii = (np.mean(a[territory_map == ids[name]]) for a in (k, j, i))
        ball = ((k - kk) / 1.5) ** 2 + ((j - jj) / 3) ** 2 + ((i - ii) / 3) ** 2 <= 1
        lesion_mask[ball & brain] = n
        hu[ball & brain] = 10.0
    volume = CTVolume(hu, SPACING_IJK_MM, (0.0, 0.0, 0.0), np.eye(3), {"modality": "CT"})
    return PhantomCase(volume, lesion_mask, brain.astype(np.uint8), territory_map, label, BRAIN_LABELS[label])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Four cases: three in the test split (left lesion, two lesions "both", healthy), one in train."""
    root = tmp_path_factory.mktemp("phantom")
    specs = [("case-a", "test", 1, ["MCA_left"], "IS-2", "nrrd"),
             ("case-b", "test", 3, ["MCA_left", "PCA_right"], "IS-1;IS-3", "nrrd"),
             ("case-c", "test", 0, [], "", "npz"),
             ("case-d", "train", 2, ["ACA_right"], "IS-4", "nrrd")]
    rows = []
    for n, (case_id, split, label, lesions, size_class, fmt) in enumerate(specs):
        paths = write_case(_head(label, lesions, seed=n), root, case_id, fmt)
        rows.append({"case_id": case_id, "task": "brain_stroke", "split": split, "label": label,
                     "label_name": BRAIN_LABELS[label], "size_class": size_class,
                     "lesion_territories": ";".join(lesions), **paths})
    return write_manifest(root, rows, {"what": "SIMULATED test data"})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "b", size=32, slices=3, steps=2)


@pytest.fixture(scope="module")
def report(dataset, bundle, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval") / "out"
    return evaluate(bundle, dataset, ALL_METHODS, out, device="cpu", coverage="sampled"), out


def test_parse_methods_accepts_both_spellings():
    assert parse_methods("latent-shift,gradient,latent_shift") == ["latent-shift", "gradient"]
    with pytest.raises(ValueError, match="unknown method 'saliency'"):
        parse_methods("saliency")


def test_metrics_json_is_the_report_and_self_consistent(report, dataset, bundle):
    result, out = report
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert result["benchmark"] == NOTICE
    assert set(result) >= {"command", "date", "versions", "bundle", "dataset", "settings", "classification",
                           "methods", "cases"}
    assert result["bundle"]["sha256"] == load_bundle(bundle).sha256()
    assert result["dataset"]["n_cases"] == 3 and result["dataset"]["manifest"] == str(dataset)
    settings = dict(result["settings"])
    options = settings.pop("options")
    assert settings.pop("display_names") == {m: DISPLAY_NAMES[m] for m in ALL_METHODS}
    assert settings == {"methods": ALL_METHODS, "device": "cpu", "coverage": "sampled", "steps": 2,
                        "success_probability": 0.2, "warmup": True, "hit": HIT_RULE, "overlap": OVERLAP_RULE,
                        "success": SUCCESS_RULE, "saliency_classifier": "baseline"}
    # what each method ran, as ExplainOptions fields (None: the card's or the variant's default)
    assert list(options) == ALL_METHODS
    assert options["counterfactual"]["method"] == "counterfactual" and options["gradcam"]["method"] == "gradcam"
    assert all(o["coverage"] == "sampled" for o in options.values())
    cases = result["cases"]
    assert [c["case_id"] for c in cases] == ["case-a", "case-b", "case-c"]  # the train case is left out
    assert [c["has_lesion"] for c in cases] == [True, True, False]
    assert cases[2]["lesion_voxels"] == 0 and cases[0]["lesion_voxels"] > 10
    # the line no model needs: each lesion case's organ voxels ranked by their distance from the organ median
    for c in cases[:2]:
        loaded = load_case(dataset, next(r for r in read_manifest(dataset) if r["case_id"] == c["case_id"]))
        contrast = contrast_map(loaded.volume.voxels_hu, loaded.organ_mask)
        assert c["contrast"]["iou"] == pytest.approx(iou_dice(contrast, loaded.lesion_mask, loaded.organ_mask)[0])
        ids = [k for k, name in TERRITORIES.items() if name in loaded.row["lesion_territories"].split(";")]
        assert c["contrast"]["hit"] == saliency_hit(contrast, loaded.territory_map, ids)
    assert "contrast" not in cases[2]
    assert result["contrast"]["n"] == 2
    assert result["contrast"]["mean_iou"] == pytest.approx(np.mean([c["contrast"]["iou"] for c in cases[:2]]))

    for method, row in result["methods"].items():
        per_case = [c["methods"][method] for c in cases]
        hits = [r["hit"] for r in per_case]
        assert hits[2] is None and all(isinstance(h, bool) for h in hits[:2])  # healthy scans are not scored
        assert row["hits"] + row["misses"] == 2
        assert row["hit_score"] == pytest.approx(np.mean(hits[:2]))
        assert row["n_overlap_cases"] == 2 and per_case[2]["iou"] is None
        assert row["mean_iou"] == pytest.approx(np.mean([r["iou"] for r in per_case[:2]]))
        assert row["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in per_case[:2]]))
        for r in per_case[:2]:
            # top-n keeps exactly as many voxels as the lesion has, so Dice = 2 IoU / (1 + IoU)
            assert 0 <= r["iou"] <= 1 and r["dice"] == pytest.approx(2 * r["iou"] / (1 + r["iou"]))
        assert row["time_per_scan_s"] == pytest.approx(np.mean([r["time_s"] for r in per_case]))
        assert all(0 < r["map_time_s"] <= r["time_s"] + 1e-3 for r in per_case)  # timings are rounded
        assert ("counterfactual" in row) == (method == "counterfactual")


def test_classification_and_counterfactual_quality(report):
    result, _ = report
    cases = result["cases"]
    c = result["classification"]
    labels = [x["label"] for x in cases]
    predicted = [x["predicted"] for x in cases]
    assert c["n"] == 3 and np.sum(c["confusion_matrix"]) == 3
    assert c["accuracy"] == pytest.approx(np.mean(np.array(labels) == np.array(predicted)))
    for x in cases:
        assert c["confusion_matrix"][x["label"]][x["predicted"]] >= 1
        assert x["predicted_name"] == max(x["probabilities"], key=x["probabilities"].get)
    # case-b's two lesions count in IS-1 and IS-3; the healthy case is in no size class
    assert {g: r["n"] for g, r in c["accuracy_by_group"].items()} == {"IS-1": 1, "IS-2": 1, "IS-3": 1}
    assert c["accuracy_by_group"]["IS-2"]["accuracy"] == float(predicted[0] == labels[0])

    quality = [x["methods"]["counterfactual"]["counterfactual"] for x in cases]
    assert quality[2] == {"applicable": False, "reason": "no lesion"}
    applicable = [q for q in quality if q["applicable"]]
    for x, q in zip(cases[:2], quality[:2]):
        assert q["applicable"] == (x["predicted"] != 0)
    summary = result["methods"]["counterfactual"]["counterfactual"]
    assert summary["n"] == len(applicable)
    assert summary["successes"] == sum(q["success"] for q in applicable)
    for q in applicable:
        assert (q["steps_to_success"] is not None) == q["success"]
        assert q["steps_to_success"] is None or 0 <= q["steps_to_success"] <= 2
        assert q["latent_l1"] >= 0 and q["mean_abs_change_outside_lesion_hu"] >= 0


def test_per_case_numbers_match_an_independent_run(report, dataset, bundle):
    """Case a again, through the Explainer directly: the same hit and IoU, and Fig. 5's measures by hand.

    A random bundle calls every scan healthy, so the harness never finds a counterfactual to score;
    here the original class is given explicitly ("left", the true class) to exercise that path.
    """
    result, _ = report
    case = load_case(dataset, read_manifest(dataset)[0])
    explanation = Explainer(load_bundle(bundle), device="cpu").explain(case.volume, method="counterfactual",
                                                                        coverage="sampled")
    recorded = result["cases"][0]["methods"]["counterfactual"]
    assert recorded["hit"] == saliency_hit(explanation.saliency.voxels_hu, case.territory_map, [1])  # MCA_left
    assert recorded["iou"] == pytest.approx(iou_dice(explanation.saliency.voxels_hu, case.lesion_mask, case.organ_mask)[0])

    # the prediction that is explained decides whether there is a counterfactual to score
    read_as = dict(explanation.explained_probabilities)
    explanation.explained_probabilities = {**read_as, "none": 0.1, "left": 0.7, "right": 0.1, "both": 0.1}
    quality = counterfactual_quality(explanation, case, has_lesion=True)
    expected = counterfactual_success(explanation.trajectory["none"], "left")
    assert quality["applicable"] and quality["original"] == "left" and quality["success"] == expected.success
    assert quality["steps_to_success"] == expected.steps_to_success
    assert quality["before_any_step"] == expected.before_any_step
    assert quality["latent_l1"] == explanation.latent_l1["none"] >= 0
    outside = (case.lesion_mask == 0) & (case.organ_mask == 1)
    change = np.abs(explanation.counterfactuals["none"].voxels_hu - case.volume.voxels_hu)[outside]
    assert quality["mean_abs_change_outside_lesion_hu"] == pytest.approx(change.mean(), rel=1e-5)
    explanation.explained_probabilities = {**read_as, "none": 0.7, "left": 0.1, "right": 0.1, "both": 0.1}
    assert counterfactual_quality(explanation, case, has_lesion=True) == {
        "applicable": False, "reason": "the explained classifier reads it as none"}
    assert counterfactual_quality(explanation, case, has_lesion=False) == {"applicable": False, "reason": "no lesion"}


def test_metrics_md_header_and_tables(report, dataset, bundle):
    result, out = report
    md = (out / "metrics.md").read_text()
    head = md[:md.index("## ")]
    assert head.startswith(f"# ACAT evaluation: {NOTICE}") and f"**{NOTICE}.**" in head
    assert result["command"] in head and "python -m training.evaluate --bundle" in result["command"]
    assert result["date"] in head and "acat 0.1.0" in head and "torch " in head and "python " in head
    assert "random-brain_stroke" in head and str(dataset) in head and "3 cases" in head
    for sha in load_bundle(bundle).sha256().values():
        assert sha in head
    localisation = md[md.index("## Localisation"):].split("\n## ")[0].splitlines()
    for method in result["methods"]:
        assert sum(line.startswith(f"| {DISPLAY_NAMES[method]} |") for line in localisation) == 1
    assert any(line.startswith("| Chance") for line in localisation)
    contrast = next(line for line in localisation if line.startswith("| No model:")).split("|")
    assert contrast[3].strip() == f"{result['contrast']['mean_iou']:.3f}"
    cf_row = next(line for line in localisation if line.startswith(f"| {DISPLAY_NAMES['counterfactual']} |"))
    assert cf_row.split("|")[-2].strip() != "-"  # the success rate is filled for the counterfactual only
    assert "## Classification" in md and "| IS-1 | 1 |" in md and "## Counterfactual quality" in md


def test_limit_and_methods_from_the_command_line(dataset, bundle, tmp_path, capsys):
    out = tmp_path / "limited"
    argv = ["--bundle", str(bundle), "--data", str(dataset), "--methods", "gradient,latent-shift",
            "--out", str(out), "--limit", "1", "--device", "cpu", "-q"]
    assert main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert [c["case_id"] for c in result["cases"]] == ["case-a"]
    assert list(result["methods"]) == ["gradient", "latent-shift"]
    assert result["command"].endswith("--limit 1 --device cpu -q")
    # a second run into the same folder is refused without --overwrite: earlier results are never lost
    assert main(argv) == 2
    assert "already holds metrics.json" in capsys.readouterr().err
    assert main(argv[:-1] + ["--split", "train", "--overwrite", "-q"]) == 0
    assert [c["case_id"] for c in json.loads((out / "metrics.json").read_text())["cases"]] == ["case-d"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.evaluate", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.mark.parametrize("which", ["bundle", "manifest"])
def test_missing_paths_exit_2_with_one_line(which, dataset, bundle, tmp_path):
    args = {"bundle": str(bundle), "manifest": str(dataset)}
    args[which] = str(tmp_path / "missing")
    proc = _run("--bundle", args["bundle"], "--data", args["manifest"], "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m training.evaluate: error:"), proc.stderr
    assert "Traceback" not in proc.stderr and "missing" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_one_line_errors(dataset, bundle, tmp_path, capsys):
    base = ["--bundle", str(bundle), "--data", str(dataset), "--out", str(tmp_path / "out")]
    assert main(base + ["--methods", "gradient,occlusion"]) == 2
    assert main(base + ["--split", "validation"]) == 2
    assert main(base + ["--limit", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("python -m training.evaluate: error:") for e in errors)
    assert "'occlusion'" in errors[0] and "no case in split 'validation'" in errors[1]
    assert not (tmp_path / "out").exists()
    lung = make_random_bundle(tmp_path / "lung", task="lung_covid", size=32, slices=3)
    assert main(["--bundle", str(lung)] + base[2:]) == 2
    assert "label 3 is out of range (0..1: normal, covid19)" in capsys.readouterr().err


def test_counterfactual_maps_of_the_acat_classifier(dataset, bundle, tmp_path, capsys):
    """--saliency-classifier acat (paper Sec. 4.4): the counterfactual method explains ACAT, not the baseline."""
    out = tmp_path / "acat"
    assert main(["--bundle", str(bundle), "--data", str(dataset), "--methods", "counterfactual,gradient",
                 "--out", str(out), "--limit", "1", "--device", "cpu", "--saliency-classifier", "acat", "-q"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["settings"]["saliency_classifier"] == "acat"
    assert "counterfactual methods explain the acat classifier" in (out / "metrics.md").read_text()
    case = load_case(dataset, read_manifest(dataset)[0])
    explainer = Explainer(load_bundle(bundle), device="cpu")
    by_acat = explainer.explain(case.volume, method="counterfactual", coverage="sampled", saliency_classifier="acat")
    by_baseline = explainer.explain(case.volume, method="counterfactual", coverage="sampled")
    recorded = result["cases"][0]["methods"]["counterfactual"]
    assert recorded["iou"] == pytest.approx(iou_dice(by_acat.saliency.voxels_hu, case.lesion_mask, case.organ_mask)[0])
    assert not np.allclose(by_acat.saliency.voxels_hu, by_baseline.saliency.voxels_hu)
    # the gradient has no ACAT variant: it still explains the baseline
    gradient = explainer.explain(case.volume, method="gradient", coverage="sampled")
    assert result["cases"][0]["methods"]["gradient"]["iou"] == pytest.approx(
        iou_dice(gradient.saliency.voxels_hu, case.lesion_mask, case.organ_mask)[0])
    # a bundle without an ACAT classifier cannot do it: one line, exit 2
    plain = make_random_bundle(tmp_path / "plain", size=32, slices=3, steps=2, with_acat=False)
    capsys.readouterr()
    assert main(["--bundle", str(plain), "--data", str(dataset), "--out", str(tmp_path / "x"), "--device", "cpu",
                 "--saliency-classifier", "acat", "-q"]) == 2
    assert "needs a bundle with an ACAT classifier" in capsys.readouterr().err


def test_settings_are_named_explain_options_and_bad_ones_are_one_line_errors(dataset, bundle, tmp_path, capsys):
    from training.evaluate import parse_setting

    assert parse_setting("sparse:sparsity=0.3,stop_probability=0.9") == (
        "sparse", ("sparse: counterfactual, sparsity=0.3, stop_probability=0.9",
                   {"sparsity": 0.3, "stop_probability": 0.9}))
    assert parse_setting("igc:method=integrated_gradients,output=class")[1][1] == {
        "method": "integrated_gradients", "output": "class"}
    base = ["--bundle", str(bundle), "--data", str(dataset), "--out", str(tmp_path / "out")]
    assert main(base + ["--setting", "x:alpha=much", "--methods", "x"]) == 2
    assert main(base + ["--setting", "gradient:alpha=1"]) == 2
    assert main(base + ["--setting", "y:sparsity=1.5", "--methods", "y"]) == 2
    assert main(base + ["--setting", "z:early_stop=false", "--methods", "z,w"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("python -m training.evaluate: error:") for e in errors)
    assert "alpha='much'" in errors[0] and "built-in method" in errors[1]
    assert "sparsity must be in [0, 1)" in errors[2] and "unknown method 'w'" in errors[3]
    assert not (tmp_path / "out").exists()


def test_times_input_scores_the_map_multiplied_by_the_windowed_input(dataset, bundle, tmp_path):
    """The diagnostic key: the same gradient map, scored once as it is and once times the windowed input."""
    from training.evaluate import parse_setting

    assert parse_setting("gx:method=gradient,times_input=true") == (
        "gx", ("gx: method=gradient, times_input=true", {"method": "gradient", "times_input": True}))
    with pytest.raises(ACATInputError, match="times_input='yes'"):
        parse_setting("gx:times_input=yes")
    result = evaluate(bundle, dataset, ["gradient", "gx"], tmp_path / "out", device="cpu", coverage="sampled",
                      settings=["gx:method=gradient,times_input=true"], progress=False)
    assert result["settings"]["options"]["gx"]["method"] == "gradient"
    loaded_bundle = load_bundle(bundle)
    case = load_case(dataset, read_manifest(dataset)[0])
    plain = Explainer(loaded_bundle, device="cpu").explain(case.volume, method="gradient", coverage="sampled")
    weighted = plain.saliency.voxels_hu * loaded_bundle.spec.window(case.volume.voxels_hu)
    recorded = result["cases"][0]["methods"]
    assert recorded["gradient"]["iou"] == pytest.approx(
        iou_dice(plain.saliency.voxels_hu, case.lesion_mask, case.organ_mask)[0])
    assert recorded["gx"]["iou"] == pytest.approx(iou_dice(weighted, case.lesion_mask, case.organ_mask)[0])
    assert recorded["gx"]["hit"] == saliency_hit(weighted, case.territory_map, [1])
    assert not np.allclose(weighted, plain.saliency.voxels_hu)  # the weighting changed the map it scores
