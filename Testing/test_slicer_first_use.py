"""What the module decides without the GUI: which packages to install and how, when to offer a CPU
retry after the GPU ran out of memory, and the generated Sample Data case as Slicer loads it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")

import slicer  # noqa: E402
from slicer_scene import slicer_scene_fixture  # noqa: E402

from ACATLogic.options import ExplainOptions  # noqa: E402
from ACATSlicerLib import dependencies, nrrd_exchange, sample_data  # noqa: E402
from ACATSlicerLib.controller import ExplainController  # noqa: E402
from ACATSlicerLib.cpu_fallback import CpuFallback, isOutOfGpuMemory  # noqa: E402
from ACATSlicerLib.dependencies import PIP, PYTORCH_UTILS, InstallError, Requirement  # noqa: E402
from ACATSlicerLib.runner import FAILED, SUCCEEDED, ExplainProcess  # noqa: E402
from ACATSlicerLib.request import MODEL_DEFAULT, ExplainRequest  # noqa: E402
from ACATSlicerLib.selftest_case import LESION_HU, syntheticHeadCT  # noqa: E402
from ACATSlicerLib.volume_nodes import addVolumeNode, ijkToRasArray  # noqa: E402
from bundles import make_random_bundle  # noqa: E402

slicer_scene = pytest.fixture(slicer_scene_fixture)
TORCH = next(r for r in dependencies.REQUIREMENTS if r.module == "torch")
SAFETENSORS = next(r for r in dependencies.REQUIREMENTS if r.module == "safetensors")


# -- dependencies -----------------------------------------------------------------------------------
def test_missing_packages_are_the_absent_and_the_too_old_ones():
    absent = Requirement("acat_no_such_module_here", "acat-no-such-package", "1.0")
    too_old = Requirement("numpy", "numpy", "999.0")
    fine = Requirement("numpy", "numpy", "1.0")
    assert dependencies.missingRequirements([absent, fine, too_old]) == [absent, too_old]
    # a local build's version suffix is ignored; an importable package without metadata is accepted
    assert dependencies.isSatisfied(Requirement("numpy", "numpy", "2.4"), version=lambda name: "2.13.0+cpu")
    assert not dependencies.isSatisfied(Requirement("numpy", "numpy", "2.4"), version=lambda name: "2.3.9")


def test_install_steps_prefer_pytorchutils_for_torch_and_say_what_they_run():
    with_extension = dependencies.installSteps([SAFETENSORS, TORCH], pyTorchUtilsAvailable=True)
    assert [(s.installer, s.spec) for s in with_extension] == [(PYTORCH_UTILS, ">=2.4"), (PIP, "safetensors>=0.4")]
    assert with_extension[0].commandLine() == [
        "PythonSlicer", "-c", "import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch("
                              "askConfirmation=False, torchVersionRequirement='>=2.4')"]
    assert with_extension[1].commandLine() == ["PythonSlicer", "-m", "pip", "install", "safetensors>=0.4"]
    assert "PyTorch extension" in with_extension[0].description
    plain = dependencies.installSteps([SAFETENSORS, TORCH], pyTorchUtilsAvailable=False)
    assert [(s.installer, s.spec) for s in plain] == [(PIP, "torch>=2.4"), (PIP, "safetensors>=0.4")]
    assert [s.commandLine()[-1] for s in plain] == ["torch>=2.4", "safetensors>=0.4"]
    assert dependencies.installSteps([], pyTorchUtilsAvailable=True) == []
    assert dependencies.pyTorchUtilsAvailable() is False  # no PyTorch extension outside Slicer


def test_install_steps_run_in_order_with_progress_per_package():
    steps = dependencies.installSteps([TORCH, SAFETENSORS], pyTorchUtilsAvailable=True)
    calls, progress, installed = [], [], set()

    def installer(kind):
        def run(spec):
            calls.append((kind, spec))
            installed.add(spec)
        return run

    dependencies.runInstallSteps(steps, {PIP: installer(PIP), PYTORCH_UTILS: installer(PYTORCH_UTILS)},
                                 progress=lambda done, total, step: progress.append((done, total, step and step.spec)),
                                 stillMissing=lambda: [])
    assert calls == [(PYTORCH_UTILS, ">=2.4"), (PIP, "safetensors>=0.4")]
    assert progress == [(0, 2, ">=2.4"), (1, 2, "safetensors>=0.4"), (2, 2, None)]


def test_a_failing_or_cancelled_install_stops_with_one_actionable_line():
    steps = dependencies.installSteps([TORCH, SAFETENSORS], pyTorchUtilsAvailable=False)
    calls = []

    def pip(spec):
        calls.append(spec)
        if spec.startswith("torch"):
            raise subprocess.CalledProcessError(1, ["pip", "install", spec], "No matching distribution\nfound")
    with pytest.raises(InstallError, match=r"^installing torch>=2.4 failed \(.*\); check the network connection"):
        dependencies.runInstallSteps(steps, {PIP: pip}, stillMissing=None)
    assert calls == ["torch>=2.4"]  # nothing after the failed step

    def cancel(done, total, step):
        if done == 1:
            raise RuntimeError("cancelled")
    calls.clear()
    with pytest.raises(RuntimeError, match="cancelled"):
        dependencies.runInstallSteps(steps, {PIP: calls.append}, progress=cancel, stillMissing=None)
    assert calls == ["torch>=2.4"]
    with pytest.raises(InstallError, match="still missing after the installation: safetensors>=0.4; restart Slicer"):
        dependencies.runInstallSteps(steps, {PIP: lambda spec: None}, stillMissing=lambda: [SAFETENSORS])


# -- out of GPU memory -> CPU -----------------------------------------------------------------------
OOM_LINE = ("acat: internal error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
            "7.79 GiB total capacity; 5.10 GiB already allocated) (run with --verbose for details; please report it)")


@pytest.mark.parametrize("message, expected", [
    (OOM_LINE, True),
    ("internal error: RuntimeError: MPS backend out of memory (MPS allocated: 8.00 GB)", True),
    ("internal error: RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate", True),
    ("internal error: MemoryError: Unable to allocate 12.0 GiB for an array", False),  # main memory: CPU won't help
    ("the input is a labelmap; choose a CT volume", False),
    ("", False),
])
def test_out_of_gpu_memory_is_recognised_from_the_error_line(message, expected):
    assert isOutOfGpuMemory(message) is expected


@pytest.fixture
def head(slicer_scene):
    voxels, ijk_to_ras = syntheticHeadCT()
    return addVolumeNode(slicer_scene.scene, voxels, "Head CT", ijkToRas=ijk_to_ras)


def test_gpu_out_of_memory_offers_one_cpu_retry_which_runs_on_the_cpu(slicer_scene, head, tmp_path):
    """A child that fails as torch does when the GPU is full; the retry runs the real explanation."""
    oom = tmp_path / "oom.py"
    oom.write_text(f"import sys; print({OOM_LINE!r}, file=sys.stderr); sys.exit(1)\n")
    commands = []

    def popen(command, **kwargs):
        commands.append(command)
        fake = "--device" in command and command[command.index("--device") + 1] != "cpu"
        return subprocess.Popen([sys.executable, str(oom)] if fake else command, **kwargs)

    controller = ExplainController(slicer_scene.scene, lambda: ExplainProcess(sys.executable, popen=popen),
                                   workRoot=tmp_path)
    bundle = make_random_bundle(tmp_path / "bundle", size=32, slices=3, steps=2)
    request = ExplainRequest(str(bundle), ExplainOptions(device="gpu", steps=2))
    nodes = slicer_scene.nodeCount()
    controller.start(head, request)
    failed = controller.wait(120)
    assert failed.state == FAILED and failed.errorMessage.startswith("internal error: OutOfMemoryError: CUDA out of")
    assert slicer_scene.nodeCount() == nodes  # the failure left the scene as it was
    assert controller.shouldOfferCpuRetry(failed) is True
    assert controller.shouldOfferCpuRetry(failed) is False  # asked once per request

    used = controller.retryOnCpu()
    assert used.options.device == "cpu" and used.model == request.model and used.options.steps == 2
    retried = controller.wait(300)
    assert retried.state == SUCCEEDED, retried.errorMessage
    assert commands[-1][commands[-1].index("--device") + 1] == "cpu"
    assert controller.result is retried.result and controller.result.saliency.GetScene() is slicer_scene.scene
    assert controller.shouldOfferCpuRetry(failed) is False  # still the same request

    # a new request may be offered again; a run already on the CPU, or another error, never is
    controller.start(head, request)
    assert controller.shouldOfferCpuRetry(controller.wait(120)) is True
    policy = CpuFallback()
    assert not policy.shouldOffer(failed, request.onDevice("cpu"))
    assert not policy.shouldOffer(type(failed)(FAILED, errorMessage="no model bundle 'x'"), request)


# -- the self-test case as Sample Data ----------------------------------------------------------------
def _download_like_sample_data(source, cache):
    """What Slicer's SampleDataLogic.downloadFile does: urlretrieve the URI, check the SHA256."""
    (uri,), (name,), (checksum,) = source["uris"], source["fileNames"], source["checksums"]
    path = cache / name
    urllib.request.urlretrieve(uri, path)
    algo, digest = checksum.split(":")
    assert algo == "SHA256" and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    return path


def test_sample_data_case_loads_through_slicer_with_the_generated_geometry(slicer_scene, tmp_path):
    sources = sample_data.sampleDataSources(tmp_path / "generated", thumbnailFileName="icon.png")
    assert [s["sampleName"] for s in sources] == [sample_data.CT_SAMPLE, sample_data.LESION_SAMPLE]
    for source in sources:
        assert source["category"] == "ACAT" and source["thumbnailFileName"] == "icon.png"
        assert source["uris"][0].startswith("file://") and source["loadFileType"] == "VolumeFile"
        assert len(source["uris"]) == len(source["fileNames"]) == len(source["nodeNames"]) == len(source["checksums"])
    # regenerating gives the same bytes, so the registered checksum stays valid for a cached copy
    assert sample_data.sampleDataSources(tmp_path / "again")[0]["checksums"] == sources[0]["checksums"]

    cache = tmp_path / "cache"
    cache.mkdir()
    ct_file, lesion_file = (_download_like_sample_data(s, cache) for s in sources)
    volumes = slicer_scene.volumes
    ct = volumes.AddArchetypeVolume(str(ct_file), sources[0]["nodeNames"][0], 0)
    lesion = volumes.AddArchetypeVolume(str(lesion_file), sources[1]["nodeNames"][0], 1)  # 1: labelmap
    assert ct.IsA("vtkMRMLScalarVolumeNode") and not ct.IsA("vtkMRMLLabelMapVolumeNode")
    assert lesion.IsA("vtkMRMLLabelMapVolumeNode")

    voxels, ijk_to_ras = syntheticHeadCT()
    np.testing.assert_allclose(ijkToRasArray(ct), ijk_to_ras, atol=1e-9)
    np.testing.assert_allclose(ijkToRasArray(lesion), ijk_to_ras, atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), voxels)
    mask = slicer.util.arrayFromVolume(lesion)
    np.testing.assert_array_equal(mask, (voxels == LESION_HU).astype(np.uint8))
    # the lesion is in the patient's LEFT hemisphere: RAS x < 0 at its centre
    k, j, i = np.argwhere(mask).mean(axis=0)
    assert (ijkToRasArray(lesion) @ [i, j, k, 1])[0] < -10.0


def test_nrrd_writer_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="3-D array of"):
        nrrd_exchange.writeNrrd(np.zeros((2, 2), np.float32), np.eye(4), tmp_path / "x.nrrd")
    assert list(tmp_path.iterdir()) == []


# -- the module's self-test checks, headless, on the Sample Data case -----------------------------------
@pytest.fixture
def sample_case(slicer_scene, tmp_path):
    """(controller, CT node as Sample Data loads it, request as ACATSlicerLogic.startExplain builds it)."""
    import types

    from ACATSlicerLib.selftest_case import makeTinyBundle

    source = sample_data.sampleDataSources(tmp_path / "generated")[0]
    volume = slicer_scene.volumes.AddArchetypeVolume(source["uris"][0].removeprefix("file://"),
                                                     source["nodeNames"][0], 0)
    panel = types.SimpleNamespace(model=str(makeTinyBundle(tmp_path / "model", steps=3)), method="counterfactual",
                                  device="cpu", steps=0, alpha=0.0, stepSize=0.0, targets="", reference=MODEL_DEFAULT)
    request = ExplainRequest.fromPanel(panel)
    o = request.options
    assert (o.steps, o.alpha, o.step_size, o.reference, o.targets) == (None, None, None, None, None)
    assert (o.method, o.device) == ("counterfactual", "cpu")
    return ExplainController(slicer_scene.scene, workRoot=tmp_path), volume, request


def test_selftest_explain_checks_pass_on_the_sample_data_case(sample_case):
    """The checks of ACATSlicerTest.test_ExplainDicomSeries (ACATSlicerLib/selftest.py) on the Sample Data case;
    the self-test itself, through the DICOM database, runs in Testing/test_slicer_selftest.py."""
    from ACATSlicerLib import selftest

    assert selftest.explainTwiceProblems(*sample_case, timeoutS=300) == []


def test_selftest_cancel_checks_pass_on_the_sample_data_case(sample_case, tmp_path):
    import time

    from ACATSlicerLib import selftest
    from ACATSlicerLib.selftest_case import makeTinyBundle

    controller, volume, _ = sample_case
    slow = ExplainRequest(str(makeTinyBundle(tmp_path / "slow", steps=5000)), ExplainOptions(device="cpu"))
    assert selftest.cancelProblems(controller, volume, slow, pause=lambda: time.sleep(1.0)) == []


def test_a_bundled_model_added_again_by_its_path_is_offered_once(slicer_scene, tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    bundled = make_random_bundle(models_dir / "brain-stroke-phantom", size=32, slices=3)
    other = make_random_bundle(tmp_path / "mine" / "other", size=32, slices=3, seed=1)
    monkeypatch.setenv("ACAT_MODELS_DIR", str(models_dir))
    controller = ExplainController(slicer_scene.scene, workRoot=tmp_path)
    before = [str(c.path) for c in controller.modelChoices()]
    assert str(bundled) in before
    again = controller.addModel(models_dir / "." / "brain-stroke-phantom")  # the same folder, spelled differently
    assert str(again.path) == str(bundled)
    assert [str(c.path) for c in controller.modelChoices()] == before
    controller.addModel(other)
    assert [str(c.path) for c in controller.modelChoices()] == before + [str(other)]
