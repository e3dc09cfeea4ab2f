"""DICOM results (``acat explain --dicom``, `ACATLogic.dicom_export`) on the demo case, checked three ways:

* a DICOM validator: Debian's dicom3tools ``dciodvfy`` (the Makefile's SYSTEM_PACKAGES installs it) finds no
  error in the Parametric Map, the SEG, every secondary capture, nor in the CT series our own writer makes;
* read back with pydicom and highdicom: the frames' positions and orientation are the source series', each
  frame refers to the source image at its position, the study and frame of reference are the source's and
  the series and instances are new;
* the SEG's frames line up with ``saliency.nrrd`` voxel for voxel (and the map's frames equal it).

And the patient data: the results carry the source's patient and study attributes and nothing more;
``--deidentify`` leaves none of them (the bytes of every file are searched).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ACATData.phantom.demo import write_demo_case
from ACATLogic.dicom_export import (OVERLAY_FOLDER, PARAMETRIC_MAP, SEGMENTATION, dicom_source, top_region,
                                    write_dicom_results)
from ACATLogic.io import read_volume
from ACATLogic.io.itk_files import read_itk_file

from bundles import make_random_bundle
from conftest import run_acat, sorted_series_files
from test_patient_data import PHI, leaks

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber",
               "InstitutionName", "ReferringPhysicianName", "PatientAge", "PatientAddress", "StudyDate")


def dciodvfy(path: Path) -> list[str]:
    """The validator's error lines for one file (warnings are kept out: see the module docstring)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy is not installed (Debian's dicom3tools; the Makefile's system-deps installs it)")
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def demo_series(tmp_path_factory) -> Path:
    """The demo case (the real head CT with a simulated left MCA infarct) as our writer's CT DICOM series."""
    row = write_demo_case(tmp_path_factory.mktemp("demo") / "case")
    return Path(row["image_path"])


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory, demo_series) -> Path:
    """``acat explain --dicom`` on the demo case (a small random bundle: the format is under test here)."""
    root = tmp_path_factory.mktemp("demo-dicom")
    bundle = make_random_bundle(root / "bundle", slices=5, steps=2)
    out = root / "results"
    done = run_acat("explain", str(demo_series), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                    "--dicom")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warning from highdicom or pydicom reaches the user
    return out


def _source_by_position(folder: Path) -> dict:
    """rounded LPS position -> the source slice's header."""
    out = {}
    for path in sorted_series_files(folder):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[tuple(np.round(np.array(ds.ImagePositionPatient, float), 3))] = ds
    return out


def _frames(ds: pydicom.Dataset) -> list[tuple]:
    """Per frame of an enhanced object: (position (3,), orientation (6,), referenced source SOP UIDs)."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        orientation = np.array((item.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence)[0]
                               .ImageOrientationPatient, float)
        refs = [src.ReferencedSOPInstanceUID for d in item.get("DerivationImageSequence", [])
                for src in d.SourceImageSequence]
        frames.append((position, orientation, refs))
    return frames


def test_our_ct_series_has_every_required_attribute(demo_series):
    files = sorted_series_files(demo_series)
    for path in (files[0], files[len(files) // 2], files[-1]):
        assert dciodvfy(path) == [], path
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                    "PositionReferenceIndicator", "KVP", "AcquisitionNumber", "PatientPosition"):
        assert keyword in ds and ds.data_element(keyword).value in ("", None), keyword  # type 2: present, empty


def test_the_demo_cases_dicom_results_pass_the_validator(demo_results):
    files = [demo_results / PARAMETRIC_MAP, demo_results / SEGMENTATION]
    overlays = sorted((demo_results / OVERLAY_FOLDER).iterdir())
    assert len(overlays) == 33
    for path in files + overlays:
        assert dciodvfy(path) == [], path
    report = json.loads((demo_results / "report.json").read_text())
    assert report["dicom"]["frames_matched"] == "33/33" and report["dicom"]["deidentified"] is False
    assert {PARAMETRIC_MAP, SEGMENTATION, f"{OVERLAY_FOLDER}/overlay_0001.dcm"} <= set(report["files"])


def test_the_dicom_results_have_the_source_geometry_and_refer_to_it(demo_series, demo_results):
    source = _source_by_position(demo_series)
    first = next(iter(source.values()))
    iop = np.array(first.ImageOrientationPatient, float)
    series_uids = set()
    for name in (PARAMETRIC_MAP, SEGMENTATION):
        ds = pydicom.dcmread(demo_results / name)
        assert ds.StudyInstanceUID == first.StudyInstanceUID
        assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
        assert ds.SeriesInstanceUID != first.SeriesInstanceUID
        series_uids.add(ds.SeriesInstanceUID)
        frames = _frames(ds)
        assert len(frames) == len(source)
        seen = set()
        for position, orientation, refs in frames:
            key = tuple(np.round(position, 3))
            assert key in source, (name, position)  # positions equal (to the DS precision of the source)
            np.testing.assert_allclose(position, np.array(source[key].ImagePositionPatient, float), atol=1e-6)
            np.testing.assert_allclose(orientation, iop, atol=1e-9)
            assert refs == [source[key].SOPInstanceUID]
            seen.add(key)
        assert seen == set(source)  # every slice once
        pixel_measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        np.testing.assert_allclose(np.array(pixel_measures.PixelSpacing, float),
                                   np.array(first.PixelSpacing, float), atol=1e-9)

    overlay_uids = set()
    for path in sorted((demo_results / OVERLAY_FOLDER).iterdir()):
        sc = pydicom.dcmread(path)
        key = tuple(np.round(np.array(sc.ImagePositionPatient, float), 3))
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source[key].SOPInstanceUID
        np.testing.assert_allclose(np.array(sc.ImageOrientationPatient, float), iop, atol=1e-9)
        assert sc.StudyInstanceUID == first.StudyInstanceUID and sc.BurnedInAnnotation == "YES"
        assert sc.pixel_array.shape == (first.Rows, first.Columns, 3)
        overlay_uids.add(sc.SeriesInstanceUID)
    assert len(overlay_uids) == 1
    series_uids |= overlay_uids
    assert len(series_uids) == 3 and first.SeriesInstanceUID not in series_uids


def test_the_seg_lines_up_with_the_saliency_nrrd_voxel_for_voxel(demo_results):
    import highdicom as hd

    saliency = read_itk_file(demo_results / "saliency.nrrd")
    report = json.loads((demo_results / "report.json").read_text())
    expected, threshold = top_region(saliency.voxels_hu, report["dicom"]["top_percent"])
    assert threshold == pytest.approx(report["dicom"]["threshold"]) and expected.sum() == report["dicom"]["region_voxels"]
    assert 0 < expected.sum() < saliency.voxels_hu.size

    seg = hd.seg.segread(demo_results / SEGMENTATION)
    pm = pydicom.dcmread(demo_results / PARAMETRIC_MAP)
    for ds, want, pixels in ((seg, expected.astype(np.uint8), seg.pixel_array),
                             (pm, saliency.voxels_hu, pm.pixel_array)):
        got = np.full(saliency.voxels_hu.shape, -1, dtype=np.float32)
        for (position, _, _), frame in zip(_frames(ds), pixels):
            i, j, k = np.round(saliency.lps_to_index(position), 6)
            assert i == 0 and j == 0 and float(k).is_integer(), position  # on the grid
            got[int(k)] = frame
        np.testing.assert_array_equal(got, want)  # every voxel, every slice
    assert seg.get_segment_description(1).segment_label.startswith("ACAT top 5% saliency")


def _phi_copy(series: Path, folder: Path) -> Path:
    shutil.copytree(series, folder)
    for path in sorted_series_files(folder):
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.PatientAge = "093Y"
        ds.save_as(path)
    return folder


def _blob(volume) -> np.ndarray:
    k, j, i = np.indices(volume.voxels_hu.shape)
    c = np.array(volume.voxels_hu.shape) / 2
    return np.exp(-(((k - c[0]) / 4) ** 2 + ((j - c[1]) / 30) ** 2 + ((i - c[2] - 30) / 30) ** 2)).astype(np.float32)


def test_the_results_carry_the_sources_patient_data_and_nothing_more(demo_series, tmp_path):
    source = _phi_copy(demo_series, tmp_path / "phi")
    volume = read_volume(source)
    saliency = volume.with_voxels(_blob(volume))
    found = dicom_source(source, volume)
    write_dicom_results(tmp_path / "plain", found, volume, saliency, bundle_id="test")
    original = pydicom.dcmread(next(source.iterdir()), stop_before_pixels=True)
    for path in [tmp_path / "plain" / PARAMETRIC_MAP, tmp_path / "plain" / SEGMENTATION,
                 tmp_path / "plain" / OVERLAY_FOLDER / "overlay_0001.dcm"]:
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == PHI["PatientName"] and ds.PatientID == original.PatientID  # PACS files it
        for keyword in IDENTIFYING:  # nothing the source does not hold, and what it holds unchanged
            if keyword in ds and ds.data_element(keyword).value not in ("", None):
                assert keyword in original and str(ds.data_element(keyword).value) == str(
                    original.data_element(keyword).value), keyword


def test_deidentify_leaves_no_patient_data_in_any_byte(demo_series, tmp_path):
    source = _phi_copy(demo_series, tmp_path / "phi")
    assert leaks(next(source.iterdir()).read_bytes())
    volume = read_volume(source)
    info = write_dicom_results(tmp_path / "out", dicom_source(source, volume), volume,
                               volume.with_voxels(_blob(volume)), bundle_id="test", deidentify_output=True)
    assert info["deidentified"] is True and len(info["files"]) == 2 + 33
    for path in sorted((tmp_path / "out").rglob("*.dcm")):
        assert leaks(path.read_bytes()) == [], path
        assert b"093Y" not in path.read_bytes()
    ds = pydicom.dcmread(tmp_path / "out" / SEGMENTATION)
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientName == "" and ds.PatientID == ""
    assert ds.StudyInstanceUID == pydicom.dcmread(next(source.iterdir())).StudyInstanceUID  # Retain UIDs
    assert dciodvfy(tmp_path / "out" / SEGMENTATION) == []


def test_a_resampled_series_gets_frames_on_its_grid_referring_to_the_series(demo_series, tmp_path):
    """One slice missing: the reader resamples the gap, the results follow the corrected grid; the slices that
    kept their position still refer to their image, the series as a whole is referenced."""
    folder = tmp_path / "gap"
    shutil.copytree(demo_series, folder)
    files = sorted_series_files(folder)
    files[len(files) // 2].unlink()
    volume = read_volume(folder)
    assert any("not uniform" in w for w in volume.warnings)
    found = dicom_source(folder, volume)
    assert found.matched == volume.voxels_hu.shape[0] - 1
    info = write_dicom_results(tmp_path / "out", found, volume, volume.with_voxels(_blob(volume)), bundle_id="t")
    assert info["frames_matched"] == f"{volume.voxels_hu.shape[0] - 1}/{volume.voxels_hu.shape[0]}"
    for name in (PARAMETRIC_MAP, SEGMENTATION):
        assert dciodvfy(tmp_path / "out" / name) == []
        ds = pydicom.dcmread(tmp_path / "out" / name)
        assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(files) - 1


def test_top_region_is_the_top_percent_of_the_marked_voxels():
    saliency = np.zeros((2, 10, 10), np.float32)
    saliency[0].flat[:100] = np.linspace(0.01, 1.0, 100)
    mask, threshold = top_region(saliency, 5)
    assert mask.sum() == 5 and threshold == pytest.approx(0.96) and not mask[1].any()
    assert top_region(np.zeros((2, 3, 3)), 5)[0].sum() == 0


def test_dicom_results_need_a_dicom_input_said_in_one_line(tmp_path, ctchest_path):
    out = tmp_path / "out"
    done = run_acat("explain", str(ctchest_path), "--out", str(out), "--dicom")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "is NRRD, not DICOM" in done.stderr and not out.exists()
    done = run_acat("explain", str(ctchest_path), "--out", str(out), "--deidentify")
    assert done.returncode == 2 and "add --dicom" in done.stderr and not out.exists()


def test_the_overlay_images_colour_the_top_5_percent_as_the_viewers_do(demo_results):
    """The secondary captures colour the voxels at or above the map's 95th percentile, as overview.png, the
    Slicer module and the web viewer do (not a fixed share of the maximum, which showed almost nothing of a
    whitened map): each pixel that is not grey, the caption aside, is a voxel above that threshold, and the
    other way round."""
    from ACATLogic.overview import overlay_range

    saliency = read_itk_file(demo_results / "saliency.nrrd").voxels_hu
    low, high = overlay_range(saliency)
    expected = (saliency >= low) & (saliency > 0)
    got = np.zeros(saliency.shape, bool)
    for path in sorted((demo_results / OVERLAY_FOLDER).iterdir()):
        sc = pydicom.dcmread(path)
        rgb = sc.pixel_array.astype(int)
        got[int(sc.InstanceNumber) - 1] = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    assert np.mean(expected) == pytest.approx(0.05, abs=0.01)
    caption = np.zeros(saliency.shape[1:], bool)
    caption[:16] = True  # the burned-in yellow caption's band
    differ = (got != expected) & ~caption
    # the maximum is white over white bone at most: the top of the heat colours
    assert np.all(saliency[differ] == high) and differ.sum() <= 1
