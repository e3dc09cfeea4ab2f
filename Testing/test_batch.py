"""``acat explain --batch`` / a .csv list (`ACATLogic.batch`, `ACATCli.batch`), run as real ``acat`` processes.

Five studies, one broken: four results, one failure line, a summary; a second run skips the four. The studies'
names hold patient names and birth dates (as exported folders often do): none of it may reach a folder name,
a log line or the summary.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from ACATLogic.batch import Study, list_studies, scrub
from ACATLogic.errors import ACATInputError
from ACATLogic.io import write_volume

from bundles import make_random_bundle
from conftest import run_acat
from toy_training import head_volume

NAMES = ["DOE^JOHN_19600101.nrrd", "SMITH_ANNA_19451231.nii.gz", "ROE_RICHARD_19700704", "LEE_KIM_19881111.nrrd",
         "MOE_XAVIER_19990909.nrrd"]
NEEDLES = ["DOE", "JOHN", "SMITH", "ANNA", "ROE", "RICHARD", "LEE_KIM", "MOE", "XAVIER", "19600101", "19451231",
           "19700704", "19881111", "19990909"]
FAST = ["--coverage", "sampled", "--device", "cpu"]


def _leaks(text: str) -> list[str]:
    return [n for n in NEEDLES if n.lower() in text.lower()]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "b", size=32, slices=3, steps=2)


@pytest.fixture
def studies(tmp_path) -> Path:
    """Five studies in one folder: four small head volumes (NRRD, NIfTI), one folder holding no scan."""
    root = tmp_path / "studies"
    root.mkdir()
    for n, name in enumerate(NAMES):
        if "." in name:
            write_volume(head_volume(n % 4, slices=6, size=40, seed=n), root / name)
        else:
            (root / name).mkdir()
            (root / name / "IM0001").write_text("exported notes, not an image\n")
    return root


def _summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _tree_text(out: Path) -> str:
    """Every file and folder name under ``out`` and the text of every JSON/CSV file."""
    parts = []
    for path in sorted(out.rglob("*")):
        parts.append(str(path.relative_to(out)))
        if path.suffix in (".json", ".csv", ".jsonl"):
            parts.append(path.read_text())
    return "\n".join(parts)


def test_a_batch_of_five_with_one_broken_then_a_rerun_that_skips_the_four(studies, bundle, tmp_path):
    out = tmp_path / "results"
    run = run_acat("explain", "--batch", str(studies), "--model", str(bundle), "--out", str(out), *FAST)
    assert run.returncode == 2, run.stderr  # a study failed for bad input: the run says so in its exit code
    failures = [line for line in run.stderr.splitlines() if "failed" in line]
    assert failures == [failures[0]] and failures[0].startswith("acat: study 4 of 5 (study-")  # sorted by name
    assert "no DICOM images found" in failures[0]
    assert "4 done, 0 skipped (already done), 1 failed of 5 studies" in run.stdout

    rows = _summary(out)
    assert [r["index"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["status"] for r in rows] == ["done", "done", "done", "failed", "done"]
    done = [r for r in rows if r["status"] == "done"]
    for row in done:
        report = json.loads((out / row["study"] / "report.json").read_text())
        assert row["prediction"] == report["prediction"]
        assert float(row["p_none"]) == pytest.approx(report["probabilities"]["none"])
        assert float(row["total_s"]) > 0 and float(row["explain_s"]) > 0
    assert rows[3]["error"] and not (out / rows[3]["study"]).exists()
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(r["study"] for r in done) and len(folders) == 4
    # a folder is named by a hash of the study's name, the same in every run
    assert rows[0]["study"] == "study-" + hashlib.sha256(NAMES[0].encode()).hexdigest()[:12]
    lines = (out / "summary.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == [r["status"] for r in rows]
    assert not _leaks(run.stdout + run.stderr) and not _leaks(_tree_text(out))

    reports = {p: p.read_bytes() for p in out.rglob("report.json")}
    again = run_acat("explain", "--batch", str(studies), "--model", str(bundle), "--out", str(out), *FAST, "--json")
    assert again.returncode == 2, again.stderr
    result = json.loads(again.stdout)
    assert result["counts"] == {"done": 0, "skipped": 4, "failed": 1}
    assert [s["status"] for s in result["studies"]] == ["skipped", "skipped", "skipped", "failed", "skipped"]
    assert [r["status"] for r in _summary(out)] == ["skipped", "skipped", "skipped", "failed", "skipped"]
    assert [r["prediction"] for r in _summary(out)] == [r["prediction"] for r in rows]
    assert {p: p.read_bytes() for p in out.rglob("report.json")} == reports  # nothing explained again
    assert len([line for line in again.stderr.splitlines() if "failed" in line]) == 1
    assert not _leaks(again.stdout + again.stderr)

    # other options into the same folder would mix two kinds of results: refused, in one line
    other = run_acat("explain", "--batch", str(studies), "--model", str(bundle), "--out", str(out), *FAST,
                     "--method", "gradient")
    assert other.returncode == 2 and "another model or other options" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    # unless asked to explain every study again: each folder replaced whole
    redo = run_acat("explain", "--batch", str(studies), "--model", str(bundle), "--out", str(out), *FAST,
                    "--method", "gradient", "--overwrite", "--json")
    assert redo.returncode == 2, redo.stderr
    assert [s["status"] for s in json.loads(redo.stdout)["studies"]] == ["done", "done", "done", "failed", "done"]
    assert {json.loads(p.read_text())["method"] for p in out.rglob("report.json")} == {"gradient"}
    assert json.loads((out / "batch.json").read_text())["options"]["method"] == "gradient"


def test_a_csv_list_with_ids_and_two_workers(studies, bundle, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,id,label\n"
                       f"{studies / NAMES[0]},case-a,none\n"
                       f"studies/{NAMES[1]},case b,left\n"
                       f"{studies / NAMES[3]},case-c,none\n")
    out = tmp_path / "results"
    run = run_acat("explain", str(listing), "--model", str(bundle), "--out", str(out), *FAST, "--workers", "2",
                   "--progress-format", "jsonl")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    finished = [e for e in events if e["event"] == "study"]
    assert sorted(e["study"] for e in finished) == ["case-a", "case-c", "case_b"]
    assert events[-1]["event"] == "result" and events[-1]["counts"] == {"done": 3, "skipped": 0, "failed": 0}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["case-a", "case-c", "case_b"]
    rows = _summary(out)
    assert [r["id"] for r in rows] == ["case-a", "case b", "case-c"]
    # the same study explained in one process gives the same prediction
    single = tmp_path / "single"
    one = run_acat("explain", str(studies / NAMES[0]), "--model", str(bundle), "--out", str(single), *FAST, "--json")
    assert one.returncode == 0, one.stderr
    result = json.loads(one.stdout)
    assert result["prediction"] == rows[0]["prediction"]
    assert result["probabilities"]["none"] == pytest.approx(float(rows[0]["p_none"]), abs=1e-5)
    assert "report.json" in result["files"]


def test_listing_studies(tmp_path):
    root = tmp_path / "s"
    (root / "b_series").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.nrrd").write_bytes(b"")
    (root / "notes.txt").write_text("x")
    (root / "c.dcm").write_bytes(b"")
    studies = list_studies(root)
    assert [Path(s.source).name for s in studies] == ["a.nrrd", "b_series", "c.dcm"]
    assert [s.index for s in studies] == [1, 2, 3] and all(s.key.startswith("study-") for s in studies)
    listing = tmp_path / "l.csv"
    listing.write_text("image,case_id,series\nx/a.nrrd,P1,\ny,P1,1.2.3\n")
    with pytest.raises(ACATInputError, match="line 3: study 'P1' is listed twice"):
        list_studies(listing)
    listing.write_text("file\nx\n")
    with pytest.raises(ACATInputError, match="'path' \\(or 'image'\\) column"):
        list_studies(listing)
    listing.write_text("image,series\nx/a.nrrd,\ny,1.2.3\n")
    rows = list_studies(listing)
    assert rows[0].source == str(tmp_path / "x" / "a.nrrd") and rows[1].series == "1.2.3"
    with pytest.raises(ACATInputError, match="no studies here"):
        list_studies(tmp_path / "s" / "b_series")


def test_scrub_replaces_the_input_path_by_the_key(tmp_path):
    study = Study(1, "study-0123456789ab", str(tmp_path / "DOE_JOHN"))
    message = f"{tmp_path / 'DOE_JOHN'}/IM2: damaged DICOM header"
    assert scrub(message, study) == "[study-0123456789ab]/IM2: damaged DICOM header"
    assert scrub(f"{tmp_path / 'DOE_JOHN'}: not CT", study) == "not CT"
