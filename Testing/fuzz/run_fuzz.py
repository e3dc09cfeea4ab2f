"""Fuzz the DICOM and NRRD/NIfTI readers, the model-card parser and the web viewer's message handling for a
bounded time (issues 9 and 17).

    .venv/bin/python Testing/fuzz/run_fuzz.py --seconds 120        # what `make fuzz` runs
    .venv/bin/python Testing/fuzz/run_fuzz.py --seconds 30 --targets model-card

Hypothesis draws mutations of real seed files (Testing/fuzz/targets.py); each mutated input is read
in-process by `read_volume` or `read_card`. The only accepted failure is `ACATInputError`; any other
exception, a successful read that returns NaN voxels, an example running past ``--example-timeout``,
or a worker process killed by a signal (a crash inside a C library) is a crash. The time is shared
equally by the targets, run one after another, each in its own worker process so that a segfault
cannot take the run down with it: the parent keeps the input the worker was reading as the reproducer
and starts a new worker for the rest of the time.

Each distinct crash (exception type and the line that raised it) is saved once under
``--out``/crashes/TARGET/SIGNATURE/: the input files, ``example.json`` (the Hypothesis example,
replayable with `replay`), and ``traceback.txt``. Found crashes become regression tests in
Testing/test_fuzz_regressions.py.

Prints a table (examples tried, read, input errors, crashes, peak memory per target) and exits 1 on any
crash or when a worker's peak resident memory (its own, from ``wait4``) passed ``--max-peak-mb``
(default 2048): a reader that allocates what a damaged header claims is a finding even when the machine
has the memory. The workers read under ACAT's memory budget (``ACAT_MAX_MEMORY_GB``, default here 1 GiB,
`ACATLogic.io.limits`), as a user's ``--max-memory-gb`` would set it.
The Hypothesis example database lives in the user cache (``~/.cache/acat/hypothesis``), never in
the repository.

The web viewer's message handling has two targets of its own (Testing/fuzz/web_targets.py): ``web-guard``
(the token, Host and Origin checks, the allowed folders, view size clamping, the bounded un-chunker and
the restricted RPCs, in-process) and ``web-server`` (wslink messages to a real ``acat view`` that the
worker starts; a target with a ``setup`` is set up before its examples, and its ``peak_mb`` - the
viewer's peak resident memory - counts as the target's peak memory). For these, "read" counts examples
the code accepted or answered and "input errors" those it refused.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]  # Testing/ (fuzz.targets) and the repository root

DEFAULT_OUT = HERE.parents[1] / "fuzz-output"


def _hypothesis_home() -> Path:
    """Hypothesis keeps its example database and caches here, in the user cache, never in the repository."""
    from ACATData import sample_data

    return sample_data.cache_dir() / "hypothesis"


# before Hypothesis is imported anywhere (it would create .hypothesis/ in the working folder)
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(_hypothesis_home()))
STALL_GRACE_S = 10  # a worker silent this long past --example-timeout is stuck in C code: killed, input kept
#: the readers' memory budget in the workers (GiB), unless ACAT_MAX_MEMORY_GB is set already
WORKER_BUDGET_GIB = "1"


class ExampleTimeout(BaseException):
    """Raised by SIGALRM inside one example (BaseException: no `except Exception` in the code under test
    may swallow it)."""


def _signature(exc: BaseException) -> str:
    """'ValueError at dicom_scan.py:163': the exception type and the innermost project (else any) frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/ACATLogic/" in f.filename.replace("\\", "/")]
    frame = (ours or frames or [None])[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
    return f"{type(exc).__name__} at {where}"


def _slug(signature: str) -> str:
    return hashlib.sha1(signature.encode()).hexdigest()[:10]


def _save(out: Path, target: str, signature: str, example: dict, work: Path, text: str) -> Path:
    folder = out / "crashes" / target / _slug(signature)
    if folder.exists():
        return folder
    shutil.copytree(work, folder / "input", symlinks=True)
    from fuzz.targets import example_to_json

    (folder / "example.json").write_text(json.dumps(
        {"target": target, "signature": signature, "example": example_to_json(example)}, indent=1))
    (folder / "traceback.txt").write_text(text)
    return folder


# ------------------------------------------------------------------------------------------------
# The worker: one target, in its own process
# ------------------------------------------------------------------------------------------------
def worker(target_name: str, seconds: float, out: Path, example_timeout: float) -> int:
    import warnings

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    from fuzz.targets import TARGETS, example_to_json

    warnings.simplefilter("ignore")
    target = TARGETS[target_name]
    work = out / "work" / target_name
    status_path = out / f"{target_name}.status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else \
        {"examples": 0, "read": 0, "input error": 0, "crashes": {}}
    database = DirectoryBasedExampleDatabase(str(_hypothesis_home() / "examples"))
    deadline = time.monotonic() + seconds
    last_write = 0.0

    def write_status(force: bool = False) -> None:
        nonlocal last_write
        if force or time.monotonic() - last_write > 1.0:
            if hasattr(target, "peak_mb"):  # a process the target drives (web-server: the viewer)
                status["peak_child_mb"] = max(status.get("peak_child_mb", 0.0), target.peak_mb)
            tmp = status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            os.replace(tmp, status_path)
            last_write = time.monotonic()

    def on_alarm(signum, frame):
        raise ExampleTimeout(f"an example ran past {example_timeout} s")

    signal.signal(signal.SIGALRM, on_alarm)
    (out / f"{target_name}.current").write_text("")

    @settings(max_examples=25, deadline=None, database=database, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def one(example):
        if time.monotonic() > deadline:
            return
        (out / f"{target_name}.current").write_text(json.dumps(example_to_json(example)))
        signal.setitimer(signal.ITIMER_REAL, example_timeout)
        try:
            result = target.run(example, work)
            signal.setitimer(signal.ITIMER_REAL, 0)
            status[result] += 1
        except BaseException as exc:  # noqa: BLE001 - everything but the input error is a finding
            signal.setitimer(signal.ITIMER_REAL, 0)
            if isinstance(exc, KeyboardInterrupt):
                raise
            signature = "hang (ExampleTimeout)" if isinstance(exc, ExampleTimeout) else _signature(exc)
            entry = status["crashes"].setdefault(signature, {"count": 0, "saved": ""})
            entry["count"] += 1
            if not entry["saved"]:
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                entry["saved"] = str(_save(out, target_name, signature, example, work, text))
        status["examples"] += 1
        write_status()

    if hasattr(target, "setup"):  # e.g. start the viewer (web-server), beating the heart while it starts
        write_status(force=True)
        target.setup(heartbeat=write_status)
    while time.monotonic() < deadline:
        one()
    write_status(force=True)
    return 0


def _reap(proc: subprocess.Popen, block: bool) -> tuple[bool, int]:
    """Whether ``proc`` has ended, and its peak resident memory in kB (from wait4: the child's own)."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return False, 0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return True, int(usage.ru_maxrss)


# ------------------------------------------------------------------------------------------------
# The parent: time sharing, worker restarts, the summary
# ------------------------------------------------------------------------------------------------
def _run_target(name: str, seconds: float, out: Path, example_timeout: float) -> dict:
    status_path = out / f"{name}.status.json"
    status_path.unlink(missing_ok=True)
    end = time.monotonic() + seconds
    restarts = 0
    peak_kb = 0
    env = {**os.environ, "ACAT_MAX_MEMORY_GB": os.environ.get("ACAT_MAX_MEMORY_GB") or WORKER_BUDGET_GIB}
    while True:
        left = end - time.monotonic()
        if left < 1.0:
            break
        log = open(out / f"{name}.worker.log", "a")
        proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--seconds", f"{left:.1f}",
                                 "--out", str(out), "--example-timeout", str(example_timeout)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        stalled = False
        limit = example_timeout + STALL_GRACE_S
        while True:
            done, kb = _reap(proc, block=False)
            if done:
                break
            time.sleep(0.5)
            beat = status_path.stat().st_mtime if status_path.exists() else None
            quiet_for = time.time() - beat if beat else time.monotonic() - (end - seconds)
            if quiet_for > limit or time.monotonic() > end + limit:
                stalled = True
                proc.kill()
                done, kb = _reap(proc, block=True)
                break
        peak_kb = max(peak_kb, kb)
        log.close()
        if proc.returncode == 0 and not stalled:
            break
        # killed by a signal (a crash in C code), or stuck: the input it was reading is the reproducer
        signature = "hang (worker stalled)" if stalled else f"worker died (exit {proc.returncode})"
        status = json.loads(status_path.read_text()) if status_path.exists() else \
            {"examples": 0, "read": 0, "input error": 0, "crashes": {}}
        status["examples"] += 1
        entry = status["crashes"].setdefault(signature, {"count": 0, "saved": ""})
        entry["count"] += 1
        current = out / f"{name}.current"
        if not entry["saved"]:
            from fuzz.targets import example_from_json

            example = example_from_json(json.loads(current.read_text() or "{}")) if current.exists() else {}
            work = out / "work" / name
            work.mkdir(parents=True, exist_ok=True)
            entry["saved"] = str(_save(out, name, signature, example, work,
                                       (out / f"{name}.worker.log").read_text(errors="replace")[-20000:]))
        status_path.write_text(json.dumps(status))
        restarts += 1
        if restarts > 20:
            break
    status = json.loads(status_path.read_text()) if status_path.exists() else \
        {"examples": 0, "read": 0, "input error": 0, "crashes": {}}
    status["peak_mb"] = max(peak_kb / 1024, status.get("peak_child_mb", 0.0))
    return status


def replay(example_json: Path, work: Path) -> str:
    """Run one saved example again (``--replay crashes/T/S/example.json``); raises what it raised."""
    import warnings

    from fuzz.targets import TARGETS, example_from_json

    warnings.simplefilter("ignore")
    saved = json.loads(example_json.read_text())
    return TARGETS[saved["target"]].run(example_from_json(saved["example"]), work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="total time, shared by the targets (default 120)")
    parser.add_argument("--targets", default="dicom,image-files,model-card,web-guard,web-server",
                        help="comma-separated: dicom, image-files, model-card, web-guard, web-server (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where crash reproducers go (default {DEFAULT_OUT.name}/ in the repository)")
    parser.add_argument("--example-timeout", type=float, default=30.0,
                        help="seconds one example may run before it counts as a hang (default 30)")
    parser.add_argument("--max-peak-mb", type=float, default=2048,
                        help="fail when a worker's peak resident memory passes this (MB; default 2048)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=Path, help="run one saved example.json again and show what happens")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args.worker, args.seconds, args.out, args.example_timeout)
    if args.replay:
        print(replay(args.replay, args.out / "replay"))
        return 0

    from fuzz.targets import TARGETS

    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {sorted(TARGETS)}")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(args.out / "work")
    share = args.seconds / len(names)
    print(f"fuzzing {', '.join(names)} for {args.seconds:g} s ({share:.0f} s each); reproducers go to "
          f"{args.out / 'crashes'}", flush=True)
    results = {}
    for name in names:
        t0 = time.monotonic()
        results[name] = _run_target(name, share, args.out, args.example_timeout)
        results[name]["seconds"] = time.monotonic() - t0
    rows = ["| target | seconds | examples tried | read | input errors | crashes | peak memory (MB) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total_crashes = 0
    for name, s in results.items():
        crashes = sum(c["count"] for c in s["crashes"].values())
        total_crashes += crashes
        rows.append(f"| {name} | {s['seconds']:.0f} | {s['examples']} | {s['read']} | {s['input error']} | {crashes} "
                    f"| {s['peak_mb']:.0f} |")
    print("\n".join(rows))
    for name, s in results.items():
        for signature, c in s["crashes"].items():
            print(f"CRASH {name}: {signature} ({c['count']} examples); reproducer: {c['saved']}")
    over = {name: s["peak_mb"] for name, s in results.items() if s["peak_mb"] > args.max_peak_mb}
    for name, mb in over.items():
        print(f"MEMORY {name}: a worker's peak resident memory was {mb:.0f} MB, over --max-peak-mb {args.max_peak_mb:g}")
    examples = sum(s["examples"] for s in results.values())
    peak = max((s["peak_mb"] for s in results.values()), default=0.0)
    print(f"examples tried: {examples}; crashes: {total_crashes}; peak memory: {peak:.0f} MB "
          f"(budget ACAT_MAX_MEMORY_GB={os.environ.get('ACAT_MAX_MEMORY_GB') or WORKER_BUDGET_GIB})")
    return 1 if total_crashes or over else 0


if __name__ == "__main__":
    sys.exit(main())
