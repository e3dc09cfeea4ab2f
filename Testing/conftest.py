"""Shared fixtures: real CT data from packages, and helpers to build DICOM series variants from it; and which
tests are slow (``make test-fast`` = ``pytest -m "not slow"`` leaves them out, ``make test`` runs them)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ACATData import sample_data
from ACATLogic.io import write_dicom_series


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and the list of names): proves a folder was not touched."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def cranium():
    """The real Cranium head CT (Debian invesalius-examples) in canonical LPS layout."""
    return sample_data.load_cranium()


@pytest.fixture(scope="session")
def cranium_series(tmp_path_factory, cranium) -> Path:
    """The real head CT written by our writer as a 108-file CT DICOM series (read-only for tests)."""
    out = tmp_path_factory.mktemp("cranium") / "series"
    write_dicom_series(cranium, out, series_description="Cranium head CT")
    return out


@pytest.fixture
def cranium_copy(tmp_path, cranium_series) -> Path:
    """A private, modifiable copy of the head CT series."""
    dst = tmp_path / "series"
    shutil.copytree(cranium_series, dst)
    return dst


@pytest.fixture(scope="session")
def ctchest_path() -> Path:
    return sample_data.ctchest_path()


@pytest.fixture(scope="session")
def dcm():
    """name -> path of a file in pydicom's test files / pydicom-data."""
    return sample_data.pydicom_test_file


@pytest.fixture(scope="session")
def dicomdirtests() -> Path:
    return sample_data.pydicom_test_dir("dicomdirtests")


def sorted_series_files(folder: Path) -> list[Path]:
    """The files of a series in slice order (by position along the normal), for building variants."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    def along(p):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        return float(np.array(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))
    return sorted(files, key=along)


def run_acat(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``acat`` console script for real: exit code, stdout and stderr."""
    exe = Path(sys.executable).with_name("acat")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


# -- slow tests ------------------------------------------------------------------------------------
#: Tests marked ``slow``: a node id prefix (a file, or a file::test) and why; "~N s": seconds under ``make test``
#: on this project's 2-core machine (a module fixture's time counts in the first test that uses it), also what
#: `order_by_expected_time` schedules by. Kept in one place so that the lead's science tests need no edit to be
#: marked. The bad-input corpus marks its own end-to-end cases (Testing/bad_input_corpus.py, END_TO_END).
SLOW = {
    "test_web_browser.py": "a real chromium drives the web viewer through a whole Explain with DICOM results (~33 s)",
    "test_bundled_models.py": "the shipped bundles explain the demo case, every slice (~29 s)",
    "test_benchmarks.py": "the benchmark suite runs once on small cases (~31 s)",
    "test_evaluate.py": "the evaluation harness explains a phantom dataset with every method (~11 s)",
    "test_reproduce.py": "whole reproductions (train, export, evaluate) on toy data (~14 s)",
    "test_training_resume.py": "trainings killed by SIGKILL at random points, then resumed (~28 s)",
    "test_training_pipeline.py": "the four stages of Algorithm 1 trained on toy data (~8 s)",
    "test_training_ddp.py": "two gloo processes train together (~23 s)",
    "test_explain_left_right.py": "trains a toy model, then explains mirrored storages of one anatomy (~11 s)",
    "test_explain_faults.py": "explains stopped by signals, a full disk, out of memory, in real processes (~12 s)",
    "test_fold_batch_norm.py": "counterfactuals through the shipped bundles, folded and not (~3 s)",
    "test_explain.py::test_explainer_on_real_head_ct": "explains the 108-slice head CT (~4 s)",
    "test_explain.py::test_acat_explain_cli_writes_every_output": "acat explain in a process (~8 s)",
    "test_explain.py::test_cli_comparison_method": "acat explain in a process (~3 s)",
    "test_explain.py::test_acat_explain_bad_inputs_exit_2": "several acat processes (~7 s)",
    # the `acat` command run as a process: a Python start-up and imports per call, a few seconds each
    "test_cli.py::test_convert_dicom_to_nrrd_and_nifti": "acat convert of the head CT, two processes (~5 s)",
    "test_cli.py::test_info_never_prints_patient_identity": "acat processes on the head CT (~2 s)",
    "test_cli.py::test_rejections_from_folders_exit_2": "several acat processes (~2 s)",
    "test_cli.py::test_broken_pydicom_data_files_exit_2_with_one_line": "an acat process per file (~4 s)",
    "test_cli.py::test_every_command_has_help_with_an_example": "an acat process per command (~2 s)",
    "test_cli.py::test_warnings_go_to_stderr_and_quiet_hides_them": "acat processes (~1 s)",
    "test_cli.py::test_several_files_are_one_series": "an acat process on the head CT (~1 s)",
    "test_cli.py::test_usage_errors_exit_2": "acat processes (~1 s)",
    "test_cli.py::test_convert_never_writes_into_the_input_folder": "acat processes (~1 s)",
    "test_cli.py::test_convert_refuses_to_overwrite_its_input": "acat processes (~1 s)",
    "test_cli.py::test_no_placeholder_commands": "two acat processes (~1 s)",
    "test_cli.py::test_every_command_that_prints_results_has_json": "four acat processes (~2 s)",
    "test_cli.py::test_progress_bar_on_a_terminal": "acat on a pseudo-terminal (~1 s)",
    "test_cli.py::test_module_entry_point": "python -m ACATCli (~1 s)",
    "test_cli.py::test_a_reader_that_closes_the_pipe_early_is_not_an_error": "acat in a shell pipe (~1 s)",
    "test_bundle.py::test_the_command_line_refuses_a_pickled_model_in_one_line": "an acat process (~2 s)",
    "test_explain.py::test_explain_outputs_hold_no_patient_identity": "acat explain in a process (~5 s)",
    "test_dicom_export.py::test_dicom_results_need_a_dicom_input_said_in_one_line": "acat processes (~4 s)",
    "test_batch.py::test_a_batch_of_five_with_one_broken_then_a_rerun_that_skips_the_four":
        "three acat batch runs over five small studies (~11 s)",
    "test_batch.py::test_a_csv_list_with_ids_and_two_workers": "a batch in two worker processes, one explain (~9 s)",
    "test_python_api.py::test_the_readme_python_example_runs": "the README's example: the demo case explained (~13 s)",
    "test_python_api.py::test_the_notebook_runs": "docs/python_api.ipynb: the demo case explained (~11 s)",
    "test_custom_task.py::test_an_architecture_from_an_installed_package": "a Python process (~4 s)",
    "test_patient_data.py": "acat and the web viewer's session on a head CT with patient identity (~24 s)",
    "test_web_server.py": "a real web viewer server, probed over HTTP and websockets (~5 s)",
    "test_web_security.py": "two real web viewer servers driven as a hostile program, one real Explain (~42 s)",
    "test_fuzz_web.py::test_web_server_target": "a real web viewer server sent 15 fuzzed wslink conversations (~4 s)",
    "test_fuzz_web.py::test_every_view_at_its_largest_stays_within_memory": "a real web viewer server renders every view at its largest (~8 s)",
    "test_slicer_packaging.py": "the extension configured, built and installed with CMake (~4 s)",
    "test_phantom_dataset.py::test_lung_build_is_deterministic_whatever_the_worker_count":
        "builds a lung dataset twice, with worker processes (~7 s)",
    "test_bundle.py::test_the_same_weights_give_the_same_files_in_every_process": "four exporting processes (~8 s)",
    "test_slicer_first_use.py::test_gpu_out_of_memory_offers_one_cpu_retry_which_runs_on_the_cpu":
        "background explains, one real (~3 s)",
    "test_slicer_first_use.py::test_selftest_explain_checks_pass_on_the_sample_data_case": "two background explains (~6 s)",
    "test_slicer_first_use.py::test_selftest_cancel_checks_pass_on_the_sample_data_case": "a background explain (~1 s)",
    "test_slicer_selftest.py::test_the_self_test_explains_a_dicom_series_loaded_through_the_database_then_cancels":
        "the module's self-test: two background explains and one cancelled (~8 s)",
    "test_slicer_widget.py::test_the_real_acat_explain_child_through_the_widget_lands_its_results_in_mrml":
        "a real acat explain child through the panel (~3 s)",
    "test_slicer_runner.py::test_jsonl_progress_lines_and_unchanged_default_output": "two acat explain processes (~5 s)",
    "test_slicer_runner.py::test_a_run_goes_in_the_background_and_loads_its_results": "a background explain (~3 s)",
    "test_slicer_runner.py::test_cancel_stops_the_process_promptly_and_leaves_the_scene_unchanged":
        "a background explain, cancelled (~3 s)",
    "test_slicer_runner.py::test_bad_model_gives_one_line_and_no_nodes": "a background explain that fails (~2 s)",
    "test_slicer_runner.py::test_a_second_explain_while_one_runs_is_refused_and_the_first_goes_on":
        "a background explain, cancelled (~2 s)",
    "test_slicer_runner.py::test_cancel_right_after_start_leaves_nothing": "a background explain, cancelled (~1 s)",
    "test_viewer_dicom_results.py::test_the_web_viewers_download_holds_validated_dicom_results_of_a_dicom_series":
        "the web viewer explains the 108-slice head CT series with DICOM results; dciodvfy on 110 files (~12 s)",
    "test_viewer_dicom_results.py::test_the_slicer_panels_dicom_results_are_exported_and_refer_to_the_loaded_series":
        "the module explains the series loaded by Slicer's reader with DICOM results, then exports (~10 s)",
    "test_viewer_dicom_results.py::test_dicom_source_is_for_an_nrrd_copy_of_the_series_said_in_one_line":
        "acat explain in-process on the head CT, four times (~1 s)",
    "test_output_safety.py": "acat explain and convert in processes on odd outputs, some in user namespaces (~27 s)",
    "test_reader_bounds.py": "acat on decoder bombs, 20,000 files, 1,100 folders, in processes (~38 s)",
}
#: Fixtures (file::fixture) that make every test of that file using them slow, and why.
SLOW_FIXTURES = {
    "test_counterfactual.py::blob_model": "trains the toy classifier (~7 s)",
    "test_custom_task.py::trained": "the four stages of a three-class task trained, exported, explained (~7 s)",
    "test_dicom_export.py::demo_series": "writes the demo case, then acat explain --dicom on it (~13 s in all)",
    "test_phantom_brain.py::cases": "generates five brain phantom cases (~13 s)",
}


def is_slow(nodeid: str, fixtures=()) -> bool:
    """Whether the test ``nodeid`` (``file.py::test[param]``) using ``fixtures`` is in SLOW or SLOW_FIXTURES."""
    file, nodeid = _file_and_nodeid(nodeid)
    return any(nodeid == key or nodeid.startswith((key + "::", key + "[")) for key in SLOW) or \
        any(f"{file}::{name}" in SLOW_FIXTURES for name in fixtures)


_SECONDS = re.compile(r"~(\d+) s")
#: seconds assumed for a test: in SLOW or SLOW_FIXTURES without a "~N s"; marked slow elsewhere (the bad-input
#: corpus's end-to-end cases); any other
UNSTATED_SLOW_S, MARKED_SLOW_S, FAST_S = 5.0, 1.0, 0.05


def _file_and_nodeid(nodeid: str) -> tuple[str, str]:
    path, sep, rest = nodeid.partition("::")  # a parameter may hold a "/" too
    file = Path(path).name
    return file, file + sep + rest


def expected_seconds(items) -> dict[str, float]:
    """Test file -> the seconds its collected tests are expected to take: each SLOW or SLOW_FIXTURES entry
    they fall under counted once (its "~N s"), plus `MARKED_SLOW_S` or `FAST_S` per other test."""
    reasons = {**SLOW, **SLOW_FIXTURES}
    counted: set[str] = set()
    out: dict[str, float] = {}
    for item in items:
        file, nodeid = _file_and_nodeid(item.nodeid)
        keys = [key for key in SLOW if nodeid == key or nodeid.startswith((key + "::", key + "["))]
        keys += [f"{file}::{name}" for name in getattr(item, "fixturenames", ()) if f"{file}::{name}" in SLOW_FIXTURES]
        if keys:
            seconds = 0.0
            for key in keys:
                if key not in counted:
                    counted.add(key)
                    found = _SECONDS.search(reasons[key])
                    seconds += float(found.group(1)) if found else UNSTATED_SLOW_S
        else:
            seconds = MARKED_SLOW_S if item.get_closest_marker("slow") else FAST_S
        out[file] = out.get(file, 0.0) + seconds
    return out


def order_by_expected_time(items) -> None:
    """Longest test files first, each file's tests in their own order: ``make test`` gives whole files to its
    workers in this order (``--dist loadfile --no-loadscope-reorder``), so the last files to start are short
    ones and the workers finish together (xdist's own order, most tests first, left the 30-second files -
    the browser, the benchmark - for last)."""
    seconds = expected_seconds(items)
    items.sort(key=lambda item: -seconds[_file_and_nodeid(item.nodeid)[0]])  # stable: files stay whole


def pytest_itemcollected(item):
    # marked as collected, so that ``-m "not slow"`` (pytest's own modifyitems hook) sees the mark
    if is_slow(item.nodeid, getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # after the deselection: ``make test-fast`` ranks the files by the tests it runs
    order_by_expected_time(items)


_MADE_CHECK_DIR: list[str] = []


def _own_model_check_dir() -> None:
    """The architecture checks this run keeps (`ACATLogic.model_check`) go to a folder of its own, shared by
    its workers and their child processes (made before the workers start, which inherit the variable), so a
    run neither reads nor fills the user's ~/.cache/acat/model-checks; removed when the run ends."""
    if os.environ.get("PYTEST_XDIST_WORKER") or "ACAT_MODEL_CHECK_DIR" in os.environ:
        return
    import tempfile

    folder = tempfile.mkdtemp(prefix="acat-test-model-checks-")
    os.environ["ACAT_MODEL_CHECK_DIR"] = folder
    _MADE_CHECK_DIR.append(folder)


def pytest_unconfigure(config):
    import shutil

    for folder in _MADE_CHECK_DIR:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_configure(config):
    _own_model_check_dir()
    _share_the_cpus()


def _share_the_cpus() -> None:
    """Under pytest-xdist (``make test`` runs one worker per CPU, up to 4) each worker and the processes its
    tests start share the CPUs instead of each taking all of them: OMP_NUM_THREADS = CPUs // workers, which
    torch, the Explainer (`ACATLogic.explain.cpu_threads`) and every child process read."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not workers.isdigit() or "OMP_NUM_THREADS" in os.environ:
        return
    from ACATLogic.explain import cpu_threads

    share = max(1, cpu_threads() // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(share)
    import torch

    torch.set_num_threads(share)
