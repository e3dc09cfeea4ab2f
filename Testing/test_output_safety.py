"""Outputs never cost an input, and every refusal comes before the work (issue 17, points 5, 6, 8, 10).

Each test runs the real ``acat`` in a subprocess on real files, as a user would: ``--overwrite`` into a
folder that holds the input (a DICOM series, an NRRD, a detached header's data file, one of several
files), an output inside the input, a second run while one writes the same output, a lock left by a
killed run, an existing file as ``--out``, a read-only or full file system (a small tmpfs mounted in a
user namespace), file names that are not UTF-8. Each asserts the exit code, the one line on stderr, the
inputs untouched (sha256 of every file, link and folder) and nothing partial left beside the output.

Where a test needs an unprivileged user (root reads any folder) or its own mount, it runs ``acat``
under ``unshare --user`` and is skipped where user namespaces are not available.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ACATLogic.io import read_volume, write_dicom_series, write_volume
from ACATLogic.io.itk_files import write_itk_file

from bad_input_corpus import snapshot
from bundles import make_random_bundle
from toy_training import head_volume

ACAT = Path(sys.executable).with_name("acat")
FAST = ["--method", "gradient", "--device", "cpu"]
NO_MODEL = ["--model", "/nonexistent/model"]  # a refusal of the output must come before the model is looked at


# ------------------------------------------------------------------------------------------------
# Running acat
# ------------------------------------------------------------------------------------------------
def acat(*args, prefix=(), env=None, timeout=300) -> subprocess.CompletedProcess:
    """``acat ARGS`` for real; arguments may be bytes (file names that are not UTF-8)."""
    return subprocess.run([*prefix, os.fsencode(ACAT), *[os.fsencode(a) for a in args]], capture_output=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def err(result: subprocess.CompletedProcess) -> str:
    """stderr, which must be exactly one line: ``acat: error: ...``."""
    text = result.stderr.decode("utf-8", "replace")
    lines = text.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("acat: error: "), text
    return lines[0]


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def unprivileged() -> list[str]:
    """A command prefix that runs as an ordinary user who owns this test's files (root reads any folder)."""
    if os.geteuid() != 0:
        return []
    prefix = ["unshare", "--user", f"--map-user={1000}"]
    if not _works(prefix + ["true"]):
        pytest.skip("root, and no user namespaces to run as an ordinary user")
    return prefix


def on_small_fs(folder: Path, options: str, *args) -> subprocess.CompletedProcess:
    """``acat ARGS`` with a fresh tmpfs (``options``, e.g. "size=40k" or "ro") mounted on ``folder``, in a
    private mount namespace; stdout ends with the listing of ``folder`` after the run (the mount goes
    away with the namespace)."""
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs {folder}"]
    if not _works(probe):
        pytest.skip("no user and mount namespaces to mount a small file system")
    script = textwrap.dedent('''
        mount -t tmpfs -o "$1" tmpfs "$2" || exit 99
        dir="$2"; shift 2
        "$@"; rc=$?
        echo "LISTING:$(ls -A "$dir" | tr '\\n' ' ')"
        exit $rc''')
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", options,
                           str(folder), str(ACAT), *map(str, args)], capture_output=True, timeout=300)


def listing(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode().rsplit("LISTING:", 1)[-1].strip()


def leftovers(out: Path) -> list[str]:
    """Temporary folders, lock files or old copies beside ``out``."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}*")) if out.parent.is_dir() else []


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    volume = head_volume(1, slices=6, size=32)
    write_volume(volume, root / "ct.nrrd")
    write_dicom_series(volume, root / "series")
    raw = write_itk_file(volume, root / "raw.nrrd", compress=False).read_bytes()
    return {"root": root, "volume": volume, "ct": root / "ct.nrrd", "series": root / "series",
            "raw": raw, "bundle": make_random_bundle(root / "bundle", size=32, slices=3, steps=2)}


def nhdr(folder: Path, raw: bytes, data_path: Path, name: str = "scan.nhdr") -> Path:
    """A detached NRRD header in ``folder`` whose voxels are ``data_path`` (anywhere)."""
    end = raw.index(b"\n\n")
    folder.mkdir(parents=True, exist_ok=True)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_bytes(raw[end + 2:])
    header = folder / name
    header.write_bytes(raw[:end + 1] + b"data file: " + os.fsencode(os.path.abspath(data_path)) + b"\n\n")
    return header


def explain(data, *inputs, out, extra=()) -> subprocess.CompletedProcess:
    return acat("explain", *inputs, "--out", out, "--model", data["bundle"], *FAST, *extra)


# ------------------------------------------------------------------------------------------------
# --overwrite never deletes an input (point 5)
# ------------------------------------------------------------------------------------------------
def test_overwrite_into_a_folder_holding_the_dicom_input_deletes_nothing(data, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(data["series"], out / "series")
    (out / "notes.txt").write_text("a sibling file\n")
    before = snapshot(tmp_path)
    result = explain(data, out / "series", out=out, extra=["--overwrite"])
    assert result.returncode == 2
    assert f"{out}: the output folder holds the input {out / 'series'}; writing the results there would replace it" \
        in err(result)
    assert snapshot(tmp_path) == before  # every byte, name and folder as it was; no lock, no temporary folder


def test_overwrite_with_out_the_folder_of_an_nrrd_input_deletes_nothing(data, tmp_path):
    shutil.copy(data["ct"], tmp_path / "ct.nrrd")
    before = snapshot(tmp_path)
    result = explain(data, tmp_path / "ct.nrrd", out=tmp_path, extra=["--overwrite"])
    assert result.returncode == 2 and "the output folder holds the input" in err(result)
    assert snapshot(tmp_path) == before


def test_a_detached_headers_data_file_inside_out_counts_as_an_input(data, tmp_path):
    """The header lies elsewhere; only its voxels lie in the folder that --overwrite would replace."""
    out = tmp_path / "results"
    header = nhdr(tmp_path / "headers", data["raw"], out / "voxels.raw")
    (out / "old_report.json").write_text("{}")
    before = snapshot(tmp_path)
    result = explain(data, header, out=out, extra=["--overwrite"])
    assert result.returncode == 2 and f"the output folder holds the input {out / 'voxels.raw'}" in err(result)
    assert snapshot(tmp_path) == before


def test_one_of_several_dicom_files_inside_out_protects_it(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(data["series"], tmp_path / "series")
    last = sorted((tmp_path / "series").iterdir())[-1]
    shutil.move(last, out / last.name)  # one slice of the series given file by file lies in --out
    inputs = sorted((tmp_path / "series").iterdir()) + [out / last.name]
    before = snapshot(tmp_path)
    result = explain(data, *inputs, out=out, extra=["--overwrite"])
    assert result.returncode == 2 and "the output folder holds the input" in err(result)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["inside the series", "the series itself", "through a link"])
def test_out_inside_or_equal_to_the_input_folder_is_refused(data, tmp_path, where):
    shutil.copytree(data["series"], tmp_path / "series")
    if where == "through a link":  # a link elsewhere that points into the input
        (tmp_path / "elsewhere").symlink_to(tmp_path / "series", target_is_directory=True)
        out = tmp_path / "elsewhere" / "results"
    else:
        out = tmp_path / "series" / "results" if where == "inside the series" else tmp_path / "series"
    before = snapshot(tmp_path / "series")
    result = explain(data, tmp_path / "series", out=out, extra=["--overwrite"])
    assert result.returncode == 2
    assert any(s in err(result) for s in ("lies inside the input folder", "would overwrite the input"))
    assert snapshot(tmp_path / "series") == before


def test_overwrite_of_earlier_results_replaces_them_whole(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"from": "an earlier run"}')
    (out / "stale.nrrd").write_text("from an earlier run\n")
    result = explain(data, data["ct"], out=out, extra=["--overwrite"])
    assert result.returncode == 0, result.stderr.decode()
    names = sorted(p.name for p in out.iterdir())
    assert "stale.nrrd" not in names and "report.json" in names and "saliency.nrrd" in names
    assert "earlier" not in (out / "report.json").read_text() and leftovers(out) == []


@pytest.mark.parametrize("content", ["files", "a folder"])
def test_overwrite_never_empties_a_folder_that_does_not_hold_earlier_results(data, tmp_path, content):
    """--out ~ --overwrite: a folder without report.json (or with folders in it) is not ACAT's to replace."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work\n")
    if content == "a folder":
        (home / "report.json").write_text("{}")
        (home / "papers").mkdir()
    before = snapshot(tmp_path)
    result = acat("explain", data["ct"], "--out", home, *NO_MODEL, "--overwrite")
    assert result.returncode == 2
    assert err(result) == (f"acat: error: {home}: the output folder does not hold earlier ACAT results (no report.json, "
                           "or it holds folders); --overwrite replaces only those - choose another output folder")
    assert snapshot(tmp_path) == before


def test_convert_never_overwrites_an_input(data, tmp_path):
    """--overwrite onto a detached header's data file, a hard link of the input, a link to it."""
    header = nhdr(tmp_path, data["raw"], tmp_path / "voxels.nrrd")  # a data file that happens to end in .nrrd
    os.link(tmp_path / "voxels.nrrd", tmp_path / "hardlink.nrrd")
    (tmp_path / "symlink.nrrd").symlink_to(tmp_path / "voxels.nrrd")
    before = snapshot(tmp_path)
    for target in ("voxels.nrrd", "hardlink.nrrd", "symlink.nrrd", "scan.nhdr"):
        result = acat("convert", header, tmp_path / target, "--overwrite")
        assert result.returncode == 2, target
        assert "would overwrite the input" in err(result) or "unsupported output type" in err(result), target
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# One writer at a time (point 6)
# ------------------------------------------------------------------------------------------------
#: a sitecustomize that holds ``acat explain`` at the start of writing until the file $ACAT_TEST_GATE exists
GATE = textwrap.dedent('''
    import os, time
    if os.environ.get("ACAT_TEST_GATE"):
        import ACATLogic.outputs as outputs
        real = outputs.write_explanation
        def gated(*args, **kwargs):
            while not os.path.exists(os.environ["ACAT_TEST_GATE"]):
                time.sleep(0.05)
            return real(*args, **kwargs)
        outputs.write_explanation = gated
''')


def start_gated(data, tmp_path: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(GATE)
    gate = tmp_path / "gate"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
           "ACAT_TEST_GATE": str(gate)}
    proc = subprocess.Popen([str(ACAT), "explain", str(data["ct"]), "--out", str(out), "--model", str(data["bundle"]),
                             *FAST, "--overwrite", "--progress-format", "jsonl"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # until it is about to write (it holds the lock from its start)
        if json.loads(line).get("stage") == "writing":
            return proc, gate
    raise AssertionError(f"the first run ended early: {proc.wait()} {proc.stderr.read()}")


def test_a_second_run_on_the_same_output_is_refused_and_the_first_completes(data, tmp_path):
    out = tmp_path / "out"
    first, gate = start_gated(data, tmp_path, out)
    try:
        second = explain(data, data["ct"], out=out, extra=["--overwrite"])
        assert second.returncode == 2
        assert (f"{out}: another run (acat explain, process {first.pid}) is writing this output now; wait for it to "
                "finish, or choose another output") in err(second)
    finally:
        gate.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["event"] == "result"
    assert (out / "report.json").is_file() and leftovers(out) == []


def test_a_lock_left_by_a_killed_run_is_taken_over(data, tmp_path):
    out = tmp_path / "out"
    first, _ = start_gated(data, tmp_path, out)
    first.send_signal(signal.SIGKILL)  # no clean-up at all: the lock file stays
    first.communicate(timeout=60)
    assert (tmp_path / ".out.lock").is_file()
    result = explain(data, data["ct"], out=out)
    assert result.returncode == 0, result.stderr.decode()
    assert (out / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


# ------------------------------------------------------------------------------------------------
# Refused before the work: the output (point 10)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_existing_file_as_out_is_refused_first(data, tmp_path, overwrite):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    result = acat("explain", data["ct"], "--out", target, *NO_MODEL, *(["--overwrite"] if overwrite else []))
    assert result.returncode == 2
    assert err(result) == (f"acat: error: {target}: the output path is an existing file, not a folder; the results are "
                           "a folder of files - choose a folder name")
    assert target.read_text() == "keep me\n" and leftovers(target) == []


def test_a_read_only_out_is_refused_first(data, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    result = on_small_fs(folder, "ro,size=1m", "explain", data["ct"], "--out", folder / "results", *NO_MODEL)
    assert result.returncode == 2, result.stderr
    assert err(result) == (f"acat: error: {folder}: cannot write here (Read-only file system); choose an output in a "
                           "folder you can write to")
    result = on_small_fs(folder, "ro,size=1m", "convert", data["ct"], folder / "ct.nii.gz")
    assert result.returncode == 2 and "cannot write here (Read-only file system)" in err(result)


def test_a_folder_without_write_permission_is_refused_first(data, tmp_path):
    prefix = unprivileged()
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = acat("explain", data["ct"], "--out", folder / "results", *NO_MODEL, prefix=prefix)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 2
    assert err(result) == (f"acat: error: {folder}: cannot write here (Permission denied); choose an output in a "
                           "folder you can write to")
    assert list(folder.iterdir()) == []


def test_a_full_disk_says_so_and_names_the_output(data, tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    result = on_small_fs(folder, "size=40k", "explain", data["ct"], "--out", folder / "results", "--model",
                         data["bundle"], *FAST, "-q")
    assert result.returncode == 2, result.stderr
    assert err(result) == (f"acat: error: {folder / 'results'}: no space left on device while writing the results; "
                           "nothing was written - free some space or choose another output")
    assert listing(result) == ""  # no results, no temporary folder, no lock
    result = on_small_fs(folder, "size=8k", "convert", data["ct"], folder / "ct.nrrd")
    assert result.returncode == 2
    assert err(result) == (f"acat: error: {folder / 'ct.nrrd'}: no space left on device; nothing was written - free "
                           "some space or choose another output")
    assert listing(result) == ""


# ------------------------------------------------------------------------------------------------
# File names of any bytes (point 8)
# ------------------------------------------------------------------------------------------------
def test_nrrd_and_nifti_paths_that_are_not_utf8_work(data, tmp_path):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/d\xff"))
    folder.mkdir()
    scan = folder / os.fsdecode(b"s\xfe\xff.nrrd")
    shutil.copy(data["ct"], scan)
    before = scan.read_bytes()
    result = acat("info", "--json", scan)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["size_ijk"] == [32, 32, 6]
    for name in (b"o\xff.nii.gz", b"o\xff.nrrd", b"o\xff.nii"):
        out = folder / os.fsdecode(name)
        result = acat("convert", scan, out)
        assert result.returncode == 0, result.stderr
        assert np.array_equal(read_volume(out).voxels_hu, data["volume"].voxels_hu)
    result = explain(data, scan, out=folder / os.fsdecode(b"r\xe9sults"))
    assert result.returncode == 0, result.stderr
    assert (folder / os.fsdecode(b"r\xe9sults") / "saliency.nrrd").is_file()
    names = sorted(os.fsencode(p.name) for p in folder.iterdir())
    assert names == [b"o\xff.nii", b"o\xff.nii.gz", b"o\xff.nrrd", b"r\xe9sults", b"s\xfe\xff.nrrd"]  # no .partial
    assert scan.read_bytes() == before


def test_a_detached_header_with_a_non_utf8_name_and_a_far_data_file_is_one_line(data, tmp_path):
    header = nhdr(tmp_path / "h", data["raw"], tmp_path / "v" / "voxels.raw", name=os.fsdecode(b"h\xff.nhdr"))
    header.write_bytes(header.read_bytes().replace(os.fsencode(tmp_path / "v" / "voxels.raw"), b"../v/voxels.raw"))
    result = acat("info", header)
    assert result.returncode == 2
    assert err(result).endswith(r"h\xff.nhdr: a detached NRRD header whose name is not valid UTF-8 and whose data file "
                                "lies in another folder cannot be read; rename it, or copy it to a name of ordinary "
                                "characters")
    beside = nhdr(tmp_path / "h2", data["raw"], tmp_path / "h2" / os.fsdecode(b"v\xe4.raw"), name=os.fsdecode(b"h\xff.nhdr"))
    beside.write_bytes(beside.read_bytes().replace(os.fsencode(tmp_path / "h2") + b"/", b""))
    result = acat("info", "--json", beside)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["size_ijk"] == [32, 32, 6]


# ------------------------------------------------------------------------------------------------
# The pieces underneath (in-process)
# ------------------------------------------------------------------------------------------------
def test_the_last_check_before_a_swap_keeps_an_input_that_moved_into_the_output(tmp_path):
    """An input that arrived inside the output after the run started (a user's mv) is still never deleted."""
    from ACATLogic import ACATInputError
    from ACATLogic.io.atomic import atomic_directory

    out = tmp_path / "out"
    out.mkdir()
    (out / "scan.nrrd").write_text("voxels")
    with pytest.raises(ACATInputError, match="the output holds the input .*scan.nrrd; nothing was replaced"):
        with atomic_directory(out, overwrite=True, protect=[out / "scan.nrrd"]) as tmp:
            (tmp / "report.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "scan.nrrd").read_text() == "voxels"
    with atomic_directory(out, overwrite=True, protect=[tmp_path / "elsewhere.nrrd"]) as tmp:
        (tmp / "report.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old copy is gone, nothing beside


def test_without_flock_a_lock_is_exclusive_and_a_dead_holders_lock_is_taken_over(tmp_path, monkeypatch):
    """File systems without flock: O_EXCL, and the holder's PID decides whether a lock is stale."""
    import socket

    from ACATLogic import ACATInputError
    from ACATLogic.io import output_guard

    monkeypatch.setattr(output_guard, "fcntl", None)
    out = tmp_path / "out"
    with output_guard.claim_output(out, [], kind="folder", overwrite=False, command="acat explain"):
        lock = tmp_path / ".out.lock"
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(ACATInputError, match=rf"another run \(acat explain, process {os.getpid()}\) is writing"):
            with output_guard.claim_output(out, [], kind="folder", overwrite=False):
                pass
    assert not (tmp_path / ".out.lock").exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that has ended: its PID names nobody now (or, rarely, a newer process)
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "command": "acat explain"}))
    if output_guard._process_alive(gone.pid):
        pytest.skip("the PID was taken again at once")
    with output_guard.claim_output(out, [], kind="folder", overwrite=False):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "command": "acat convert"}))
        with pytest.raises(ACATInputError, match=rf"another run \(acat convert, process {live.pid}\) is writing this "
                                                 rf"output now"):
            with output_guard.claim_output(out, [], kind="folder", overwrite=False):
                pass
        assert lock.exists()  # someone else's lock is never removed
    finally:
        live.kill()
        live.wait()
