"""The benchmark script (`make bench`, Testing/benchmarks/run_benchmarks.py) in its tiny ``--quick`` mode.

Checks that every section runs and that its JSON holds the fields with sane values. No timing
thresholds: the speed targets are what the benchmark itself measures and reports (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "Testing" / "benchmarks" / "run_benchmarks.py"


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def sane_summary(s) -> bool:
    return (isinstance(s, dict) and s["runs"] >= 1 and s["min"] <= s["median"] <= s["max"]
            and all(math.isfinite(s[k]) and s[k] >= 0 for k in ("median", "min", "max")))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick"], capture_output=True,
                          text=True, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "bench.json").read_text())


def test_prints_markdown_tables_with_a_machine_line(bench):
    out, stdout, report = bench
    assert stdout.startswith("Machine: ") and "torch " in stdout.splitlines()[0]
    for heading in ("### Explain, per case", "### Batched targets", "### Images per batch", "### Methods", "### CPU threads",
                    "### GPU", "### Training throughput", "### Reading a DICOM series", "### Targets"):
        assert heading in stdout, heading
    assert "| case | bundle | read s |" in stdout
    assert "(--quick: the bundles' ACAT classifiers and their input are left out; the baseline predicts.)" in stdout
    assert (out / "bench.md").read_text().strip() == stdout.strip()
    assert not list(out.glob(".bench.json.*")), "the JSON is written atomically: no temporary left"


def test_machine_and_matmul_peak(bench):
    _, _, report = bench
    assert report["quick"] is True and report["errors"] == {}
    m = report["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and m["torch"]
    for peak in report["matmul_peak"].values():
        assert positive(peak["gflops"]) and peak["gflops"] >= peak["median_gflops"] > 0


def test_explain_cases_have_every_stage_memory_and_flops(bench):
    _, _, report = bench
    cases = report["explain"]["cases"]
    assert [c["bundle"] for c in cases] == ["brain-stroke-phantom", "brain-stroke-phantom", "lung-covid-phantom"]
    # --quick leaves the ACAT classifiers out (the baseline predicts) and says so under the table
    assert all(c["classifier"] == "baseline" for c in cases)
    for c in cases:
        for stage in ("read_s", "preprocess_s", "classify_s", "counterfactual_s", "map_back_s", "write_s",
                      "explain_s", "end_to_end_s"):
            assert sane_summary(c["stages_s"][stage]), (c["case"], stage)
        s = {k: v["median"] for k, v in c["stages_s"].items()}
        assert s["counterfactual_s"] < s["explain_s"] < s["end_to_end_s"]
        assert s["end_to_end_s"] == pytest.approx(s["read_s"] + s["explain_s"] + s["write_s"], rel=0.2)
        # a process of its own: more than the volume, far less than the parent's size
        assert 100 < c["peak_rss_mb"]["median"] < 4000
        assert c["steps"] == 2 and c["targets"] == 2  # the healthy-vs-abnormal decision: towards healthy and towards abnormal
        # the defaults stop early: a FLOP count of every step would overstate the rate, so none is given
        assert c["counterfactual_flops"] is None and c["fraction_of_matmul_peak"] is None
        assert c["outputs"] >= 1 + c["targets"]
    assert cases[1]["chunks"] > cases[0]["chunks"]  # the 24-slice case has more chunks than the 12-slice one


def test_the_loop_rate_comes_from_runs_of_every_step(bench):
    """The comparison tables run every step (no early stop), so their FLOP count is the work timed; the target
    "share of the matmul peak" is read from the threads table then, and stays below the peak."""
    _, text, report = bench
    c = report["compare"]
    assert c["counterfactual_flops"] > 1e9
    peak = report["matmul_peak"][max(c["threads"], key=int)]["gflops"]
    rate = c["threads"][max(c["threads"], key=int)]["gflops"]["median"]
    assert 0 < rate < 1.5 * peak  # a rate above the machine's matmul peak would mean uncounted early stops
    sys.path.insert(0, str(SCRIPT.parent))
    from run_benchmarks import targets

    row = next(t for t in targets(report) if t["target"].startswith("counterfactual loop"))
    assert row["value"] == pytest.approx(rate / peak)
    assert "stop early" in text


def test_comparisons(bench):
    _, _, report = bench
    c = report["compare"]
    tb = c["targets_batched"]
    assert sane_summary(tb["batched_s"]) and sane_summary(tb["sequential_s"]) and positive(tb["speedup"]["median"])
    assert tb["max_abs_counterfactual_difference"] < 1e-4  # batching never changes the result
    assert tb["sequential_flops"] >= c["counterfactual_flops"]  # one at a time encodes x once per target
    sizes = c["batch_images"]
    assert sizes["default"]["images"] <= 64 < sizes["4x"]["images"] or sizes["4x"]["images"] == sizes["default"]["images"]
    assert all(sane_summary(v["counterfactual_s"]) and sane_summary(v["gflops"]) for v in sizes.values())
    assert set(c["methods"]) == {"counterfactual", "gradient", "gradcam", "latent_shift"}
    # --quick times the methods without the ACAT classifier (its input alone is 4 targets x 20 steps), and says so
    assert c["classifier"] == "baseline" and report["quick"] is True
    for name, m in c["methods"].items():
        assert sane_summary(m["explain_s"]), name
        if c["quality_source"]:
            assert 0 <= m["hit_score"] <= 1, name
    assert "1" in c["threads"]
    for v in c["threads"].values():
        assert sane_summary(v["counterfactual_s"]) and sane_summary(v["gflops"])


def test_gpu_section_says_no_gpu_without_one(bench):
    _, stdout, report = bench
    import torch

    if torch.cuda.is_available():
        assert report["gpu"]["available"] is True
    else:
        assert report["gpu"] == {"available": False, "reason": "no GPU"}
        assert "### GPU\n\nno GPU" in stdout


def test_training_throughput_and_data_wait(bench):
    _, _, report = bench
    stages = report["training"]["stages"]
    assert set(stages) == {"prepare", "baseline", "autoencoder", "saliency", "acat"}
    for name in ("baseline", "autoencoder", "acat"):
        s = stages[name]
        assert s["batches"] >= 2 and s["scans"] == s["batches"] * report["training"]["batch_size"]
        assert positive(s["scans_per_s"]) and 0 <= s["data_wait_fraction"] < 1
        assert s["loop_s"] <= s["stage_s"]
    assert positive(stages["saliency"]["scans_per_s"]) and positive(stages["prepare"]["scans_per_s"])


def test_reading_compares_with_simpleitk_on_the_same_voxels(bench):
    _, _, report = bench
    r = report["reading"]
    assert r["same_voxels"] is True and r["slices"] == 24
    assert sane_summary(r["ours_s"]) and sane_summary(r["sitk_s"]) and positive(r["ratio"]["median"])


def test_targets_are_reported(bench):
    _, _, report = bench
    names = " ".join(t["target"] for t in report["targets"])
    for word in ("matmul peak", "end to end", "peak memory", "batched", "SimpleITK", "data wait"):
        assert word in names
    assert all(t["met"] in (True, False) for t in report["targets"])
