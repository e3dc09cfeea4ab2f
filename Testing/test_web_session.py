"""The web viewer's logic on a real, headless MRML scene (no web server, no browser).

`ACATWeb.session.ViewerSession` is what every page action calls. Here its background run is a stand-in
runner that writes an output folder the way ``acat explain`` does, with a known saliency: a hot blob in
the patient's LEFT hemisphere of a generated head CT. So the overlay's position is checked on Slicer's
own composited slice image: in the radiological display, patient left is the image's right half.
The real runner with a real model is exercised by Testing/test_slicer_runner.py and, through the page,
by Testing/test_web_browser.py.
"""

from __future__ import annotations

import json
import socket
import time
import zipfile

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")
pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -e '.[slicer]')")

import slicer  # noqa: E402
from slicer_scene import slicer_scene_fixture  # noqa: E402

from ACATCli.main import main as acat_main  # noqa: E402
from ACATLogic.errors import ACATInputError  # noqa: E402
from ACATLogic.io.itk_files import read_itk_file, write_itk_file  # noqa: E402
from ACATLogic.volume import CTVolume  # noqa: E402
from ACATLogic.options import ExplainOptions  # noqa: E402
from ACATSlicerLib.controller import AlreadyRunning, ExplainController  # noqa: E402
from ACATSlicerLib.runner import CANCELLED, RUNNING, SUCCEEDED, RunOutcome  # noqa: E402
from ACATSlicerLib.selftest_case import syntheticHeadCT  # noqa: E402
from ACATSlicerLib.volume_nodes import geometryFromIjkToRas  # noqa: E402
from ACATWeb import plot_svg, server, session, summary  # noqa: E402

LABELS = ["none", "left", "right", "both"]
PROBABILITIES = {"none": 0.1, "left": 0.7, "right": 0.15, "both": 0.05}


@pytest.fixture
def headless():
    """The test scene (Red, Green, Yellow) plus the viewer's counterfactual slice view, "CF"."""
    for scene in slicer_scene_fixture():
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(scene.app)
        logic.SetMRMLScene(scene.scene)
        logic.AddSliceNode(session.COUNTERFACTUAL_VIEW).SetDimensions(128, 128, 1)
        logic.SetSliceNode(logic.GetSliceNode())
        scene.app.GetSliceLogics().AddItem(logic)
        scene.sliceLogics[session.COUNTERFACTUAL_VIEW] = logic
        yield scene


@pytest.fixture
def head_nrrd(tmp_path):
    voxels, ijk_to_ras = syntheticHeadCT()
    spacing, origin, direction = geometryFromIjkToRas(ijk_to_ras)
    return write_itk_file(CTVolume(voxels, spacing, origin, direction), tmp_path / "head.nrrd")


def left_blob(volume: CTVolume) -> np.ndarray:
    """A ball in the patient's LEFT hemisphere (LPS identity direction: i grows towards the left)."""
    k, j, i = np.indices(volume.voxels_hu.shape)
    K, J, I = volume.voxels_hu.shape
    return ((i - 0.72 * I) ** 2 + (j - J / 2) ** 2 + ((k - K / 2) * 2) ** 2) <= 10 ** 2  # ~8% of the voxels


class WritingRunner:
    """Stands in for `ExplainProcess`: on the first poll it writes what ``acat explain`` writes (every
    volume on the input's grid, report.json) into the output folder; ``finish=False`` keeps it running."""

    def __init__(self, finish: bool = True):
        self.finish, self.state, self.progressed = finish, "idle", []

    def start(self, request, inputPath, outDir, onProgress=None):
        self.request, self.inputPath, self.outDir, self.onProgress = request, inputPath, outDir, onProgress
        self.state = RUNNING

    def poll(self):
        if self.onProgress is not None:
            from ACATSlicerLib.runner import ProgressEvent
            self.onProgress(ProgressEvent(0.5, "explaining chunk 1/2", "explaining", 1.0, 2.0))
        if not self.finish:
            return None
        grid = read_itk_file(self.inputPath)
        hot = left_blob(grid)
        saliency = np.zeros_like(grid.voxels_hu)
        saliency[hot] = 1.0
        self.outDir.mkdir(parents=True)
        write_itk_file(grid.with_voxels(saliency), self.outDir / "saliency.nrrd")
        for label in LABELS:
            cf = grid.voxels_hu.copy()
            cf[hot] -= 35.0 if label == "none" else 5.0
            write_itk_file(grid.with_voxels(cf), self.outDir / f"counterfactual_{label}.nrrd")
        write_itk_file(grid.with_voxels(saliency * 0.5), self.outDir / "attention_fused.nrrd")
        trajectory = {t: [PROBABILITIES, {**PROBABILITIES, t: 0.9}] for t in LABELS}
        report = {"prediction": "left", "probabilities": PROBABILITIES, "model": {"id": "test-model", "version": "1"},
                  "method": self.request.options.method, "trajectory": trajectory}
        (self.outDir / "report.json").write_text(json.dumps(report))
        self.state = SUCCEEDED
        return RunOutcome(SUCCEEDED, 0, self.outDir, result={"event": "result"})

    def cancel(self, timeoutS=10.0):
        self.state = CANCELLED


def make_session(headless, tmp_path, runner):
    controller = ExplainController(headless.scene, runnerFactory=lambda: runner, workRoot=tmp_path)
    return session.ViewerSession(headless.scene, controller)


def heat_pixels(rgba: np.ndarray) -> np.ndarray:
    """Coloured (not grey) pixels: the heat overlay over a grey CT."""
    rgb = rgba[..., :3].astype(int)
    return (rgb[..., 0] - rgb[..., 2]) > 40


def test_open_shows_the_ct_in_every_view_and_replaces_the_previous_one(headless, head_nrrd, tmp_path):
    viewer = make_session(headless, tmp_path, WritingRunner())
    volume = session.read_ct(head_nrrd)
    assert session.describe_volume(volume) == "48 x 48 x 12 voxels, 4.00 x 4.00 x 5.00 mm"
    first = viewer.show_input(volume, "head.nrrd")
    for name in session.INPUT_VIEWS:
        composite = headless.sliceLogics[name].GetSliceCompositeNode()
        assert composite.GetBackgroundVolumeID() == first.GetID()
        assert composite.GetForegroundVolumeID() is None
    display = first.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (80.0, 40.0)  # the brain window
    viewer.set_window("bone")
    assert (display.GetWindow(), display.GetLevel()) == (3000.0, 500.0)
    with pytest.raises(ValueError, match="unknown window"):
        viewer.set_window("rainbow")
    count = headless.nodeCount("vtkMRMLScalarVolumeNode")
    second = viewer.show_input(volume, "again")
    assert first.GetScene() is None and headless.nodeCount("vtkMRMLScalarVolumeNode") == count
    assert headless.sliceLogics["Red"].GetSliceCompositeNode().GetBackgroundVolumeID() == second.GetID()


def test_a_bad_path_is_one_line_error():
    with pytest.raises(ACATInputError, match="no such file"):
        session.read_ct("/nonexistent/scan")
    with pytest.raises(ACATInputError, match="type the path"):
        session.read_ct("  ")


def test_explain_shows_the_overlay_over_the_patients_left_and_the_counterfactual_beside_it(headless, head_nrrd,
                                                                                          tmp_path):
    runner = WritingRunner()
    viewer = make_session(headless, tmp_path, runner)
    with pytest.raises(ValueError, match="open a CT first"):
        viewer.explain("some-model")
    node = viewer.show_input(session.read_ct(head_nrrd))
    viewer.explain("some-model", ExplainOptions(method="counterfactual"))
    outcome = viewer.controller.wait(60)  # the input is written and the first maps read in a worker thread
    assert outcome.state == SUCCEEDED, outcome.errorMessage
    assert runner.request.model == "some-model" and runner.request.options.method == "counterfactual"
    # the page reads the run's progress and outcome from the one controller; the outcome stays until the next run
    assert viewer.controller.progress.stage == "loading" and viewer.controller.poll() is outcome
    result = viewer.result
    for name in session.INPUT_VIEWS:
        composite = headless.sliceLogics[name].GetSliceCompositeNode()
        assert composite.GetBackgroundVolumeID() == node.GetID()
        assert composite.GetForegroundVolumeID() == result.saliency.GetID()
    cf = headless.sliceLogics["CF"].GetSliceCompositeNode()
    assert cf.GetBackgroundVolumeID() == result.counterfactuals["none"].GetID()  # towards healthy: prediction is left
    assert cf.GetForegroundVolumeID() is None

    ras = viewer.focus_on_overlay()
    assert ras[0] < -10  # RAS x < 0: the patient's left
    image = headless.compositeImage("Red")
    heat = heat_pixels(image)
    half = heat.shape[1] // 2
    assert heat[:, half:].sum() > 20 and heat[:, :half].sum() == 0  # radiological: patient left on the right

    viewer.show_results(opacity=0.0)
    assert not heat_pixels(headless.compositeImage("Red")).any()
    viewer.show_results(overlay="attention:fused", right="difference:none", opacity=2.0, percentile=50)
    assert viewer.opacity == 1.0 and viewer.percentile == 50
    assert headless.sliceLogics["Red"].GetSliceCompositeNode().GetForegroundVolumeID() == result.attention["fused"].GetID()
    assert cf.GetBackgroundVolumeID() == result.differences["none"].GetID()
    with pytest.raises(ValueError, match="unknown overlay"):
        viewer.show_results(overlay="attention:nope")


def test_the_counterfactual_view_follows_the_axial_view(headless, head_nrrd, tmp_path):
    viewer = make_session(headless, tmp_path, WritingRunner())
    viewer.show_input(session.read_ct(head_nrrd))
    viewer.explain("m")
    assert viewer.controller.wait(60).state == SUCCEEDED
    red, cf = headless.sliceLogics["Red"], headless.sliceLogics["CF"]
    red.SetSliceOffset(12.5)
    assert cf.GetSliceOffset() == pytest.approx(12.5)
    cf.SetSliceOffset(-5.0)
    assert red.GetSliceOffset() == pytest.approx(-5.0)
    red.GetSliceNode().SetFieldOfView(100.0, 100.0, 5.0)
    assert cf.GetSliceNode().GetFieldOfView()[0] == pytest.approx(100.0)


def test_cancel_leaves_the_scene_as_it_was(headless, head_nrrd, tmp_path):
    viewer = make_session(headless, tmp_path, WritingRunner(finish=False))
    viewer.show_input(session.read_ct(head_nrrd))
    before = headless.nodeCount()
    viewer.explain("m")
    assert viewer.controller.running and viewer.controller.poll() is None
    viewer.controller.cancel()
    assert not viewer.controller.running and viewer.controller.poll().state == CANCELLED
    assert viewer.result is None and headless.nodeCount() == before
    assert not list(tmp_path.glob("acat-explain-*"))  # the work folder is gone


def test_a_second_explain_while_one_runs_is_refused(headless, head_nrrd, tmp_path):
    runners = []

    def factory():
        runners.append(WritingRunner(finish=False))
        return runners[-1]

    viewer = session.ViewerSession(headless.scene, ExplainController(headless.scene, runnerFactory=factory,
                                                                     workRoot=tmp_path))
    viewer.show_input(session.read_ct(head_nrrd))
    viewer.explain("m", ExplainOptions(method="counterfactual"))
    controller = viewer.controller
    for _ in range(500):  # the input is written in a worker thread, then the runner starts
        if controller.poll() is None and controller.progress.fraction == 0.5:
            break
        time.sleep(0.01)
    assert controller.poll() is None and controller.progress.fraction == 0.5
    with pytest.raises(AlreadyRunning, match="an explanation is already running"):
        viewer.explain("other-model", ExplainOptions(method="gradient"))
    assert len(runners) == 1 and controller.running and controller.progress.fraction == 0.5  # the first run, untouched
    assert runners[0].request.model == "m" and controller.request.options.method == "counterfactual"
    controller.cancel()
    assert not controller.running and len(list(tmp_path.glob("acat-explain-*"))) == 0


def test_download_is_a_zip_of_nrrd_and_report_without_patient_data(headless, head_nrrd, tmp_path):
    viewer = make_session(headless, tmp_path, WritingRunner())
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    viewer.show_input(session.read_ct(head_nrrd))
    with pytest.raises(ValueError, match="explain a CT first"):
        viewer.export_zip(downloads)
    viewer.explain("m")
    viewer.controller.wait(60)
    path = viewer.export_zip(downloads, "results.zip")
    assert sorted(p.name for p in downloads.iterdir()) == ["results.zip"]  # no temporary files left
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        report = json.loads(archive.read("acat-results/report.json"))
    # the folder the child wrote, as it is (the Slicer module's export copies the same folder)
    assert names == sorted(f"acat-results/{p.name}" for p in viewer.result.outDir.iterdir())
    assert "acat-results/saliency.nrrd" in names and "acat-results/counterfactual_none.nrrd" in names
    assert "acat-results/attention_fused.nrrd" in names
    assert report["prediction"] == "left" and report["probabilities"] == PROBABILITIES
    text = json.dumps(report).lower()
    assert "patient" not in text and "birth" not in text


def test_result_summary_and_probability_plot(headless, head_nrrd, tmp_path):
    viewer = make_session(headless, tmp_path, WritingRunner())
    viewer.show_input(session.read_ct(head_nrrd))
    viewer.explain("m")
    outcome = viewer.controller.wait(60)
    card = summary.result_summary(viewer.result, outcome.elapsedS)
    assert card["prediction"] == "left"
    assert card["probabilities_text"] == "none 0.100, left 0.700, right 0.150, both 0.050"
    assert [r["label"] for r in card["probabilities"] if r["predicted"]] == ["left"]
    assert card["model"] == "test-model 1" and card["plot_svg"].count("<polyline") == 4
    choices = summary.view_choices(viewer.result)
    assert [c["value"] for c in choices["overlays"]] == ["saliency", "attention:fused"]
    assert choices["right_default"] == "counterfactual:none" and len(choices["rights"]) == 8


def test_probability_plot_points():
    svg = plot_svg.trajectory_svg({"left": [{"left": 0.0}, {"left": 0.5}, {"left": 1.0}]}, width=134, height=138)
    # plot area: x from 34 to 126 (step 0 -> 2), y from 8 (p = 1) to 108 (p = 0)
    assert 'points="34.0,108.0 80.0,58.0 126.0,8.0"' in svg
    assert "p(left) towards left" in svg
    assert plot_svg.trajectory_svg({}) == "" and plot_svg.trajectory_svg({"x": []}) == ""
    # the decision's "abnormal" target: 1 - p(healthy); without the healthy class named, nothing to draw
    rows = [{"none": 0.9, "left": 0.1}, {"none": 0.4, "left": 0.6}, {"none": 0.0, "left": 1.0}]
    svg = plot_svg.trajectory_svg({"abnormal": rows}, width=134, height=138, healthy="none")
    assert 'points="34.0,98.0 80.0,48.0 126.0,8.0"' in svg  # p = 0.1, 0.6, 1.0
    assert "p(abnormal) towards abnormal" in svg
    assert plot_svg.trajectory_svg({"abnormal": rows}) == ""


def test_view_command_checks_its_options_before_starting(capsys):
    assert acat_main(["view", "--port", "0"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    assert acat_main(["view", "/nonexistent/scan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acat: error:") and "no such file" in err and len(err.strip().splitlines()) == 1


def test_listening_beyond_loopback_needs_an_explicit_host():
    assert server.LOOPBACK == "127.0.0.1"
    assert server.is_loopback("127.0.0.1") and server.is_loopback("localhost") and server.is_loopback("::1")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("192.168.1.2")
    assert server.view_url("127.0.0.1", 8080, "T0k") == "http://127.0.0.1:8080/index.html?secret=T0k"
    assert server.view_url("::1", 8080, "T0k") == "http://[::1]:8080/index.html?secret=T0k"
    assert server.view_url("0.0.0.0", 8080, "T0k") == f"http://{socket.gethostname()}:8080/index.html?secret=T0k"


def test_view_command_checks_allowed_folders_before_starting(capsys, tmp_path):
    assert acat_main(["view", "--allow-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--allow-dir needs an existing folder" in err and len(err.strip().splitlines()) == 1
