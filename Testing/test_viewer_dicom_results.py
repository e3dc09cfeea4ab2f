"""DICOM results (``acat explain --dicom``) from the two viewers, for real: a real DICOM series (the Cranium head
CT as our writer's 108-file series), a real MRML scene (slicer-core), the real background ``acat explain``
with a tiny random model, and the results checked as Testing/test_dicom_export.py checks the command line's:
Debian's ``dciodvfy`` finds no error in any file, every frame lies at a source image's position and refers to
that image, the objects are in the source's study and frame of reference and refer to its series, and the
SEG lines up with ``saliency.nrrd`` voxel for voxel.

* The web viewer: `ACATWeb.session.ViewerSession` opens the series, explains with DICOM results, and the
  Download zip holds ``dicom/`` beside the NRRD files; a CT that is not DICOM gets a one-line reason.
* The Slicer module: the series loaded into the scene as Slicer's DICOM scalar volume plugin loads it (the
  volumes logic's archetype reader over the series' files; ``DICOM.instanceUIDs`` set from the files, in the
  node's slice order), the module's logic and panel (ACATSlicer.py, with Testing/slicer_gui.py standing in for
  Qt) with the "DICOM results" and "De-identify" boxes ticked, the real child, Export: the exported
  ``dicom/`` refers to the series' UIDs and is de-identified. Slicer's DICOM database is not part of slicer-core: `DicomDatabase` stands in for its
  ``fileForInstance`` (instance UID -> file), built from the real files.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")

import slicer  # noqa: E402
import slicer_gui  # noqa: E402
import vtk  # noqa: E402
from slicer_scene import slicer_scene_fixture  # noqa: E402

from ACATCli.main import build_parser  # noqa: E402
from ACATLogic.dicom_export import OVERLAY_FOLDER, PARAMETRIC_MAP, SEGMENTATION, top_region  # noqa: E402
from ACATLogic.io.itk_files import read_itk_file  # noqa: E402
from ACATLogic.options import ExplainOptions  # noqa: E402
from ACATSlicerLib.controller import ExplainController  # noqa: E402
from ACATSlicerLib.dicom_source import INSTANCE_UIDS_ATTRIBUTE, DicomOption, dicomSourceFiles  # noqa: E402
from ACATSlicerLib.request import DICOM_SOURCE_LIST, DicomResults, ExplainRequest  # noqa: E402
from ACATSlicerLib.runner import RUNNING, SUCCEEDED, ExplainProcess  # noqa: E402
from ACATSlicerLib.selftest_case import syntheticHeadCT  # noqa: E402
from ACATSlicerLib.volume_nodes import addVolumeNode  # noqa: E402

from bundles import make_random_bundle  # noqa: E402
from conftest import sorted_series_files  # noqa: E402
from test_dicom_export import _frames, _source_by_position, dciodvfy  # noqa: E402

slicer_scene = pytest.fixture(slicer_scene_fixture)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", size=32, slices=3, steps=2)


class DicomDatabase:
    """ctkDICOMDatabase's ``fileForInstance`` over a real folder: what importing it into Slicer's DICOM database
    records (SOP Instance UID -> file); "" for an instance it does not hold, as the real one answers."""

    def __init__(self, folder: Path):
        self.files = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: str(p)
                      for p in sorted(Path(folder).iterdir())}
        self.asked = 0

    def fileForInstance(self, uid: str) -> str:
        self.asked += 1
        return self.files.get(uid, "")


def load_as_slicers_dicom_plugin(headless, folder: Path, name: str = "CT"):
    """The series as DICOMScalarVolumePlugin loads it (Slicer v5.10 Modules/Scripted/DICOMPlugins/
    DICOMScalarVolumePlugin.py: ``loadFilesWithArchetype``, then ``setVolumeNodeProperties``): the files in slice
    order through the volumes logic's archetype reader, the slices made right-handed, and one instance UID per
    slice in the node's order in ``DICOM.instanceUIDs``."""
    files = [str(p) for p in sorted_series_files(folder)]
    names = vtk.vtkStringArray()
    for f in files:
        names.InsertNextValue(f)
    node = headless.volumes.AddArchetypeScalarVolume(files[0], name, 0, names)
    assert node is not None, "the archetype reader did not load the series"
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    if not slicer.vtkMRMLVolumeNode.IsIJKCoordinateSystemRightHanded(ijk_to_ras):
        slicer.vtkMRMLVolumeNode.ReverseSliceOrder(node.GetImageData(), ijk_to_ras)
        node.SetIJKToRASMatrix(ijk_to_ras)
        files = list(reversed(files))
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
    return node


def check_dicom_results(results: Path, series: Path, *, deidentified: bool = False) -> dict:
    """The checks of Testing/test_dicom_export.py on the ``dicom/`` of a results folder made from ``series``;
    returns report.json's "dicom" section."""
    source = _source_by_position(series)
    first = next(iter(source.values()))
    overlays = sorted((results / OVERLAY_FOLDER).iterdir())
    assert len(overlays) == len(source)
    for path in [results / PARAMETRIC_MAP, results / SEGMENTATION, *overlays]:
        assert dciodvfy(path) == [], path.name
    info = json.loads((results / "report.json").read_text())["dicom"]
    assert info["frames_matched"] == f"{len(source)}/{len(source)}" and info["deidentified"] is deidentified
    assert info["source"] == {"study_instance_uid": first.StudyInstanceUID,
                              "series_instance_uid": first.SeriesInstanceUID}
    iop = np.array(first.ImageOrientationPatient, float)
    new_series = set()
    for name in (PARAMETRIC_MAP, SEGMENTATION):
        ds = pydicom.dcmread(results / name)
        assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.FrameOfReferenceUID == first.FrameOfReferenceUID
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
        assert ds.PatientID == ("" if deidentified else first.PatientID)
        assert ds.get("PatientIdentityRemoved") == ("YES" if deidentified else None)
        new_series.add(ds.SeriesInstanceUID)
        seen = set()
        for position, orientation, refs in _frames(ds):
            key = tuple(np.round(position, 3))
            assert key in source, (name, position)  # the source's positions
            np.testing.assert_allclose(orientation, iop, atol=1e-6)
            assert refs == [source[key].SOPInstanceUID]  # each frame refers to the image at its position
            seen.add(key)
        assert seen == set(source)
    for path in overlays:
        sc = pydicom.dcmread(path, stop_before_pixels=True)
        key = tuple(np.round(np.array(sc.ImagePositionPatient, float), 3))
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source[key].SOPInstanceUID
        assert sc.StudyInstanceUID == first.StudyInstanceUID
        new_series.add(sc.SeriesInstanceUID)
    assert len(new_series) == 3 and first.SeriesInstanceUID not in new_series  # our own series

    import highdicom as hd  # the SEG against saliency.nrrd, voxel for voxel

    saliency = read_itk_file(results / "saliency.nrrd")
    expected, _ = top_region(saliency.voxels_hu, info["top_percent"])
    seg = hd.seg.segread(results / SEGMENTATION)
    got = np.full(saliency.voxels_hu.shape, 255, np.uint8)
    for (position, _, _), frame in zip(_frames(seg), seg.pixel_array):
        i, j, k = np.round(saliency.lps_to_index(position), 6)
        assert i == 0 and j == 0 and float(k).is_integer()
        got[int(k)] = frame
    np.testing.assert_array_equal(got, expected.astype(np.uint8))
    assert 0 < expected.sum() == info["region_voxels"]
    return info


# -- the web viewer ------------------------------------------------------------------------------------
def test_the_web_viewers_download_holds_validated_dicom_results_of_a_dicom_series(slicer_scene, cranium_series,
                                                                                  tiny_bundle, tmp_path):
    from ACATWeb import session

    controller = ExplainController(slicer_scene.scene, workRoot=tmp_path / "work")  # the real child process
    (tmp_path / "work").mkdir()
    viewer = session.ViewerSession(slicer_scene.scene, controller)
    viewer.show_input(session.read_ct(cranium_series), "CT", source=cranium_series)
    assert viewer.dicom_results_problem() == ""
    viewer.explain(str(tiny_bundle), ExplainOptions(device="cpu"), dicom=True)
    outcome = controller.wait(timeoutS=600)
    assert outcome.state == SUCCEEDED, outcome.errorMessage
    (tmp_path / "downloads").mkdir()
    path = viewer.export_zip(tmp_path / "downloads", "results.zip")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    assert {"acat-results/saliency.nrrd", "acat-results/report.json", f"acat-results/{PARAMETRIC_MAP}",
            f"acat-results/{SEGMENTATION}", f"acat-results/{OVERLAY_FOLDER}/overlay_0108.dcm"} <= names
    assert names == {f"acat-results/{p.relative_to(viewer.result.outDir).as_posix()}"
                     for p in viewer.result.outDir.rglob("*") if p.is_file()}  # the child's folder as it is
    check_dicom_results(tmp_path / "unzipped" / "acat-results", cranium_series)
    controller.close()


class RecordingRunner:
    """Stands in for the child: records the request and keeps running (the command line is under test)."""

    def start(self, request, inputPath, outDir, onProgress=None):
        self.request, self.inputPath, self.state = request, inputPath, RUNNING
        self.command = request.commandLine(inputPath, outDir)

    def poll(self):
        return None

    def cancel(self, timeoutS=10.0):
        self.state = "cancelled"


def test_the_web_viewers_dicom_option_becomes_the_childs_arguments_and_needs_a_dicom_input(
        slicer_scene, cranium_series, tmp_path):
    from ACATLogic.io.itk_files import write_itk_file
    from ACATWeb import session

    runner = RecordingRunner()
    controller = ExplainController(slicer_scene.scene, runnerFactory=lambda: runner, workRoot=tmp_path)
    viewer = session.ViewerSession(slicer_scene.scene, controller)
    assert viewer.dicom_results_problem() == "open a CT first"
    volume = session.read_ct(cranium_series)
    viewer.show_input(volume, "CT", source=cranium_series)
    viewer.explain("some-model", ExplainOptions(method="gradient"), dicom=True, deidentify=True)
    for _ in range(200):
        if controller.poll() is None and controller.stage == "running":
            break
        time.sleep(0.02)
    args = build_parser().parse_args(runner.command)  # what the real acat explain reads
    assert args.dicom and args.deidentify and args.dicom_source == str(cranium_series.resolve())
    assert args.series == volume.metadata["series_instance_uid"] and args.input == [str(runner.inputPath)]
    assert args.method == "gradient" and runner.inputPath.name == "input.nrrd"
    controller.cancel()

    nrrd = write_itk_file(volume, tmp_path / "ct.nrrd")
    viewer.show_input(session.read_ct(nrrd), "CT", source=nrrd)
    reason = viewer.dicom_results_problem()
    assert reason == "the CT was not read from a DICOM series, which the DICOM results refer to"
    with pytest.raises(ValueError, match="^no DICOM results: the CT was not read from a DICOM series") as raised:
        viewer.explain("some-model", dicom=True)
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="choose DICOM results too"):
        viewer.explain("some-model", deidentify=True)
    assert controller.stage == "idle"  # nothing started


# -- the Slicer module ------------------------------------------------------------------------------------
def test_a_volume_from_the_dicom_database_knows_its_source_files_and_others_say_why_not(slicer_scene,
                                                                                       cranium_series, tmp_path):
    database = DicomDatabase(cranium_series)
    node = load_as_slicers_dicom_plugin(slicer_scene, cranium_series)
    files, reason = dicomSourceFiles(node, database)
    assert reason == "" and sorted(files) == sorted(str(p) for p in cranium_series.iterdir())
    # the node's geometry is Slicer's own reading of the series: its slices lie on the series' images
    assert node.GetImageData().GetDimensions() == (256, 256, 108)

    database.asked = 0
    option = DicomOption(lambda: database, packagesProblem="")
    assert option.problem(node) == "" and option.problem(node) == ""
    assert database.asked == 108  # looked up once per node and series, not on every change of the panel
    results = option.results(node, deidentify=True)
    assert isinstance(results, DicomResults) and len(results.sources) == 108 and results.deidentify
    assert database.asked == 216  # and again when Explain is pressed

    voxels, ijk_to_ras = syntheticHeadCT()
    plain = addVolumeNode(slicer_scene.scene, voxels, "not from DICOM", ijkToRas=ijk_to_ras)
    assert option.problem(plain) == ("the volume was not loaded from Slicer's DICOM database, so there is no source "
                                     "series to refer to")
    assert dicomSourceFiles(node, None)[1].startswith("Slicer's DICOM database is not open")
    # Slicer's Python without highdicom 0.28 / pydicom 3 (Slicer 5.10 ships pydicom 2.4.4, 5.12 highdicom 0.27.0)
    from ACATSlicerLib.dependencies import dicomPackagesProblem

    assert dicomPackagesProblem() == ""  # this environment has them
    slicer_5_12 = {"highdicom": "0.27.0", "pydicom": "3.0.2"}.__getitem__
    assert dicomPackagesProblem(version=slicer_5_12) == (
        "the DICOM results need highdicom>=0.28 in Slicer's Python, which this Slicer lacks; write them with "
        "`acat explain --dicom` outside Slicer")
    assert DicomOption(lambda: database, packagesProblem=dicomPackagesProblem(version=slicer_5_12)).problem(node) \
        .startswith("the DICOM results need highdicom>=0.28")
    database.files.pop(next(iter(database.files)))
    assert dicomSourceFiles(node, database)[1] == ("1 of the 108 source images are no longer in the DICOM "
                                                   "database or on disk; import the series again")
    with pytest.raises(ValueError, match="^no DICOM results: the volume was not loaded"):
        option.results(plain)


def test_the_request_hands_the_source_files_to_the_child_as_a_list(tmp_path):
    files = tuple(str(tmp_path / f"IM{n}") for n in range(3))
    request = ExplainRequest("m", ExplainOptions(), DicomResults(files, deidentify=True))
    with pytest.raises(ValueError, match="withDicomSource"):
        request.commandLine("in.nrrd", "out")
    listing = request.dicom.sourceArgument(tmp_path)
    assert Path(listing) == tmp_path / DICOM_SOURCE_LIST
    assert Path(listing).read_text().splitlines() == list(files)
    args = build_parser().parse_args(request.withDicomSource(listing).commandLine("in.nrrd", "out"))
    assert args.dicom and args.deidentify and args.dicom_source == listing and args.series is None
    assert "--dicom" not in ExplainRequest("m", ExplainOptions()).commandLine("in.nrrd", "out")


@pytest.fixture
def gui(slicer_scene, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    standIn = slicer_gui.Gui(slicer_scene.scene, tmp_path / "cache")
    standIn.install(monkeypatch)
    yield standIn
    for widget in standIn.widgets:
        widget.cleanup()


def test_the_slicer_panels_dicom_results_are_exported_and_refer_to_the_loaded_series(
        gui, slicer_scene, cranium_series, tiny_bundle, tmp_path, monkeypatch):
    from test_slicer_widget import openPanel

    monkeypatch.setattr(slicer, "dicomDatabase", DicomDatabase(cranium_series), raising=False)
    node = load_as_slicers_dicom_plugin(slicer_scene, cranium_series)
    voxels, ijk_to_ras = syntheticHeadCT()
    plain = addVolumeNode(slicer_scene.scene, voxels, "not from DICOM", ijkToRas=ijk_to_ras)
    _, widget = openPanel(gui, runner=ExplainProcess)  # the real background acat explain
    ui, p = widget.ui, widget._parameterNode

    ui.inputVolumeSelector.choose(plain)
    assert not ui.dicomResultsCheckBox.enabled and not ui.dicomResultsCheckBox.click()
    assert ui.dicomReasonLabel.text == ("No DICOM results: the volume was not loaded from Slicer's DICOM database, "
                                        "so there is no source series to refer to")
    ui.inputVolumeSelector.choose(node)
    assert ui.dicomResultsCheckBox.enabled and ui.dicomReasonLabel.text == "" and not ui.deidentifyCheckBox.enabled
    assert ui.dicomResultsCheckBox.click() and p.dicomResults and ui.deidentifyCheckBox.enabled
    assert ui.deidentifyCheckBox.click() and p.deidentify
    p.model, p.device = str(tiny_bundle), "cpu"
    assert ui.explainButton.click()
    deadline = time.monotonic() + 600
    while widget.logic.busy and time.monotonic() < deadline:
        gui.fireTimers()
        time.sleep(0.05)
    gui.fireTimers()
    assert gui.errors == [] and ui.statusLabel.text.startswith("Done in"), ui.statusLabel.text
    assert widget.logic.request.dicom.deidentify and len(widget.logic.request.dicom.sources) == 108

    gui.folder = str(tmp_path / "exports")
    (tmp_path / "exports").mkdir()
    assert ui.exportButton.click()
    exported = tmp_path / "exports" / "ACAT results"
    assert gui.errors == [] and (exported / PARAMETRIC_MAP).is_file()
    check_dicom_results(exported, cranium_series, deidentified=True)

    # another volume without DICOM provenance: the box is unticked and greyed again, with the reason
    ui.inputVolumeSelector.choose(plain)
    assert not p.dicomResults and not ui.dicomResultsCheckBox.checked and not ui.dicomResultsCheckBox.enabled


def test_dicom_source_is_for_an_nrrd_copy_of_the_series_said_in_one_line(cranium_series, tiny_bundle, tmp_path,
                                                                         capsys):
    """``acat explain COPY.nrrd --dicom --dicom-source SERIES`` (what both viewers run): its misuses end in one
    line and exit 2 - a volume that is not on the series' slices before the explanation starts."""
    from ACATCli.main import main as acat_main
    from ACATLogic.io import read_volume
    from ACATLogic.io.itk_files import write_itk_file
    from ACATLogic.volume import CTVolume
    from ACATSlicerLib.volume_nodes import geometryFromIjkToRas

    copy = write_itk_file(read_volume(cranium_series), tmp_path / "ct.nrrd")
    voxels, ijk_to_ras = syntheticHeadCT()
    other = write_itk_file(CTVolume(voxels, *geometryFromIjkToRas(ijk_to_ras)), tmp_path / "other.nrrd")
    (tmp_path / "empty.txt").write_text("\n")
    cases = [
        ([str(copy), "--dicom-source", str(cranium_series)], "--dicom-source names the series the DICOM results "
                                                             "refer to: add --dicom"),
        ([str(cranium_series), "--dicom", "--dicom-source", str(cranium_series)], "a DICOM input is its own source"),
        ([str(copy), "--dicom", "--dicom-source", str(tmp_path / "empty.txt")], "the list of DICOM files is empty"),
        ([str(other), "--dicom", "--dicom-source", str(cranium_series)],
         "the volume does not lie on the slices of the DICOM source series"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        code = acat_main(["explain", *extra, "--out", str(out), "--model", str(tiny_bundle), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()  # nothing written
