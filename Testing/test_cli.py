"""The ``acat`` command line, run as a user runs it (the installed console script)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ACATLogic import read_volume
from ACATCli import main as cli_main

from conftest import hash_tree, run_acat, sorted_series_files

BROKEN = ["MR_truncated.dcm", "no_meta.dcm", "bad_sequence.dcm", "J2K_pixelrep_mismatch.dcm", "SC_rgb.dcm",
          "CT_small.dcm"]


def test_info_on_head_ct_series(cranium_series):
    result = run_acat("info", str(cranium_series))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Format:       DICOM, the only series (108 images)" in out
    assert "Modality:     CT" in out
    assert "Size:         256 x 256 x 108 voxels (columns x rows x slices)" in out
    assert "Spacing:      0.957 x 0.957 x 1.5 mm" in out
    assert "Orientation:  LPS (i -> left, j -> posterior, k -> superior)" in out
    assert "Origin:       (-122.021, -122.021, -80.250) mm, LPS" in out
    assert "HU range:     -1024 .. 2986" in out
    assert "Warnings:     none" in out
    assert result.stderr == ""  # not a terminal: no progress bar


def test_info_json_matches_the_reader(cranium_series):
    result = run_acat("info", "--json", str(cranium_series))
    assert result.returncode == 0
    info = json.loads(result.stdout)
    volume = read_volume(cranium_series)
    assert info["size_ijk"] == [256, 256, 108]
    np.testing.assert_allclose(info["spacing_mm"], volume.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(info["origin_lps_mm"], volume.origin_mm, atol=1e-6)
    assert info["orientation"] == "LPS"
    assert info["metadata"]["series_instance_uid"] == volume.metadata["series_instance_uid"]


def test_info_on_ctchest(ctchest_path):
    result = run_acat("info", str(ctchest_path))
    assert result.returncode == 0
    assert "Size:         128 x 128 x 34 voxels" in result.stdout
    assert "Spacing:      3.047 x 3.047 x 10 mm" in result.stdout
    assert "Orientation:  RAS (i -> right, j -> anterior, k -> superior)" in result.stdout
    assert "Origin:       (193.096, 216.396, -340.250) mm, LPS" in result.stdout


def test_info_never_prints_patient_identity(cranium_copy):
    def identify(ds, k):
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "MRN0042"
        ds.PatientBirthDate = "19700101"
        ds.AccessionNumber = "ACC777"
        ds.InstitutionName = "St Example"
    for k, f in enumerate(sorted_series_files(cranium_copy)):
        ds = pydicom.dcmread(f)
        identify(ds, k)
        ds.save_as(f)
    for args in (["info"], ["info", "--json"], ["info", "--verbose"]):
        result = run_acat(*args, str(cranium_copy))
        assert result.returncode == 0
        text = result.stdout + result.stderr
        for secret in ("Doe", "Jane", "MRN0042", "19700101", "ACC777", "St Example"):
            assert secret not in text


@pytest.mark.parametrize("name", BROKEN)
def test_broken_pydicom_data_files_exit_2_with_one_line(dcm, name):
    path = dcm(name)
    result = run_acat("info", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"acat: error: {path}: ")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_rejections_from_folders_exit_2(dicomdirtests, tmp_path):
    for folder, needle in ((dicomdirtests / "TINY_ALPHA", "no pixel data"),
                           (dicomdirtests / "77654033" / "CT2", "slices are missing"),
                           (tmp_path, "the folder is empty")):
        result = run_acat("info", str(folder))
        assert result.returncode == 2 and needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_warnings_go_to_stderr_and_quiet_hides_them(dcm):
    loud = run_acat("info", str(dcm("eCT_Supplemental.dcm")))
    assert loud.returncode == 0
    assert "warning: pixel values are in US (DICOM RescaleType), not Hounsfield units" in loud.stderr
    quiet = run_acat("info", "--quiet", str(dcm("eCT_Supplemental.dcm")))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_convert_dicom_to_nrrd_and_nifti(cranium_series, tmp_path):
    before = hash_tree(cranium_series)
    for name in ("head.nrrd", "head.nii.gz"):
        result = run_acat("convert", str(cranium_series), str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        back = read_volume(tmp_path / name)
        np.testing.assert_array_equal(back.voxels_hu, read_volume(cranium_series).voxels_hu)
    assert hash_tree(cranium_series) == before
    again = run_acat("convert", str(cranium_series), str(tmp_path / "head.nrrd"))
    assert again.returncode == 2 and "add --overwrite" in again.stderr
    assert run_acat("convert", "--overwrite", str(cranium_series), str(tmp_path / "head.nrrd")).returncode == 0


def test_several_files_are_one_series(cranium, cranium_series, tmp_path):
    files = [str(f) for f in sorted_series_files(cranium_series)[:12]]
    result = run_acat("convert", *files, str(tmp_path / "part.nrrd"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_volume(tmp_path / "part.nrrd").voxels_hu, cranium.voxels_hu[:12])
    info = run_acat("info", *files[:3])
    assert "(+2 files)" in info.stdout and "256 x 256 x 3 voxels" in info.stdout


def test_convert_never_writes_into_the_input_folder(cranium_copy):
    before = hash_tree(cranium_copy)
    result = run_acat("convert", str(cranium_copy), str(cranium_copy / "out.nrrd"))
    assert result.returncode == 2 and "inside the input folder" in result.stderr
    assert hash_tree(cranium_copy) == before


def test_convert_refuses_to_overwrite_its_input(tmp_path, ctchest_path):
    copy = tmp_path / "chest.nrrd"
    copy.write_bytes(ctchest_path.read_bytes())
    result = run_acat("convert", "--overwrite", str(copy), str(copy))
    assert result.returncode == 2 and "would overwrite the input" in result.stderr
    assert copy.read_bytes() == ctchest_path.read_bytes()


@pytest.mark.parametrize("command", ["info", "convert", "explain", "view"])
def test_every_command_has_help_with_an_example(command):
    result = run_acat(command, "--help")
    assert result.returncode == 0
    assert "example:" in result.stdout and f"acat {command}" in result.stdout


def test_no_placeholder_commands():
    """Every listed command works: no "not available yet" placeholder (the demo is `make demo`)."""
    listed = run_acat("--help")
    assert listed.returncode == 0 and "demo" not in listed.stdout and "not in this version" not in listed.stdout
    result = run_acat("demo")
    assert result.returncode == 2 and "invalid choice: 'demo'" in result.stderr


def test_every_command_that_prints_results_has_json(ctchest_path, tmp_path):
    out = tmp_path / "chest.nrrd"
    result = run_acat("convert", str(ctchest_path), str(out), "--json")
    assert result.returncode == 0, result.stderr
    converted = json.loads(result.stdout)
    assert converted["output"] == str(out) and converted["size_ijk"] == [128, 128, 34]
    assert "metadata" not in converted and converted["source_format"] == "NRRD"
    for command in ("info", "convert", "explain"):
        assert "--json" in run_acat(command, "--help").stdout, command


def test_usage_errors_exit_2():
    assert run_acat().returncode == 2
    assert run_acat("info").returncode == 2


def test_internal_errors_are_one_line_exit_1(monkeypatch, capsys, ctchest_path):
    from ACATCli import commands

    def boom(args):
        raise RuntimeError("simulated bug\nwith a second line")

    monkeypatch.setattr(commands, "info", boom)
    assert cli_main.main(["info", str(ctchest_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: simulated bug with a second line" in err


def test_progress_bar_on_a_terminal(cranium_series, tmp_path):
    """On a TTY, reading shows a tqdm bar; the output file is the same."""
    exe = Path(sys.executable).with_name("acat")
    out = tmp_path / "tty.nrrd"
    pid, fd = pty.fork()
    if pid == 0:  # child: stdin/stdout/stderr are the pseudo-terminal
        os.execv(str(exe), [str(exe), "convert", str(cranium_series), str(out)])
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "reading (decoding slices):" in text and "100%|" in text
    assert read_volume(out).voxels_hu.shape == (108, 256, 256)


def test_module_entry_point(ctchest_path):
    result = subprocess.run([sys.executable, "-m", "ACATCli", "info", str(ctchest_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "128 x 128 x 34" in result.stdout


def test_a_reader_that_closes_the_pipe_early_is_not_an_error(ctchest_path):
    """`acat info CT | head`: a reader that goes away early is no "internal error: BrokenPipeError".

    `true` exits at once, long before acat has read the scan, so every write meets a closed pipe.
    """
    acat = Path(sys.executable).with_name("acat")
    proc = subprocess.run(f"'{acat}' info '{ctchest_path}' | true; echo \"rc=${{PIPESTATUS[0]}}\"",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert proc.stdout == "rc=141\n" and proc.stderr == ""
