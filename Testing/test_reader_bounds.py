"""Readers never silently drop data and never allocate what a header merely claims (issue 17, points 7-10).

* Folders: 1,100 nested folders are read (no RecursionError); a subfolder (or the folder itself) that
  cannot be read is an error naming it, never half a series; two folders given, 20,000 files with DICOM's
  magic and nothing else: each says what is wrong.
* Decoders bounded before they allocate (the memory budget of ``ACATLogic.io.limits``, ``--max-memory-gb``,
  ``ACAT_MAX_MEMORY_GB``): an RLE file of 1 kB claiming 40000 x 40000 pixels, a JPEG 2000 / JPEG frame
  larger than its header admits, a deflated data set inflating to hundreds of MB, NRRD in hex, ascii and
  bzip2 declaring 1000^3 voxels, a .nii.gz whose stream is shorter than its header says. The command-line
  cases measure the child's peak memory (``wait4``) and assert it stays small.
* Model cards: negative widths, zero strides, huge sizes are refused before any model is built, in one
  line (no PyTorch warning before it); weights that are a named pipe are said to be one.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from ACATData import sample_data
from ACATLogic import ACATInputError
from ACATLogic.io import read_volume, write_dicom_series, write_volume
from ACATLogic.io.itk_files import write_itk_file
from ACATLogic.io.limits import BUDGET_ENV

from bad_input_corpus import series_from_slice, snapshot
from bundles import make_random_bundle
from test_output_safety import ACAT, FAST, err, unprivileged
from toy_training import head_volume

#: a reader that refuses a bomb before allocating stays near the interpreter's own size
SMALL_PEAK_MB = 600


# Linux counts the memory of the process that forked a child in that child's peak (exec keeps the old
# address space's high-water mark), so a child forked from a big pytest process would report pytest's size:
# a small Python process forks the command, waits for it and writes its peak (kB) to the file argv[1].
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run(*args, env=None, prefix=()) -> tuple[subprocess.CompletedProcess, float]:
    """``acat ARGS`` and the command's peak resident memory in MB (its own, from wait4 in a small parent)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "peak_kb")
        command = [*prefix, os.fsencode(ACAT), *map(os.fsencode, args)]
        proc = subprocess.run([sys.executable, "-c", _MEASURE, report, *command], capture_output=True,
                              stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        peak_kb = int(open(report).read())
    result = subprocess.CompletedProcess(command, proc.returncode, proc.stdout, proc.stderr)
    return result, peak_kb / 1024  # kB on Linux


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    volume = head_volume(2, slices=8, size=32)
    write_dicom_series(volume, root / "series")
    return {"root": root, "volume": volume, "series": root / "series"}


# ------------------------------------------------------------------------------------------------
# Folders (points 7, 8, 10)
# ------------------------------------------------------------------------------------------------
def _remove_deep(root: Path) -> None:
    """Remove a folder tree of any depth without recursion (shutil.rmtree, and pytest's clean-up of old
    temporary folders, recurse once per level)."""
    stack = [root]
    while stack:
        with os.scandir(stack[-1]) as it:
            entries = list(it)
        folders = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        if folders:
            stack.extend(folders)
        else:
            os.rmdir(stack.pop())


def test_1100_nested_folders_are_read(head, tmp_path):
    deep = tmp_path / "scan"
    deep.mkdir()
    try:
        for _ in range(1100):  # one level at a time: os.makedirs itself recurses once per level
            deep = deep / "d"
            deep.mkdir()
        for path in head["series"].iterdir():
            shutil.copy(path, deep / path.name)
        volume = read_volume(tmp_path / "scan")  # was: RecursionError
        assert np.array_equal(volume.voxels_hu, read_volume(head["series"]).voxels_hu)
        result, _ = run("info", "--json", tmp_path / "scan")
        assert result.returncode == 0 and json.loads(result.stdout)["size_ijk"] == [32, 32, 8]
    finally:
        _remove_deep(tmp_path / "scan")


def test_an_unreadable_subfolder_holding_half_the_series_is_an_error(head, tmp_path):
    prefix = unprivileged()
    scan = tmp_path / "scan"
    shutil.copytree(head["series"], scan / "a")
    (scan / "b").mkdir()
    for path in sorted((scan / "a").iterdir())[4:]:
        shutil.move(path, scan / "b" / path.name)
    before = snapshot(scan)
    (scan / "b").chmod(0)
    try:
        result, _ = run("info", scan, prefix=prefix)  # was: exit 0 with 4 of 8 slices, no warning
        whole, _ = run("info", scan / "b", prefix=prefix)  # was: "the folder is empty"
    finally:
        (scan / "b").chmod(0o755)
    assert result.returncode == 2
    assert err(result) == (f"acat: error: {scan / 'b'}: a folder inside the input cannot be read (Permission denied); "
                           "its files may belong to the series - fix the permissions, or give a folder without it")
    assert whole.returncode == 2
    assert err(whole) == f"acat: error: {scan / 'b'}: cannot list the folder (Permission denied); check its permissions"
    assert snapshot(scan) == before


def test_an_unreadable_file_in_the_series_is_an_error_naming_it(head, tmp_path):
    prefix = unprivileged()
    scan = shutil.copytree(head["series"], tmp_path / "scan")
    victim = sorted(scan.iterdir())[3]
    victim.chmod(0)
    try:
        result, _ = run("info", scan, prefix=prefix)
    finally:
        victim.chmod(0o644)
    assert result.returncode == 2 and f"{victim}: cannot read the file (Permission denied)" in err(result)


@pytest.mark.parametrize("command", ["info", "explain"])
def test_two_folders_given_say_so(head, tmp_path, command):
    other = shutil.copytree(head["series"], tmp_path / "other")
    args = ["--out", tmp_path / "out", "--model", "/nonexistent"] if command == "explain" else []
    result, _ = run(command, head["series"], other, *args)
    assert result.returncode == 2
    assert err(result) == (f"acat: error: {head['series']}: a folder among 2 inputs: give one folder (it is searched "
                           "for the series), or several DICOM files of one series")


def test_20000_files_with_dicom_magic_and_nothing_else(head, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    for i in range(20000):
        (fake / f"{i:05d}.dcm").write_bytes(bytes(128) + b"DICM" + b"junk" * 16)
    result, _ = run("info", fake)  # was: "no usable CT series here; found 1 series"
    assert result.returncode == 2
    assert err(result) == (f"acat: error: {fake}: no DICOM images found (20000 files looked at: 20000 not a DICOM "
                           "image)")
    shutil.copytree(head["series"], fake / "series")
    result, _ = run("info", "--json", fake)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metadata"]["series_selection"] == (
        "the only series (8 images); 20000 other files passed over (20000 not a DICOM image)")


# ------------------------------------------------------------------------------------------------
# DICOM decoders bounded (point 9)
# ------------------------------------------------------------------------------------------------
def _rle_fragment(runs: int = 20) -> bytes:
    """Two RLE segments, each of ``runs`` runs of 128 zero bytes (-127 + one byte)."""
    segment = bytes([129, 0]) * runs
    return struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13)) + segment * 2


def test_rle_claiming_40000_squared_is_refused_before_decoding(head, tmp_path):
    bomb = tmp_path / "rle"
    bomb.mkdir()
    for path in sorted(head["series"].iterdir())[:3]:
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 40000
        ds.PixelData = encapsulate([_rle_fragment()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.save_as(bomb / path.name)
    assert max(p.stat().st_size for p in bomb.iterdir()) < 2000
    result, peak = run("info", bomb)  # was: 3.2 GiB decoded, then "cannot decode"
    assert result.returncode == 2 and "3 x 40000 x 40000 voxels, which would need 26.8 GiB" in err(result)
    assert peak < SMALL_PEAK_MB
    # within the budget, the compressed bytes still cannot hold it: RLE expands at most 64:1
    result, peak = run("info", bomb, "--max-memory-gb", "64")
    assert result.returncode == 2 and "cannot hold the 3200000000 bytes of pixels that the header declares" in err(result)
    assert peak < SMALL_PEAK_MB


def _patch_frames(ds: pydicom.Dataset, patch) -> None:
    frames = [bytearray(f) for f in generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1)))]
    for frame in frames:
        patch(frame)
    ds.PixelData = encapsulate([bytes(f) for f in frames])


def test_a_jpeg2000_codestream_larger_than_its_header_is_refused_before_decoding(tmp_path):
    series = series_from_slice(sample_data.pydicom_test_file("693_J2KR.dcm"), tmp_path / "series")
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        _patch_frames(ds, lambda f: struct.pack_into(">II", f, f.find(b"\xff\x4f\xff\x51") + 8, 40000, 40000))
        ds.save_as(path)
    result, peak = run("info", series)  # was: 9.4 GB peak in OpenJPEG before "could not broadcast"
    assert result.returncode == 2
    assert "frame 1's compressed data declares 40000 x 40000 pixels x 1 components, more than the header's 512 x 512" \
        in err(result)
    assert peak < SMALL_PEAK_MB


def test_a_jpeg_frame_larger_than_its_header_is_refused(tmp_path):
    ds = pydicom.dcmread(sample_data.pydicom_test_file("JPEG-LL.dcm"))  # JPEG lossless, 1024 x 256

    def sof(frame: bytearray) -> None:
        i = frame.find(b"\xff\xc3")
        struct.pack_into(">HH", frame, i + 5, 60000, 60000)

    _patch_frames(ds, sof)
    path = tmp_path / "big.dcm"
    ds.save_as(path)
    from ACATLogic.io.dicom_bounds import check_pixel_cost

    with pytest.raises(ACATInputError, match=r"frame 1's compressed data declares 60000 x 60000 pixels x 1 components, "
                                             r"more than the header's 256 x 1024 x 1"):
        check_pixel_cost(pydicom.dcmread(path), path)
    check_pixel_cost(pydicom.dcmread(sample_data.pydicom_test_file("JPEG-LL.dcm")), path)  # the original passes


def _deflated(src: Path, dest: Path, change=None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        if change is not None:
            change(ds)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(dest / path.name)
    return dest


def test_deflated_dicom_reads_exactly_and_its_inflation_is_bounded(head, tmp_path):
    good = _deflated(head["series"], tmp_path / "good")
    assert np.array_equal(read_volume(good).voxels_hu, read_volume(head["series"]).voxels_hu)
    # 64 MB of zeros in a private element before the pixels: 64 kB on disk, the whole file inflated before
    header_bomb = _deflated(head["series"], tmp_path / "header",
                            lambda ds: ds.add_new(0x00091010, "OB", bytes(64 << 20)))
    assert max(p.stat().st_size for p in header_bomb.iterdir()) < 100_000
    result, peak = run("info", header_bomb)
    assert result.returncode == 2
    assert "damaged DICOM header (the deflated data set's header inflates to more than 32 MB)" in err(result)
    assert peak < SMALL_PEAK_MB
    # after the pixels: the header is read, the pixels' file inflates beyond what the header declares
    tail_bomb = _deflated(head["series"], tmp_path / "tail",
                          lambda ds: ds.add_new(0xFFFCFFFC, "OB", bytes(64 << 20)))
    with pytest.raises(ACATInputError, match=r"damaged DICOM file: the deflated data set inflates to more than 32 MB, "
                                             r"far beyond the pixels its header declares"):
        read_volume(tail_bomb)


def test_the_memory_budget_can_be_lowered_and_raised(head, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "0.00001")
    with pytest.raises(ACATInputError, match=r"8 x 32 x 32 voxels, which would need 0.0 GiB|would need .* of memory, "
                                             r"more than ACAT's budget of .*; the header is damaged, or the scan is "
                                             r"really that large: then raise the budget with --max-memory-gb or "
                                             r"ACAT_MAX_MEMORY_GB"):
        read_volume(head["series"])
    result, _ = run("info", head["series"], env={BUDGET_ENV: "0.00001"})
    assert result.returncode == 2 and "more than ACAT's budget of 0.0 MiB" in err(result)
    result, _ = run("info", head["series"], "--max-memory-gb", "1", env={BUDGET_ENV: "0.00001"})
    assert result.returncode == 0, result.stderr
    for bad in ("0", "-1", "lots", "nan"):
        result, _ = run("info", head["series"], "--max-memory-gb", bad)
        assert result.returncode == 2
        assert err(result) == f"acat: error: --max-memory-gb must be a memory size in GiB greater than 0 (e.g. 16), not {bad!r}"


# ------------------------------------------------------------------------------------------------
# NRRD and NIfTI bounded (point 9)
# ------------------------------------------------------------------------------------------------
NRRD_HEAD = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: %d %d %d\nencoding: %s\nendian: little\n"
             b"space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n")


@pytest.mark.parametrize("encoding, data, match", [
    (b"hex", b"00" * 500, r"\(2000000000 bytes, 4000000000 hex digits\) but the file holds only 1000 bytes"),
    (b"ascii", b"0 " * 500, r"voxels but the file holds only 1000 bytes of voxel text, less than one digit and one "
                            r"space per voxel"),
    (b"bzip2", bz2.compress(bytes(10 << 20)), r"NRRD encoding 'bzip2' is not supported \(ACAT reads raw, gzip, hex "
                                              r"and ascii\); save the volume again with gzip or raw encoding"),
])
def test_nrrd_in_every_encoding_is_bounded_by_its_header(tmp_path, encoding, data, match):
    path = tmp_path / "scan.nrrd"
    path.write_bytes(NRRD_HEAD % (1000, 1000, 1000, encoding) + data)
    result, peak = run("info", path)  # was: 3.4 GiB allocated by ITK first
    assert result.returncode == 2 and re_search(match, err(result))
    assert peak < SMALL_PEAK_MB


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


@pytest.mark.parametrize("encoding", [b"hex", b"ascii"])
def test_hex_and_ascii_nrrd_that_hold_their_voxels_are_read(tmp_path, encoding):
    values = (np.arange(16 * 16 * 4) % 300 - 150).astype("<i2")
    body = values.tobytes().hex().encode() if encoding == b"hex" else "\n".join(map(str, values)).encode()
    path = tmp_path / "scan.nrrd"
    path.write_bytes(NRRD_HEAD % (16, 16, 4, encoding) + body)
    assert np.array_equal(read_volume(path).voxels_hu, values.reshape(4, 16, 16).astype(np.float32))


def test_a_gzip_nifti_shorter_than_its_header_is_refused(head, tmp_path):
    good = write_volume(head["volume"], tmp_path / "good.nii")
    raw = bytearray(good.read_bytes())
    struct.pack_into("<h", raw, 46, 800)  # dim[3]: 8 slices -> 800
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ACATInputError, match=r"the NIfTI header declares 32 x 32 x 800 voxels \(3276800 bytes\) but the "
                                             r"gzip data holds only 32768 bytes of voxels \(truncated or damaged\)"):
        read_volume(path)  # was: read, the missing slices zero ("HU 0..0" for the whole of a 1 MB bomb)
    ok = write_volume(head["volume"], tmp_path / "ok.nii.gz")
    assert np.allclose(read_volume(ok).voxels_hu, head["volume"].voxels_hu)


# ------------------------------------------------------------------------------------------------
# Model cards (point 8) and the weights (point 10)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    ct = write_volume(head_volume(0, slices=6, size=32), root / "ct.nrrd")
    return {"root": root, "ct": ct, "bundle": make_random_bundle(root / "bundle", size=32, slices=3, steps=2)}


def _card_with(bundle, tmp_path: Path, role: str, key: str, value) -> Path:
    folder = shutil.copytree(bundle["bundle"], tmp_path / "bundle")
    card = json.loads((folder / "model.json").read_text())
    card["models"][role]["config"][key] = value
    (folder / "model.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("role, key, value, says, measured", [
    ("baseline", "widths", [-4, 4, 8, 8, 8, 8, 8], "models.baseline.config.widths must be whole numbers from 1 to "
                                                   "8192, not -4", False),
    ("baseline", "widths", [0, 4, 8, 8, 8, 8, 8], "models.baseline.config.widths must be whole numbers from 1 to "
                                                  "8192, not 0", False),
    ("autoencoder", "strides", [0, 2, 2], "models.autoencoder.config.strides must be whole numbers from 1 to 8, not 0",
     False),
    ("autoencoder", "channels", [6, 12, 100000], "models.autoencoder.config.channels must be whole numbers from 1 to "
                                                 "8192, not 100000", True),
    ("acat", "widths", [8000] * 7, "the acat architecture 'acat' would have 21.5 GiB of weights (at most", True),
])
def test_impossible_architectures_are_refused_before_any_model_is_built(bundle, tmp_path, capfd, role, key, value,
                                                                        says, measured):
    """The two that would allocate gigabytes run as a real ``acat`` with its peak memory measured; the values
    that cannot build anything (zero, negative) run the same command line in this process."""
    folder = _card_with(bundle, tmp_path, role, key, value)
    args = ["explain", str(bundle["ct"]), "--out", str(tmp_path / "out"), "--model", str(folder), *map(str, FAST)]
    if measured:
        result, peak = run(*args)
        assert peak < SMALL_PEAK_MB + 400  # torch imported, nothing built
    else:
        from ACATCli.main import main as acat_main

        capfd.readouterr()
        code = acat_main(args)
        captured = capfd.readouterr()
        result = subprocess.CompletedProcess(args, code, captured.out.encode(), captured.err.encode())
    assert result.returncode == 2  # was: exit 1 after trying to allocate up to 64 GiB, torch warnings before it
    assert err(result) == f"acat: error: {folder / 'model.json'}: invalid architecture in the model card: {says}" \
        if says.startswith("models.") else says in err(result)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_an_architecture_that_cannot_run_on_the_cards_input_is_refused(bundle, tmp_path):
    from ACATLogic.bundle import load_bundle

    folder = shutil.copytree(bundle["bundle"], tmp_path / "bundle")
    card = json.loads((folder / "model.json").read_text())
    card["input"]["size"] = [4, 4]  # three 2x2 poolings of the brain model cannot shrink 4 x 2 hemispheres
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ACATInputError, match=r"invalid architecture in the model card: the baseline architecture "
                                             r"'brain_mtl' does not run on the card's input of 3 x 4 x 4"):
        load_bundle(folder)


def test_weights_that_are_a_named_pipe_are_not_called_missing(bundle, tmp_path):
    folder = shutil.copytree(bundle["bundle"], tmp_path / "bundle")
    (folder / "baseline.safetensors").unlink()
    os.mkfifo(folder / "baseline.safetensors")
    result, _ = run("explain", bundle["ct"], "--out", tmp_path / "out", "--model", folder, *FAST)
    assert result.returncode == 2
    assert err(result) == (f"acat: error: {folder / 'baseline.safetensors'}: the baseline weights are not a regular file "
                           "(a pipe, socket or device); a bundle holds .safetensors files")


def test_library_warnings_never_come_before_the_error_line(bundle, tmp_path, capfd):
    """A torch UserWarning on the way to an error: one line on stderr (the warning with --verbose)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import warnings, ACATLogic.io as io\n"
        "real = io.read_volume\n"
        "def noisy(*a, **k):\n"
        "    warnings.warn('TypedStorage is deprecated', UserWarning)\n"
        "    return real(*a, **k)\n"
        "io.read_volume = noisy\n")
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    missing = tmp_path / "missing-slices"
    shutil.copytree(bundle["root"], missing, ignore=shutil.ignore_patterns("bundle", "*.nrrd"))
    result, _ = run("info", missing, env=env)
    assert result.returncode == 2 and err(result).startswith("acat: error:")
    result, _ = run("info", missing, "--verbose", env=env)
    assert b"TypedStorage is deprecated" in result.stderr
