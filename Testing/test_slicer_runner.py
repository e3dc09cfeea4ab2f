"""The background ``acat explain`` process and the controller that runs it, for real on a tiny model.

A random-weight bundle (Testing/bundles.py) and a generated head CT node: progress arrives as the run
goes, a successful run loads its results into the scene, Cancel kills the process promptly and leaves
the scene as it was, and bad input gives one line a user can act on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")

from slicer_scene import slicer_scene_fixture  # noqa: E402

from ACATLogic.options import ExplainOptions  # noqa: E402
from ACATSlicerLib import hierarchy  # noqa: E402
from ACATSlicerLib.controller import AlreadyRunning, ExplainController  # noqa: E402
from ACATSlicerLib.request import MODEL_DEFAULT, ExplainRequest  # noqa: E402
from ACATSlicerLib.runner import CANCELLED, FAILED, SUCCEEDED, EtaEstimator, ExplainProcess  # noqa: E402
from ACATSlicerLib.selftest_case import makeTinyBundle, syntheticHeadCT  # noqa: E402
from ACATSlicerLib.volume_nodes import addVolumeNode, ijkToRasArray  # noqa: E402
from bundles import make_random_bundle  # noqa: E402

slicer_scene = pytest.fixture(slicer_scene_fixture)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", size=32, slices=3, steps=3)


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory):
    """Many optimisation steps: still running when the test cancels it."""
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "slow", size=32, slices=3, steps=5000)


@pytest.fixture
def head(slicer_scene):
    voxels, ijk_to_ras = syntheticHeadCT()
    return addVolumeNode(slicer_scene.scene, voxels, "Head CT", ijkToRas=ijk_to_ras)


def cpu(model) -> ExplainRequest:
    return ExplainRequest(str(model), ExplainOptions(device="cpu"))


def test_the_panel_becomes_the_childs_command_line():
    """Panel values -> ACATLogic's ExplainOptions (fields by their camelCase names) -> the child's arguments
    (``to_cli_args``), which the real ``acat explain`` parser reads back as the same options."""
    from ACATCli.main import build_parser

    panel = types.SimpleNamespace(model="/m", method="gradcam", device="cpu", steps=7, alpha=50.0, stepSize=0.2,
                                  targets="none, left", reference="image", opacity=0.4, inputVolume=None)
    request = ExplainRequest.fromPanel(panel)
    assert request.options == ExplainOptions(method="gradcam", device="cpu", steps=7, alpha=50.0, step_size=0.2,
                                             targets=("none", "left"), reference="image")
    command = request.commandLine("in.nrrd", "out")
    assert command[:8] == ["explain", "in.nrrd", "--out", "out", "--model", "/m", "--progress-format", "jsonl"]
    assert command[8:] == request.options.to_cli_args()
    args = build_parser().parse_args(command)
    assert (args.input, args.out, args.model, args.progress_format) == (["in.nrrd"], "out", "/m", "jsonl")
    assert ExplainOptions.from_namespace(args) == request.options
    # the panel's "model default": 0, "" and MODEL_DEFAULT leave the option to the model card
    defaults = ExplainRequest.fromPanel(types.SimpleNamespace(
        model="brain", method="counterfactual", device="auto", steps=0, alpha=0.0, stepSize=0.0, targets="",
        reference=MODEL_DEFAULT))
    assert defaults.options == ExplainOptions()
    assert defaults.commandLine("a", "b")[-2:] == ["--progress-format", "jsonl"]
    assert request.onDevice("cpu") == request and defaults.onDevice("cpu").options.device == "cpu"
    with pytest.raises(ValueError, match="method must be one of"):
        ExplainRequest.fromPanel(types.SimpleNamespace(model="m", method="magic"))
    with pytest.raises(ValueError, match="choose a model"):
        ExplainRequest.fromPanel(types.SimpleNamespace(model=""))


def test_eta_from_progress_since_the_first_step():
    now = [100.0]
    eta = EtaEstimator(clock=lambda: now[0])
    assert eta.update(0.1) is None  # no rate yet
    now[0] = 110.0
    assert eta.update(0.3) == pytest.approx(10.0 * 0.7 / 0.2)
    now[0] = 120.0
    assert eta.update(1.0) == 0.0


def test_jsonl_progress_lines_and_unchanged_default_output(tiny_bundle, tmp_path):
    from ACATLogic.io import write_volume
    from ACATLogic.volume import CTVolume

    voxels, _ = syntheticHeadCT()
    write_volume(CTVolume(voxels, (4, 4, 5), (0, 0, 0), np.eye(3)), tmp_path / "ct.nrrd")
    base = [sys.executable, "-m", "ACATCli", "explain", str(tmp_path / "ct.nrrd"), "--model",
            str(tiny_bundle), "--device", "cpu"]
    run = subprocess.run(base + ["--out", str(tmp_path / "a"), "--progress-format", "jsonl"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert [e["stage"] for e in progress][:1] == ["reading"] and progress[-1]["stage"] == "writing"
    steps = [e["message"] for e in progress if e["message"].startswith("counterfactual step")]
    assert steps == [f"counterfactual step {i}/3" for i in (1, 2, 3)]  # every optimisation step is reported
    assert events[-1]["event"] == "result" and events[-1]["model"] == "random-brain_stroke"
    assert set(events[-1]["probabilities"]) == {"none", "left", "right", "both"}
    assert "saliency.nrrd" in events[-1]["files"]
    plain = subprocess.run(base + ["--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and plain.stdout.startswith("Prediction:   ")
    assert "{" not in plain.stdout and "event" not in plain.stderr


def test_a_run_goes_in_the_background_and_loads_its_results(slicer_scene, head, tiny_bundle, tmp_path):
    scene = slicer_scene.scene
    events, loaded = [], []
    run = ExplainController(scene, workRoot=tmp_path)
    run.start(head, cpu(tiny_bundle), onProgress=events.append, onResult=loaded.append)
    assert run.running and run.poll() is None  # start returns at once; the GUI keeps running
    outcome = run.wait(timeoutS=300)
    assert outcome.state == SUCCEEDED, outcome.errorMessage
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sum(e.message.startswith("counterfactual step") for e in events) == 3
    assert any(e.etaS is not None and e.etaS > 0 for e in events)
    result = outcome.result
    assert loaded == [result] and run.result is result and run.progress is events[-1]
    # the counterfactuals the child wrote (the healthy-vs-abnormal decision by default), the shown one loaded first
    assert set(result.keys("counterfactual")) == {"none", "abnormal"}
    assert set(result.counterfactuals) == {result.shownCounterfactualKey()}
    assert set(result.keys("attention")) == {"early", "middle", "late", "fused"}
    assert result.device == "cpu" and json.loads((result.outDir / "report.json").read_text())["device"] == "cpu"
    np.testing.assert_array_equal(ijkToRasArray(result.saliency), ijkToRasArray(head))
    assert result.saliency.GetName() == "Head CT random-brain_stroke counterfactual saliency"
    assert hierarchy.findResultFolders(scene) == [result.folderItem]
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == result.saliency.GetID()
    # the work folder (input.nrrd) is removed; the child's results folder is kept for the session, until close
    assert [p.parent.name.startswith("acat-results-") for p in tmp_path.glob("*/*")] == [True]
    assert result.outDir.parent.parent == tmp_path and (result.outDir / "saliency.nrrd").is_file()
    run.close()
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_the_process_promptly_and_leaves_the_scene_unchanged(slicer_scene, head, slow_bundle, tmp_path):
    scene = slicer_scene.scene
    before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    events = []
    run = ExplainController(scene, workRoot=tmp_path)
    run.start(head, cpu(slow_bundle), onProgress=events.append)
    deadline = time.monotonic() + 300
    while not any(e.message.startswith("counterfactual step") for e in events):
        assert run.poll() is None, "the slow run finished before it could be cancelled"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = run.runner.pid
    outcome = run.cancel()
    assert outcome.state == CANCELLED
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the process is gone (reaped), not left running in the background
    assert events[-1].fraction < 0.95  # it was stopped in the middle of the optimisation
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == before
    assert list(tmp_path.iterdir()) == []


def test_bad_model_gives_one_line_and_no_nodes(slicer_scene, head, tmp_path):
    scene = slicer_scene.scene
    before = scene.GetNumberOfNodes()
    (tmp_path / "not-a-bundle").mkdir()
    run = ExplainController(scene, workRoot=tmp_path)
    run.start(head, cpu(tmp_path / "not-a-bundle"))
    outcome = run.wait(timeoutS=300)
    assert outcome.state == FAILED
    assert outcome.errorMessage == f"{tmp_path / 'not-a-bundle'}: not a model bundle: no model.json"
    assert "\n" not in outcome.errorMessage and "Traceback" not in outcome.errorMessage
    assert scene.GetNumberOfNodes() == before
    assert list(tmp_path.iterdir()) == [tmp_path / "not-a-bundle"]


def test_a_labelmap_input_is_refused_before_anything_starts(slicer_scene, tmp_path):
    labelmap = addVolumeNode(slicer_scene.scene, np.zeros((3, 4, 5), np.uint8), "mask", ijkToRas=np.eye(4),
                             nodeClass="vtkMRMLLabelMapVolumeNode")
    started = []
    run = ExplainController(slicer_scene.scene, runnerFactory=lambda: started.append(1), workRoot=tmp_path)
    with pytest.raises(ValueError, match="'mask' is a labelmap"):
        run.start(labelmap, cpu("anything"))
    assert started == [] and list(tmp_path.iterdir()) == []


def test_process_runner_reports_a_crash_without_a_result(tmp_path):
    """A child that dies without the one-line error (e.g. killed by the OS) still gives a message."""
    crash = tmp_path / "crash.py"
    crash.write_text("import sys; print('Segmentation fault', file=sys.stderr); sys.exit(139)\n")
    runner = ExplainProcess(pythonExecutable=sys.executable,
                            popen=lambda command, **kw: subprocess.Popen([sys.executable, str(crash)], **kw))
    runner.start(ExplainRequest("m", ExplainOptions()), tmp_path / "in.nrrd", tmp_path / "out")
    outcome = runner.wait(timeoutS=60)
    assert outcome.state == FAILED and outcome.returnCode == 139
    assert outcome.errorMessage == "the explanation stopped (exit code 139): Segmentation fault"


def test_selftest_bundle_is_a_valid_bundle(tmp_path):
    from ACATLogic.bundle import load_bundle

    bundle = load_bundle(makeTinyBundle(tmp_path / "selftest"))
    assert bundle.id == "selftest-random" and bundle.explanation_defaults["steps"] == 3
    assert set(bundle.models) == {"baseline", "autoencoder"}


def test_model_choices_from_cards_and_verified_bundles(tiny_bundle, tmp_path, monkeypatch):
    from ACATSlicerLib.models import ModelList

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "tiny").symlink_to(tiny_bundle, target_is_directory=True)
    (models_dir / "broken").mkdir()
    (models_dir / "broken" / "model.json").write_text("{not json")
    monkeypatch.setenv("ACAT_MODELS_DIR", str(models_dir))
    offered = ModelList()
    choices = [c for c in offered.choices() if str(c.path).startswith(str(models_dir))]
    assert [(c.id, c.title) for c in choices] == [("random-brain_stroke", "random-brain_stroke 0.0.0 (brain_stroke)")]
    assert offered.add(tiny_bundle).id == "random-brain_stroke"
    tampered = tmp_path / "tampered"
    import shutil

    shutil.copytree(tiny_bundle, tampered)
    with open(tampered / "baseline.safetensors", "r+b") as fh:  # one flipped byte: the sha256 no longer matches
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256"):
        offered.add(tampered)
    assert not any(c.path == tampered for c in offered.choices())


def test_a_second_explain_while_one_runs_is_refused_and_the_first_goes_on(slicer_scene, head, slow_bundle, tmp_path):
    scene = slicer_scene.scene
    before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    controller = ExplainController(scene, workRoot=tmp_path)
    events = []
    controller.start(head, cpu(slow_bundle), onProgress=events.append)
    runner, work = controller.runner, controller.workDir
    with pytest.raises(AlreadyRunning, match="an explanation is already running; wait for it or cancel it first"):
        controller.start(head, ExplainRequest(str(slow_bundle), ExplainOptions(device="cpu", method="gradient")))
    assert controller.runner is runner and controller.workDir == work and work.is_dir()
    assert controller.request.options.method == "counterfactual"  # the first run's request, untouched
    deadline = time.monotonic() + 300
    while not any(e.message.startswith("counterfactual step") for e in events):  # the first run goes on
        assert controller.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    controller.cancel()
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == before
    assert list(tmp_path.iterdir()) == []


def test_cancel_right_after_start_leaves_nothing(slicer_scene, head, slow_bundle, tmp_path):
    """Cancel before the child has even read its input: the process is gone, no node, no folder."""
    scene = slicer_scene.scene
    before = scene.GetNumberOfNodes()
    run = ExplainController(scene, workRoot=tmp_path)
    run.start(head, cpu(slow_bundle))
    assert run.stage == "writing" and run.runner is None  # the input is written in a worker first
    assert run.cancel().state == CANCELLED and run.runner is None  # cancelled there: no child ever started
    assert list(tmp_path.iterdir()) == []
    run.start(head, cpu(slow_bundle))
    deadline = time.monotonic() + 60
    while run.runner is None:
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    pid = run.runner.pid
    assert run.cancel().state == CANCELLED
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert scene.GetNumberOfNodes() == before and list(tmp_path.iterdir()) == []
    assert run.poll().state == CANCELLED  # and it stays cancelled: nothing is loaded later
