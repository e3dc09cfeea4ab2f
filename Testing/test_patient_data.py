"""No patient name, ID, birth date or accession number in anything ACAT writes or shows.

The real head CT series gets distinctive values in every identifying tag (patient name, ID, other IDs,
birth date, accession number, institution, referring physician). Then every output of a run is searched
for them, byte by byte and case-insensitively, decompressed where it is compressed:

* ``acat info`` (text, --json, --verbose), ``acat convert`` to NRRD, ``acat explain`` with --verbose and
  the jsonl progress format: stdout, stderr, the name and bytes of every file written (NRRD headers and
  their gzip payloads, report.json, overview.png);
* the web viewer's session on the same scan: the panel's text (the scan's description, the result card,
  the view choices), every node name in the scene, and the downloaded zip (names and members).

DICOM that ACAT itself writes (`ACATLogic.write_dicom_series`, used for the demo and phantom cases) leaves
patient name, ID, birth date and sex empty; it links to the input only by StudyInstanceUID.
"""

from __future__ import annotations

import json
import shutil
import zipfile
import zlib
from pathlib import Path

import pydicom
import pytest

from ACATLogic.io import read_volume, write_dicom_series
from ACATLogic.options import ExplainOptions

from bundles import make_random_bundle
from conftest import run_acat, sorted_series_files

PHI = {
    "PatientName": "Zyxwvut^Qponmlk",
    "PatientID": "PID8675309",
    "OtherPatientIDs": "OPID2718281",
    "PatientBirthDate": "19320229",
    "AccessionNumber": "ACC31337XY",
    "InstitutionName": "Qwertzuiop General Hospital",
    "ReferringPhysicianName": "Plmoknijb^Uhvygctfx",
}
# what must never appear, in any case: each name part, the IDs, the date in the usual spellings
NEEDLES = ["Zyxwvut", "Qponmlk", "PID8675309", "OPID2718281", "19320229", "1932-02-29", "29.02.1932",
           "02/29/1932", "ACC31337XY", "Qwertzuiop", "Plmoknijb", "Uhvygctfx"]


def leaks(data: bytes | str) -> list[str]:
    text = data.lower() if isinstance(data, str) else data.decode("latin-1").lower()
    return [n for n in NEEDLES if n.lower() in text]


def file_contents(path: Path) -> list[tuple[str, bytes]]:
    """(where, bytes) of a file: its name, its raw bytes, and what it holds compressed (an NRRD's gzip
    payload, a zip's members, recursively)."""
    data = path.read_bytes()
    out = [(f"name of {path}", path.name.encode()), (str(path), data)]
    out += _inner(str(path), path.name, data)
    return out


def _inner(where: str, name: str, data: bytes) -> list[tuple[str, bytes]]:
    out = []
    if name.endswith(".nrrd") and b"\n\n" in data:
        header, payload = data.split(b"\n\n", 1)
        if b"encoding: gzip" in header:
            out.append((f"{where} (gzip payload)", zlib.decompress(payload, 16 + zlib.MAX_WBITS)))
    if name.endswith(".zip"):
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                content = archive.read(member)
                out += [(f"{where}:{member} (name)", member.encode()), (f"{where}:{member}", content)]
                out += _inner(f"{where}:{member}", member, content)
    return out


def assert_no_phi(items) -> None:
    found = [(where, leaks(data)) for where, data in items if leaks(data)]
    assert not found, found


@pytest.fixture(scope="module")
def phi_series(tmp_path_factory, cranium_series):
    """The head CT series with every identifying tag filled (a private copy)."""
    folder = tmp_path_factory.mktemp("phi") / "series"
    shutil.copytree(cranium_series, folder)
    for path in sorted_series_files(folder):
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert str(ds.PatientName) == PHI["PatientName"] and ds.AccessionNumber == PHI["AccessionNumber"]
    assert leaks(next(folder.iterdir()).read_bytes())  # the search finds them where they are
    return folder


@pytest.fixture(scope="module")
def explained(tmp_path_factory, phi_series):
    """``acat explain`` on the series, verbose, with jsonl progress: (the completed process, out folder)."""
    root = tmp_path_factory.mktemp("phi-out")
    bundle = make_random_bundle(root / "bundle", size=32, slices=3, steps=2)
    out = root / "explanation"
    result = run_acat("explain", str(phi_series), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                      "--progress-format", "jsonl", "--verbose", "--coverage", "sampled", "--output", "class", "--targets", "none")
    assert result.returncode == 0, result.stderr
    return result, out


def test_the_command_line_never_shows_or_writes_patient_identity(phi_series, explained, tmp_path):
    items = []
    for args in (["info"], ["info", "--json"], ["info", "--verbose"]):
        result = run_acat(*args, str(phi_series))
        assert result.returncode == 0, result.stderr
        items += [(f"acat {' '.join(args)} stdout", result.stdout), (f"acat {' '.join(args)} stderr", result.stderr)]
    converted = tmp_path / "converted.nrrd"
    result = run_acat("convert", str(phi_series), str(converted), "--verbose")
    assert result.returncode == 0, result.stderr
    items += [("acat convert stdout", result.stdout), ("acat convert stderr", result.stderr)]
    items += file_contents(converted)

    run, out = explained
    items += [("acat explain stdout", run.stdout), ("acat explain stderr", run.stderr)]
    names = sorted(p.name for p in out.iterdir())
    assert "report.json" in names and "saliency.nrrd" in names and "overview.png" in names
    for path in sorted(out.rglob("*")):
        items += file_contents(path)
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["modality"] == "CT"
    assert len(items) > 20
    assert_no_phi(items)


@pytest.fixture
def slicer_scene():
    pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")
    pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -e '.[slicer]')")
    from slicer_scene import slicer_scene_fixture

    yield from slicer_scene_fixture()


def test_the_web_viewer_never_shows_or_packages_patient_identity(phi_series, explained, slicer_scene, tmp_path):
    from ACATSlicerLib.controller import ExplainController
    from ACATSlicerLib.runner import RUNNING, SUCCEEDED, RunOutcome
    from ACATWeb import session, summary

    _, out = explained

    class Replay:
        """The runner, replaying the real ``acat explain`` output of this scan (the scan the page opened)."""

        state = "idle"

        def start(self, request, inputPath, outDir, onProgress=None):
            self.outDir, self.state = outDir, RUNNING

        def poll(self):
            shutil.copytree(out, self.outDir)
            self.state = SUCCEEDED
            return RunOutcome(SUCCEEDED, 0, self.outDir, result={"event": "result"})

        def cancel(self, timeoutS=10.0):
            self.state = "cancelled"

    scene = slicer_scene.scene
    viewer = session.ViewerSession(scene, ExplainController(scene, runnerFactory=Replay, workRoot=tmp_path))
    volume = session.read_ct(phi_series)  # as the page's Open does: the path typed, then its name
    viewer.show_input(volume, name=Path(str(phi_series)).name)
    viewer.explain("model", ExplainOptions(method="counterfactual"))
    outcome = viewer.controller.wait(60)  # the input is written and the results read in worker threads
    assert outcome.state == SUCCEEDED, outcome.errorMessage
    panel = {"input_info": session.describe_volume(volume),
             "result": summary.result_summary(viewer.result, outcome.elapsedS, outcome.warnings),
             "choices": summary.view_choices(viewer.result)}
    nodes = [scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes())]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    archive = viewer.export_zip(downloads, "acat-results.zip")
    items = [("panel", json.dumps(panel)), ("node names", "\n".join(nodes))] + file_contents(archive)
    assert sum(data.endswith(b".nrrd") for where, data in items if where.endswith("(name)")) >= 5
    assert_no_phi(items)


def test_dicom_written_by_acat_carries_no_patient_identity(phi_series, tmp_path):
    volume = read_volume(phi_series)
    assert not leaks(json.dumps(volume.metadata))  # what the reader keeps from the header
    write_dicom_series(volume, tmp_path / "written", series_description="ACAT output")
    for path in sorted((tmp_path / "written").iterdir())[:3]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(ds.PatientName) == "" and ds.PatientID == "" and ds.PatientBirthDate == ""
        assert ds.StudyInstanceUID == volume.metadata["study_instance_uid"]  # the link back to the study
        assert not leaks(path.read_bytes()) and not leaks(path.name)
