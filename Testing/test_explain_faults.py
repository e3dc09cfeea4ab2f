"""``acat explain`` stopped, out of GPU memory, or racing another run: never half a result.

* Ctrl+C (SIGINT) and SIGTERM - what the Slicer module's Cancel and job schedulers send - at several
  points of a real run (loading, the optimisation, the middle of writing the files) end the command with
  128 + the signal's number and leave no output: no --out folder, no temporary folder beside it, and an
  empty --out folder given by the user stays as it was.
* A GPU that runs out of memory (simulated: the explainer raises torch.OutOfMemoryError, as CUDA's
  allocator does) under --device auto: the same explanation runs on the CPU, with a warning on stderr
  and in report.json. With the GPU named explicitly the run fails with that error instead.
* Two runs writing to the same --out folder: the second refuses, and the first's files stay unmixed.

The one-run-at-a-time rule of the Slicer module and the web viewer is in Testing/test_slicer_runner.py
and Testing/test_web_session.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ACATLogic.outputs as outputs
from ACATLogic import ACATInputError
from ACATLogic import explain as explain_module
from ACATLogic.bundle import load_bundle
from ACATCli.main import main as acat_main
from ACATLogic.explain import Explainer
from ACATLogic.io import read_volume, write_volume
from ACATLogic.outputs import write_explanation

from bundles import make_random_bundle
from toy_training import head_volume

ROOT = Path(__file__).resolve().parents[1]
# ``acat explain`` whose every result file takes half a second more to write: a signal sent once the
# "writing" stage has begun arrives in the middle of writing the files
SLOW_WRITES = ("import sys, time; import ACATLogic.outputs as o; write = o.write_itk_file; "
               "o.write_itk_file = lambda *a, **k: (time.sleep(0.5), write(*a, **k))[1]; "
               "from ACATCli.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    ct = root / "ct.nrrd"
    write_volume(head_volume(1, slices=8, size=48), ct)
    return {"ct": ct, "fast": make_random_bundle(root / "fast", size=32, slices=3, steps=3),
            "slow": make_random_bundle(root / "slow", size=32, slices=3, steps=5000)}


def start(args: list[str], slow_writes: bool = False) -> subprocess.Popen:
    entry = ["-c", SLOW_WRITES] if slow_writes else ["-m", "ACATCli"]
    # SIGINT as a terminal delivers it: a test run started in the background (`make test &`, nohup) passes
    # SIGINT on ignored, and Python then installs no Ctrl+C handler at all
    return subprocess.Popen([sys.executable, *entry, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def events_until(proc: subprocess.Popen, wanted, timeout_s: float = 240.0) -> dict:
    """Read jsonl events until ``wanted(event)``; returns that event."""
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        event = json.loads(line)
        if wanted(event):
            return event
        assert time.monotonic() < deadline, "the run did not get there in time"
    raise AssertionError(f"the run ended first: {proc.wait()} {proc.stderr.read()[-2000:]}")


@pytest.mark.parametrize("point, sig", [
    ("loading", signal.SIGTERM),      # the model being loaded, the scan just read
    ("optimising", signal.SIGINT),    # inside the counterfactual search (SIGTERM there: the next test)
    ("writing", signal.SIGTERM),      # files half written into the temporary folder
])
def test_a_cancelled_explain_leaves_no_output(case, tmp_path, point, sig):
    out = tmp_path / "results"
    bundle = case["fast"] if point == "writing" else case["slow"]
    proc = start(["explain", str(case["ct"]), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                  "--progress-format", "jsonl"], slow_writes=point == "writing")
    wanted = {"loading": lambda e: e.get("stage") == "loading",
              "optimising": lambda e: e.get("message", "").startswith("counterfactual step 2/"),
              "writing": lambda e: e.get("stage") == "writing"}[point]
    events_until(proc, wanted)
    if point == "writing":
        time.sleep(0.7)  # the first file is written, the second is being written
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".results.")], "not writing yet"
    proc.send_signal(sig)
    # keep reading its progress lines: a full stdout pipe would block the process (as it would in any
    # reader that stopped reading), and a blocked process cannot answer the signal
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines()[-1] == "acat: interrupted" and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no results, no temporary folder


def test_an_empty_out_folder_given_by_the_user_stays_as_it_was(case, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    proc = start(["explain", str(case["ct"]), "--model", str(case["slow"]), "--out", str(out), "--device", "cpu",
                  "--progress-format", "jsonl"])
    events_until(proc, lambda e: e.get("message", "").startswith("counterfactual step 1/"))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)  # drains stdout (see above)
    assert proc.returncode == 128 + signal.SIGTERM
    assert [p.name for p in tmp_path.iterdir()] == ["results"] and list(out.iterdir()) == []


def test_an_interrupt_in_the_middle_of_writing_removes_what_was_written(case, tmp_path, monkeypatch):
    bundle = load_bundle(case["fast"])
    volume = read_volume(case["ct"])
    explanation = Explainer(bundle, device="cpu").explain(volume, targets=["none"])
    written = []
    real = outputs.write_itk_file

    def interrupted_on_the_second_file(vol, path):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        return real(vol, path)

    monkeypatch.setattr(outputs, "write_itk_file", interrupted_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        write_explanation(explanation, tmp_path / "out", bundle=bundle, volume=volume)
    assert written and not written[0].exists() and list(tmp_path.iterdir()) == []


def test_two_runs_into_one_folder_never_mix(case, tmp_path, monkeypatch):
    """The second writer finds the folder filled by the first while it was writing: it refuses."""
    bundle = load_bundle(case["fast"])
    volume = read_volume(case["ct"])
    explanation = Explainer(bundle, device="cpu").explain(volume, targets=["none"])
    out = tmp_path / "out"
    real = outputs.write_overview

    def another_run_finishes_meanwhile(*args, **kwargs):
        out.mkdir()
        (out / "report.json").write_text('{"from": "the other run"}')
        return real(*args, **kwargs)

    monkeypatch.setattr(outputs, "write_overview", another_run_finishes_meanwhile)
    with pytest.raises(ACATInputError, match="another run wrote into the output folder meanwhile; its files are "
                                             "kept and these results were not written"):
        write_explanation(explanation, out, bundle=bundle, volume=volume)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert json.loads((out / "report.json").read_text()) == {"from": "the other run"}


class GpuThatRunsOut(Explainer):
    """An explainer on a pretend GPU (the CPU underneath) that runs out of memory in the optimisation,
    with the message CUDA's allocator gives; on the CPU it explains for real."""

    attempts: list = []

    def __init__(self, bundle, device="auto", **kwargs):
        super().__init__(bundle, device="cpu", **kwargs)
        self.pretend = "cuda" if device in ("auto", "gpu", "cuda") else device
        GpuThatRunsOut.attempts.append(self.pretend)

    def explain(self, *args, **kwargs):
        if self.pretend == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 1.00 GiB total "
                                         "capacity; 0.90 GiB already allocated)")
        return super().explain(*args, **kwargs)


def test_out_of_gpu_memory_falls_back_to_the_cpu_with_a_message(case, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(explain_module, "Explainer", GpuThatRunsOut)
    monkeypatch.setattr(GpuThatRunsOut, "attempts", [])
    out = tmp_path / "out"
    code = acat_main(["explain", str(case["ct"]), "--model", str(case["fast"]), "--out", str(out),
                      "--progress-format", "jsonl"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert GpuThatRunsOut.attempts == ["cuda", "cpu"]
    assert ("warning: the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 1.00 GiB "
            "total capacity; 0.90 GiB already allocated)); explaining on the CPU instead, which is slower") in captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["event"] == "result" and "saliency.nrrd" in result["files"]
    report = json.loads((out / "report.json").read_text())
    assert any(w.startswith("the GPU ran out of memory") and w.endswith("explained on the CPU instead")
               for w in report["warnings"])

    # the GPU named explicitly: no silent change of device, the error says what happened
    monkeypatch.setattr(GpuThatRunsOut, "attempts", [])
    code = acat_main(["explain", str(case["ct"]), "--model", str(case["fast"]), "--out", str(tmp_path / "gpu"),
                      "--device", "gpu"])
    err = capsys.readouterr().err
    assert code == 1 and GpuThatRunsOut.attempts == ["cuda"] and not (tmp_path / "gpu").exists()
    assert "acat: internal error: OutOfMemoryError: CUDA out of memory" in err


def test_main_memory_running_out_is_not_mistaken_for_the_gpu(case, tmp_path, monkeypatch, capsys):
    from ACATCli.commands import out_of_gpu_memory

    assert out_of_gpu_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert out_of_gpu_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)"))
    assert out_of_gpu_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not out_of_gpu_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: not "
                                              "enough memory: you tried to allocate 1073741824 bytes."))

    class CpuRunsOut(Explainer):
        def explain(self, *args, **kwargs):
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 bytes.")

    monkeypatch.setattr(explain_module, "Explainer", CpuRunsOut)
    assert acat_main(["explain", str(case["ct"]), "--model", str(case["fast"]), "--out", str(tmp_path / "o")]) == 1
    assert "DefaultCPUAllocator" in capsys.readouterr().err and not (tmp_path / "o").exists()
