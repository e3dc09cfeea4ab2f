"""`Explainer` and `acat explain` end to end on the real head CT series (random small bundle)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from ACATLogic import ACATInputError, read_volume
from ACATLogic.bundle import load_bundle
from ACATLogic.errors import Cancelled
from ACATLogic.explain import Explainer

from bundles import make_random_bundle
from conftest import hash_tree, run_acat


@pytest.fixture(scope="module")
def brain_bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "random-brain")


def _same_grid(a, b):
    assert a.voxels_hu.shape == b.voxels_hu.shape
    np.testing.assert_array_equal(a.spacing_mm, b.spacing_mm)
    np.testing.assert_array_equal(a.origin_mm, b.origin_mm)
    np.testing.assert_array_equal(a.direction, b.direction)


def test_a_whitened_map_and_the_acat_input_come_from_one_optimisation(brain_bundle, cranium, monkeypatch):
    """An ACAT bundle trained on unwhitened maps: ``whiten`` changes the map shown, not the counterfactuals,
    so the same optimisation also gives ACAT its input - one run, the same prediction as without whiten."""
    explainer = Explainer(load_bundle(brain_bundle), device="cpu")
    assert explainer.parameters(explainer.trained_options)["whiten"] is False
    runs = []
    original = Explainer._counterfactual

    def counted(self, *args, **kwargs):
        runs.append(args[2]["whiten"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "_counterfactual", counted)
    plain = explainer.explain(cranium, coverage="sampled")  # the card's parameters, as ACAT was trained
    white = explainer.explain(cranium, coverage="sampled", whiten=True)
    assert runs == [False, True]  # one optimisation each
    assert white.classifier == plain.classifier == "acat"
    for label in plain.probabilities:
        assert white.probabilities[label] == pytest.approx(plain.probabilities[label], abs=1e-5)
    assert white.parameters["whiten"] is True
    assert not np.allclose(white.saliency.voxels_hu, plain.saliency.voxels_hu, atol=1e-3)


def test_acat_reads_a_masked_map_as_trained_even_when_the_shown_map_is_not_masked(brain_bundle, cranium):
    """``--no-organ-mask`` changes the map shown, not the input of an ACAT classifier trained on masked maps."""
    explainer = Explainer(load_bundle(brain_bundle), device="cpu")
    assert explainer.parameters(explainer.trained_options)["organ_mask"] is True
    masked = explainer.explain(cranium, coverage="sampled")
    unmasked = explainer.explain(cranium, coverage="sampled", organ_mask=False)
    assert unmasked.parameters["organ_mask"] is False and unmasked.classifier == "acat"
    for label in masked.probabilities:
        assert unmasked.probabilities[label] == pytest.approx(masked.probabilities[label], abs=1e-5)
    outside = masked.saliency.voxels_hu == 0
    assert outside.any() and (unmasked.saliency.voxels_hu[outside] > 0).any()  # the shown map is not masked


def test_explainer_on_real_head_ct(brain_bundle, cranium_series):
    volume = read_volume(cranium_series)
    bundle = load_bundle(brain_bundle)
    calls = []
    result = Explainer(bundle, device="cpu").explain(volume, progress=lambda f, m: calls.append(f))
    assert result.classifier == "acat"
    assert set(result.probabilities) == {"none", "left", "right", "both"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    _same_grid(result.saliency, volume)
    assert 0 <= result.saliency.voxels_hu.min() and result.saliency.voxels_hu.max() <= 1
    # every input slice is covered (interleaved chunks), not only the sampled ones
    from ACATLogic.preprocess import chunk_indices
    assert set(chunk_indices(108, 5).reshape(-1).tolist()) == set(range(108))
    # slices with brain carry the map (the organ mask leaves the skull base and vertex out; a chunk whose
    # counterfactual stopped at step 0 - already read as healthy - adds no change to its slices)
    per_slice = result.saliency.voxels_hu.reshape(108, -1).max(axis=1) > 0
    assert per_slice.mean() > 0.6 and per_slice[40:90].mean() > 0.8
    assert result.parameters["output"] == "decision" and result.parameters["start"] == "image"
    assert set(result.counterfactuals) == {"none", "abnormal"}
    assert result.parameters["saliency_map"] in ("negative", "positive")
    changed = 0
    for cf in result.counterfactuals.values():
        _same_grid(cf, volume)
        # the counterfactual is the input plus the model-space change: at most one window width (80 HU),
        # and the decoder's own reconstruction error never reaches the scan (residual decoding): what lies
        # outside the model's field of view keeps its exact input value
        change = np.abs(cf.voxels_hu - volume.voxels_hu)
        assert change.max() <= 80.0 + 1e-3
        assert (change == 0).mean() > 0.2
        changed += int(change.max() > 0)
    assert changed >= 1  # at least the counterfactual shown did something
    assert set(result.attention) == {"early", "middle", "late", "fused"}
    for mask in result.attention.values():
        _same_grid(mask, volume)
        assert mask.voxels_hu.min() >= 0 and mask.voxels_hu.max() <= 1
    # full-size volumes are made when read (LazyVolumes): the explanation keeps none, two readings agree
    assert type(result.counterfactuals).__name__ == type(result.attention).__name__ == "LazyVolumes"
    again, once_more = result.counterfactuals["none"], result.counterfactuals["none"]
    assert again is not once_more and np.array_equal(again.voxels_hu, once_more.voxels_hu)
    assert "series_selection" not in again.metadata
    assert len(result.slice_weights) == result.preprocessing["chunks"] == 22
    assert len(result.trajectory["none"]) == result.parameters["steps"] + 1 == 4
    assert calls[-1] == 1.0 and calls == sorted(calls)
    assert result.timings["counterfactual_s"] > 0


def test_cancel_raises_and_saliency_classifier_option(brain_bundle, cranium):
    explainer = Explainer(load_bundle(brain_bundle), device="cpu")
    flag = threading.Event()
    flag.set()
    with pytest.raises(Cancelled):
        explainer.explain(cranium, cancel=flag)
    small = cranium.with_voxels(cranium.voxels_hu)  # the same scan, second pass through ACAT itself
    result = explainer.explain(small, saliency_classifier="acat", output="class", targets=["none"],
                               coverage="sampled")
    assert set(result.counterfactuals) == {"none"}
    assert result.parameters["saliency_classifier"] == "acat"
    with pytest.raises(ACATInputError, match="unknown target 'tumour'"):
        explainer.explain(small, output="class", targets=["tumour"])
    with pytest.raises(ACATInputError, match="--targets needs --output class"):
        explainer.explain(small, targets=["none"])
    with pytest.raises(ACATInputError, match="method must be one of"):
        explainer.explain(small, method="occlusion")


def test_acat_explain_cli_writes_every_output(brain_bundle, cranium_series, tmp_path):
    before = hash_tree(cranium_series)
    out = tmp_path / "results"
    result = run_acat("explain", str(cranium_series), "--model", str(brain_bundle), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Prediction:   ")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["saliency.nrrd", "counterfactual_none.nrrd", "counterfactual_abnormal.nrrd",
                            "attention_early.nrrd", "attention_middle.nrrd", "attention_late.nrrd",
                            "attention_fused.nrrd", "overview.png", "report.json"])
    source = read_volume(cranium_series)
    for name in names:
        if name.endswith(".nrrd"):
            _same_grid(read_volume(out / name), source)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["id"] == "random-brain_stroke"
    assert set(report["model"]["sha256"]) == {"baseline", "autoencoder", "acat"}
    assert report["input"]["size_ijk"] == [256, 256, 108]
    assert report["method"] == "counterfactual" and report["parameters"]["alpha"] == 100.0
    assert report["timings_s"]["read_s"] > 0
    png = Image.open(out / "overview.png")
    assert png.format == "PNG" and png.size[0] == 4 * 220
    assert hash_tree(cranium_series) == before
    # a second run into the same folder needs --overwrite
    again = run_acat("explain", str(cranium_series), "--model", str(brain_bundle), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_acat_explain_bad_inputs_exit_2(brain_bundle, tmp_path, dcm):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, needle in (
        ([str(dcm("CT_small.dcm")), "--model", str(brain_bundle)], "only 1 slice"),
        ([str(empty), "--model", str(brain_bundle)], "the folder is empty"),
        ([str(dcm("CT_small.dcm")), "--model", str(tmp_path / "nope")], "no model bundle"),
    ):
        result = run_acat("explain", *args, "--out", str(tmp_path / "o"))
        assert result.returncode == 2, result.stderr
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_lung_bundle_on_ctchest(tmp_path, ctchest_path):
    bundle = load_bundle(make_random_bundle(tmp_path / "lung", task="lung_covid", with_acat=False))
    volume = read_volume(ctchest_path)
    result = Explainer(bundle, device="cpu").explain(volume)
    assert result.classifier == "baseline" and set(result.probabilities) == {"normal", "covid19"}
    _same_grid(result.saliency, volume)
    assert set(result.counterfactuals) == {"normal", "covid19"}  # a two-class task's "abnormal" is its other class
    paper = Explainer(bundle, device="cpu").explain(volume, variant="paper", steps=2)
    assert paper.parameters["output"] == "class" and set(paper.counterfactuals) == {"normal", "covid19"}


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "gradcam", "latent_shift"])
def test_comparison_methods_through_the_explainer(brain_bundle, cranium, method):
    bundle = load_bundle(make_random_bundle(brain_bundle.parent / "no-acat", with_acat=False)) \
        if not (brain_bundle.parent / "no-acat").exists() else load_bundle(brain_bundle.parent / "no-acat")
    result = Explainer(bundle, device="cpu").explain(cranium, method=method, coverage="sampled")
    assert result.method == method and result.counterfactuals == {}
    _same_grid(result.saliency, cranium)
    sal = result.saliency.voxels_hu
    assert np.isfinite(sal).all() and sal.min() >= 0 and sal.max() <= 1
    if sal.max() == 0:  # an untrained model's Grad-CAM can be all negative (ReLU): said, not silent
        assert method == "gradcam" and any("map is empty" in w for w in result.warnings)
        result = Explainer(bundle, device="cpu").explain(cranium, method=method, coverage="sampled", output="class")
        sal = result.saliency.voxels_hu
    assert sal.max() > 0


def test_cli_comparison_method(brain_bundle, cranium_series, tmp_path):
    out = tmp_path / "grad"
    result = run_acat("explain", str(cranium_series), "--model", str(brain_bundle), "--out", str(out),
                      "--method", "gradient", "--coverage", "sampled")
    assert result.returncode == 0, result.stderr
    assert "Method:       gradient" in result.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("attention")) == \
        ["overview.png", "report.json", "saliency.nrrd"]


def test_explain_outputs_hold_no_patient_identity(brain_bundle, cranium_copy, tmp_path):
    import pydicom

    from conftest import sorted_series_files

    for f in sorted_series_files(cranium_copy):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN0042", "19700101"
        ds.save_as(f)
    out = tmp_path / "phi"
    result = run_acat("explain", str(cranium_copy), "--model", str(brain_bundle), "--out", str(out),
                      "--coverage", "sampled", "--output", "class", "--targets", "none")
    assert result.returncode == 0, result.stderr
    for path in out.iterdir():
        data = path.read_bytes()
        if path.suffix == ".nrrd":
            data = data.split(b"\n\n", 1)[0]  # the text header; the rest is compressed voxels
        elif path.suffix == ".png":
            assert b"tEXt" not in data and b"iTXt" not in data  # no text chunks at all
            continue
        for secret in (b"Doe", b"Jane", b"MRN0042", b"19700101"):
            assert secret not in data, (path.name, secret)
    assert all(s not in result.stdout + result.stderr for s in ("Doe", "MRN0042"))


def test_lazy_volumes_make_each_value_when_read():
    """`LazyVolumes`: a read-only mapping whose values are made on each reading, never cached."""
    from ACATLogic.explain import LazyVolumes

    calls = []
    lazy = LazyVolumes({"a": lambda: calls.append("a") or np.ones(3), "b": lambda: np.zeros(2)})
    assert list(lazy) == ["a", "b"] and len(lazy) == 2 and calls == []
    first, second = lazy["a"], lazy["a"]
    assert first is not second and np.array_equal(first, second) and calls == ["a", "a"]
    assert lazy.get("missing") is None and "b" in lazy


def test_cpu_threads_follow_omp_num_threads_then_the_cpus_this_process_may_use(monkeypatch, tmp_path):
    import os

    import torch

    from ACATLogic.explain import cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    for unusable in ("0", "-2", "many", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert cpu_threads() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads() == len(os.sched_getaffinity(0))
    saved = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        bundle = load_bundle(make_random_bundle(tmp_path / "bundle"))
        Explainer(bundle, device="cpu")
        assert torch.get_num_threads() == 1  # a shared machine's limit is kept, not replaced by every core
        Explainer(bundle, device="cpu", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
