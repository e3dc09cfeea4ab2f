"""How long the Slicer module blocks its GUI thread, and how much memory its results take, on a full-size CT.

The module's logic (ACATSlicerLib's `ExplainController`, as ACATSlicerLogic runs it) on a real MRML scene
(slicer-core) with Slicer's slice logics, driven the way the widget drives it: the Explain click
(`start`), then a timer tick every 100 ms (`poll`) until the results are shown, then one repaint of both
slice views (Slicer's own slice pipelines composite the CT, the overlay and the counterfactual), then the
user's next steps: the threshold slider moved five times, an attention mask chosen as the overlay and a
difference map beside the original (read in the background, made on a tick). Every call on the GUI thread
is timed; the table gives the longest and the total per step.

The child process is a stand-in: the real explanation of a 512 x 512 x 300 CT takes minutes on this
machine's CPU. It is a separate process speaking the child's protocol (JSON progress lines, then a result
line) through the module's real runner (pipes, reader threads), and it publishes a results folder of the
real size and format, written beforehand as ``acat explain`` writes it (gzip NRRD, level 1): the saliency,
the counterfactuals towards "none" and "abnormal" (the residual variant's decision targets) and four
attention masks, each a float32 volume on the CT's grid, and report.json.

Memory: the resident set of this process (VmRSS) with the CT loaded, after the results are shown, and
its peak (VmHWM, reset before Explain) over the whole flow, against the CT's own size. The models live in
the child process, not here.

    .venv/bin/python Testing/benchmarks/slicer_gui_block.py                 # 512 x 512 x 300, int16 CT
    .venv/bin/python Testing/benchmarks/slicer_gui_block.py --slices 40     # a quick look

Prints a markdown table; no pass/fail (targets: longest block <= 0.5 s; results < 2x the CT's size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
for path in (REPO / "Testing", REPO / "ACATSlicer", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

CHILD_SECONDS = 2.0  # how long the stand-in child "explains" (progress lines meanwhile)


# -- the stand-in child -------------------------------------------------------------------------------
def child_main(prepared: str, out: str) -> int:
    """Speak ``acat explain --progress-format jsonl``: progress lines, then move the prepared results folder
    to ``out`` (one rename: the child's output folder appears whole, as ``acat explain`` writes it)."""
    def line(event, **fields):
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    steps = 20
    for step in range(steps + 1):
        line("progress", stage="explaining", fraction=0.1 + 0.85 * step / steps, message=f"counterfactual step {step}")
        time.sleep(CHILD_SECONDS / steps)
    os.replace(prepared, out)
    line("result", out=out, prediction="left")
    return 0


def make_runner_class():
    from ACATSlicerLib import runner

    class StandInProcess(runner.ExplainProcess):
        """The module's runner (pipes, reader threads, JSON lines, cancel), running the stand-in child."""

        prepared: Path = Path()

        def start(self, request, inputPath, outDir, onProgress=None):
            self.outDir, self._onProgress = Path(outDir), onProgress
            self._t0 = self._clock()
            self._process = subprocess.Popen(
                [sys.executable, __file__, "--child", str(self.prepared), str(outDir)], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
            self.state = runner.RUNNING
            import threading

            for name, stream in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
                reader = threading.Thread(target=self._read, args=(name, stream), daemon=True)
                reader.start()
                self._readers.append(reader)

    return StandInProcess


# -- the case -------------------------------------------------------------------------------------------
def synthetic_ct(size: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, J, I) int16 HU head-like CT (air, skull, brain, noise) and its IJK-to-RAS (0.5 x 0.5 x 1 mm)."""
    rng = np.random.default_rng(0)
    j, i = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    r = np.sqrt((i / 0.8) ** 2 + (j / 0.9) ** 2)
    plane = np.where(r < 0.8, 35, np.where(r < 1.0, 1000, -1000)).astype(np.int16)
    ct = np.empty((slices, size, size), np.int16)
    for k in range(slices):
        ct[k] = plane + rng.integers(-8, 9, plane.shape, dtype=np.int16)
    ijk_to_ras = np.diag([-0.5, -0.5, 1.0, 1.0])
    return ct, ijk_to_ras


def write_results(folder: Path, ct: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    """A results folder as ``acat explain`` writes it (gzip NRRDs through ACATLogic, report.json); its size in MB."""
    from ACATLogic.io.itk_files import write_itk_file
    from ACATLogic.volume import CTVolume
    from ACATSlicerLib.volume_nodes import geometryFromIjkToRas

    spacing, origin, direction = geometryFromIjkToRas(ijk_to_ras)
    grid = CTVolume(np.zeros((2, 2, 2), np.float32), spacing, origin, direction)
    K, J, I = ct.shape
    k, j, i = np.ogrid[:K, :J, :I]
    blob = ((i - 0.7 * I) ** 2 + (j - J / 2) ** 2 + ((k - K / 2) * 4) ** 2) <= (I / 10) ** 2
    brain = ct > 0
    rng = np.random.default_rng(1)
    saliency = np.where(brain, rng.random(ct.shape, dtype=np.float32) * 0.3, 0).astype(np.float32)
    saliency[blob] = 1.0
    folder.mkdir(parents=True)
    volume = lambda voxels: CTVolume(voxels, spacing, origin, direction)  # noqa: E731
    write_itk_file(volume(saliency), folder / "saliency.nrrd")
    hu = ct.astype(np.float32)
    for label, change in (("none", -20.0), ("abnormal", 8.0)):
        write_itk_file(volume(hu + change * blob + 0.3 * saliency), folder / f"counterfactual_{label}.nrrd")
    for mask in ("early", "middle", "late", "fused"):
        write_itk_file(volume(saliency * 0.8), folder / f"attention_{mask}.nrrd")
    del grid
    probabilities = {"none": 0.1, "left": 0.7, "right": 0.15, "both": 0.05}
    report = {"prediction": "left", "probabilities": probabilities, "device": "cpu",
              "model": {"id": "benchmark", "version": "0"}, "method": "counterfactual",
              "trajectory": {t: [probabilities] * 21 for t in ("none", "abnormal")}}
    (folder / "report.json").write_text(json.dumps(report))
    return sum(p.stat().st_size for p in folder.iterdir()) / 1e6


def memory_mb(field: str) -> float:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS
    except OSError:
        pass


# -- the flow ---------------------------------------------------------------------------------------------
class Clock:
    """Times each call made on the GUI thread, by step."""

    def __init__(self) -> None:
        self.steps: dict = {}

    def call(self, step: str, function, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.steps.setdefault(step, []).append(time.perf_counter() - t0)


def run(size: int, slices: int, work: Path) -> dict:
    from slicer_scene import HeadlessScene

    from ACATLogic.options import ExplainOptions
    from ACATSlicerLib.controller import ExplainController
    from ACATSlicerLib.layout import ViewOptions
    from ACATSlicerLib.request import ExplainRequest
    from ACATSlicerLib.volume_nodes import addVolumeNode

    ct, ijk_to_ras = synthetic_ct(size, slices)
    prepared = work / "prepared"
    t0 = time.perf_counter()
    folder_mb = write_results(prepared, ct, ijk_to_ras)
    print(f"bench: wrote the stand-in results folder ({folder_mb:.0f} MB) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    headless = HeadlessScene(sliceSize=512)
    try:
        scene = headless.scene
        node = addVolumeNode(scene, ct, "CT", ijkToRas=ijk_to_ras)
        node.GetDisplayNode().SetAutoWindowLevel(False)
        node.GetDisplayNode().SetWindowLevel(80, 40)
        ct_mb = ct.nbytes / 2 ** 20
        del ct
        Runner = make_runner_class()
        Runner.prepared = prepared
        controller = ExplainController(scene, runnerFactory=Runner, workRoot=work)
        request = ExplainRequest("benchmark-model", ExplainOptions(device="cpu"))
        clock = Clock()

        def repaint():  # what the views do on the next paint: Slicer's slice pipelines, both views
            for view in ("Red", "Yellow"):
                logic = headless.sliceLogics[view]
                connection = logic.GetImageDataConnection()
                if connection is not None:
                    connection.GetProducer().Update()

        from ACATSlicerLib import display

        display.showOverlay(scene, node, None)  # the CT on screen, as before pressing Explain
        for view in ("Red", "Yellow"):
            headless.sliceLogics[view].FitSliceToAll()
        repaint()
        import gc

        gc.collect()
        rss_before = memory_mb("VmRSS")
        reset_peak()
        wall = time.perf_counter()
        clock.call("Explain click (start)", controller.start, node, request, ViewOptions())
        outcome = None
        while outcome is None:
            time.sleep(0.1)  # the widget's timer interval
            stage = controller.stage
            outcome = clock.call(f"timer tick while {stage}", controller.poll)
        shown = time.perf_counter() - wall
        if outcome.state != "succeeded":
            raise SystemExit(f"bench: the run did not succeed: {outcome.errorMessage}")
        clock.call("first repaint of both views", repaint)
        rss_results = memory_mb("VmRSS")
        peak = memory_mb("VmHWM")
        for percentile in (90.0, 95.0, 97.5, 99.0, 80.0):
            clock.call("threshold slider step", controller.updateDisplay, 0.5, percentile)
        clock.call("overlay: attention chosen", controller.showOverlay, "fused")
        clock.call("beside: difference chosen", controller.showBeside, "difference", "none")
        while controller.busy:
            time.sleep(0.1)
            clock.call("timer tick while reading maps", controller.poll)
        clock.call("repaint after the switches", repaint)
        rss_after_switch = memory_mb("VmRSS")
        controller.close()
        return {"size": f"{size} x {size} x {slices}", "ct_mb": ct_mb, "folder_mb": folder_mb, "steps": clock.steps,
                "explain_to_shown_s": shown, "rss_before_mb": rss_before, "rss_results_mb": rss_results,
                "rss_peak_mb": peak, "rss_after_switch_mb": rss_after_switch}
    finally:
        headless.close()


def table(result: dict) -> str:
    rows = ["| GUI-thread step | calls | longest (s) | total (s) |", "|---|---:|---:|---:|"]
    longest = 0.0
    for step, times in result["steps"].items():
        rows.append(f"| {step} | {len(times)} | {max(times):.3f} | {sum(times):.3f} |")
        longest = max(longest, max(times))
    ct = result["ct_mb"]
    added = result["rss_results_mb"] - result["rss_before_mb"]
    peak = result["rss_peak_mb"] - result["rss_before_mb"]
    rows += ["", f"CT {result['size']} int16 ({ct:.0f} MB); results folder {result['folder_mb']:.0f} MB (gzip NRRD)", "",
             "| measure | value |", "|---|---:|",
             f"| longest GUI-thread block, Explain click to results shown and repainted (s) | {longest:.3f} |",
             f"| Explain click to results shown, wall (s; the stand-in child takes {CHILD_SECONDS:.0f} s) | "
             f"{result['explain_to_shown_s']:.1f} |",
             f"| resident memory with the CT loaded (MB) | {result['rss_before_mb']:.0f} |",
             f"| added by the results shown (MB; x CT size) | {added:.0f} ({added / ct:.2f}x) |",
             f"| peak above the CT-loaded state during the flow (MB; x CT size) | {peak:.0f} ({peak / ct:.2f}x) |",
             f"| added after an attention mask and a difference map were read too (MB) | "
             f"{result['rss_after_switch_mb'] - result['rss_before_mb']:.0f} |"]
    return "\n".join(rows)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="acat-gui-bench-"))
    try:
        print(table(run(args.size, args.slices, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
