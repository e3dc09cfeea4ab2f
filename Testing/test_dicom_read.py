"""DICOM reading on real data: the Cranium head CT as a series, pydicom-data's CT slices and series.

Every geometry is checked against the source and cross-checked with SimpleITK's own (GDCM) reader, an
independent implementation, so our writer and reader cannot agree on the same mistake.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import RLELossless, generate_uid

from ACATLogic import read_volume, to_canonical, write_dicom_series
from ACATLogic.volume import CTVolume

from conftest import hash_tree, sorted_series_files


def sitk_series(folder: Path, files: list[Path] | None = None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = [str(f) for f in files] if files else reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute()


def assert_matches_sitk(volume: CTVolume, image: sitk.Image, atol_mm: float = 1e-6) -> None:
    np.testing.assert_array_equal(volume.voxels_hu, sitk.GetArrayFromImage(image).astype(np.float32))
    np.testing.assert_allclose(volume.spacing_mm, image.GetSpacing(), atol=atol_mm)
    np.testing.assert_allclose(volume.origin_mm, image.GetOrigin(), atol=atol_mm)
    np.testing.assert_allclose(volume.direction.reshape(-1), image.GetDirection(), atol=1e-6)


def assert_same_volume(a: CTVolume, b: CTVolume, atol_mm: float = 1e-6) -> None:
    np.testing.assert_array_equal(a.voxels_hu, b.voxels_hu)
    np.testing.assert_allclose(a.spacing_mm, b.spacing_mm, atol=atol_mm)
    np.testing.assert_allclose(a.origin_mm, b.origin_mm, atol=atol_mm)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-9)


def edit_series(folder: Path, edit) -> None:
    """Rewrite every file of a series in slice order with ``edit(ds, k)`` (tests build variants)."""
    for k, path in enumerate(sorted_series_files(folder)):
        ds = pydicom.dcmread(path)
        edit(ds, k)
        ds.save_as(path)


# ---- the real head CT as a multi-file series ---------------------------------------------------
def test_head_ct_series_equals_source_to_the_bit(cranium, cranium_series):
    before = hash_tree(cranium_series)
    volume = read_volume(cranium_series)
    assert volume.voxels_hu.shape == (108, 256, 256)
    assert_same_volume(volume, cranium)
    np.testing.assert_allclose(volume.spacing_mm, [0.9570312, 0.9570312, 1.5], atol=1e-7)
    assert volume.orientation_code() == "LPS"
    assert volume.metadata["modality"] == "CT"
    assert volume.metadata["series_selection"] == "the only series (108 images)"
    assert volume.warnings == []
    assert hash_tree(cranium_series) == before  # reading never touches the input folder


def test_head_ct_series_agrees_with_simpleitk(cranium_series):
    assert_matches_sitk(read_volume(cranium_series), sitk_series(cranium_series))


def test_known_anatomy_in_head_ct(cranium):
    """Sanity of the source: air around the head, bone in the skull, brain-like HU in the centre."""
    v = cranium.voxels_hu
    assert v[:, 0, 0].max() <= -900  # air at a corner
    assert v.max() > 1500  # cortical bone
    assert -15 < np.median(v[60, 120:136, 120:136]) < 15  # CSF in the lateral ventricles
    for j, i in ((140, 70), (140, 170), (170, 90)):
        assert 15 < np.median(v[60, j:j + 12, i:i + 12]) < 35  # grey/white matter on both sides


@pytest.mark.parametrize("flip", ["rows", "columns"])
def test_flipped_orientation_gives_the_same_anatomy(cranium, cranium_copy, flip):
    """The same scan stored with a flipped ImageOrientationPatient (and pixels to match)."""
    size_i, size_j = 256, 256

    def mirror(ds, k):
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        spacing = np.array(ds.PixelSpacing, dtype=float)  # (row, column) spacing
        pixels = ds.pixel_array
        if flip == "columns":  # i now runs towards patient right
            ipp = ipp + iop[:3] * spacing[1] * (size_i - 1)
            iop[:3] *= -1
            pixels = pixels[:, ::-1]
        else:  # j now runs anterior; the slice normal flips, so the stack order reverses too
            ipp = ipp + iop[3:] * spacing[0] * (size_j - 1)
            iop[3:] *= -1
            pixels = pixels[::-1, :]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()

    edit_series(cranium_copy, mirror)
    stored = read_volume(cranium_copy)
    assert stored.orientation_code() == ("RPI" if flip == "columns" else "LAI")
    assert not np.array_equal(stored.voxels_hu, cranium.voxels_hu)
    canonical, reorientation = to_canonical(stored)
    assert_same_volume(canonical, cranium, atol_mm=1e-5)
    np.testing.assert_array_equal(reorientation.undo(canonical.voxels_hu), stored.voxels_hu)
    assert_matches_sitk(stored, sitk_series(cranium_copy), atol_mm=1e-5)


def test_slices_sorted_by_position_not_name_or_instance_number(cranium, cranium_copy):
    rng = random.Random(7)
    numbers = list(range(1, 109))
    rng.shuffle(numbers)
    edit_series(cranium_copy, lambda ds, k: setattr(ds, "InstanceNumber", numbers[k]))
    files = sorted(cranium_copy.iterdir())
    names = [f"IM{n:04d}" for n in range(len(files))]
    rng.shuffle(names)
    for f, name in zip(files, names):
        f.rename(cranium_copy / name)  # no extension, shuffled names: both meaningless
    assert_same_volume(read_volume(cranium_copy), cranium)


def test_rescale_slope_and_intercept_per_slice(cranium, cranium_copy):
    def rescale(ds, k):
        hu = ds.pixel_array.astype(np.int32)
        ds.PixelRepresentation = 0
        if k % 2:  # stored = 2 * (HU + 1024), slope 0.5
            ds.PixelData = (2 * (hu + 1024)).astype(np.uint16).tobytes()
            ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
        else:  # stored = HU + 1024
            ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
            ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"

    edit_series(cranium_copy, rescale)
    assert_same_volume(read_volume(cranium_copy), cranium)


def test_non_square_pixels_follow_dicom_row_column_order(cranium_copy):
    edit_series(cranium_copy, lambda ds, k: setattr(ds, "PixelSpacing", ["0.5", "0.8"]))  # (row, column)
    volume = read_volume(cranium_copy)
    np.testing.assert_allclose(volume.spacing_mm[:2], [0.8, 0.5])  # (i = column, j = row)
    assert_matches_sitk(volume, sitk_series(cranium_copy))


def drifting_series(cranium, folder: Path, rows_moved) -> tuple[CTVolume, np.ndarray]:
    """20 slices of the head CT written as a series whose slice k lies ``rows_moved(k)`` rows further along j (its
    origin and its pixels moved together, as a tilted gantry stores them); returns the true volume and what the
    reader should give back: the true volume with the rows a moved slice never held at the fill value."""
    sub = CTVolume(cranium.voxels_hu[40:60], cranium.spacing_mm,
                   cranium.index_to_lps([0, 0, 40]), cranium.direction, dict(cranium.metadata))
    write_dicom_series(sub, folder)
    row_mm = float(sub.spacing_mm[1])
    expected = sub.voxels_hu.copy()

    def move(ds, k):
        rows = rows_moved(k)
        if rows:
            ipp = np.array(ds.ImagePositionPatient, dtype=float) + np.array([0.0, rows * row_mm, 0.0])
            ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
            shifted = np.full((256, 256), -1024, np.int16)  # stored row j' shows true row j' + rows
            shifted[: 256 - rows] = ds.pixel_array[rows:]
            ds.PixelData = shifted.tobytes()
            expected[k, :rows] = -1024

    edit_series(folder, move)
    return sub, expected


def test_gantry_tilt_is_corrected_onto_a_perpendicular_grid(cranium, tmp_path):
    """Slices whose origins drift one row per slice along j (a 32 degree tilt), pixels drifting too."""
    sub, expected = drifting_series(cranium, tmp_path / "tilted", lambda k: k)
    volume = read_volume(tmp_path / "tilted")
    assert any("gantry tilt of 32.54 degrees" in w for w in volume.warnings), volume.warnings
    np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(volume.origin_mm, sub.origin_mm, atol=1e-5)
    np.testing.assert_array_equal(volume.voxels_hu, expected)


def test_positions_rounded_in_the_header_are_a_uniform_grid(cranium, cranium_copy):
    """Thin slices (0.625 mm) whose positions a header wrote to 0.01 or 0.1 mm: gaps of 0.62 / 0.63 or
    0.6 / 0.7 mm, yet every slice lies within the rounding of one grid - read as it is, never resampled."""
    z0 = float(cranium.origin_mm[2])
    for decimals in (2, 1):
        edit_series(cranium_copy, lambda ds, k: setattr(
            ds, "ImagePositionPatient", [*ds.ImagePositionPatient[:2], f"{z0 + 0.625 * k:.{decimals}f}"]))
        volume = read_volume(cranium_copy)
        np.testing.assert_array_equal(volume.voxels_hu, cranium.voxels_hu)  # 108 slices, none interpolated
        assert not any("resampled" in w for w in volume.warnings), volume.warnings
        assert volume.spacing_mm[2] == pytest.approx(0.625, abs=1e-3)  # the grid from first to last


def test_orientation_rounded_in_the_header_is_not_a_tilt_but_a_small_tilt_is(cranium, tmp_path):
    """An oblique series (17 and 11 degrees, 108 slices over 486 mm) whose orientation cosines are written to 3
    decimals: the slice origins then drift ~0.02 degree (0.18 pixel at the far end) off the rounded normal -
    rounding, not gantry tilt. A real tilt of 0.3 degree on the same series is still corrected."""
    a, b = np.radians(17), np.radians(11)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    sub = CTVolume(cranium.voxels_hu, (0.9570312, 0.9570312, 4.5), (-122.4, -135.7, -241.3), rx @ rz,
                   dict(cranium.metadata))
    folder = tmp_path / "oblique"
    write_dicom_series(sub, folder)
    edit_series(folder, lambda ds, k: setattr(
        ds, "ImageOrientationPatient", [f"{float(v):.3f}" for v in ds.ImageOrientationPatient]))
    volume = read_volume(folder)
    assert not any("tilt" in w for w in volume.warnings), volume.warnings
    np.testing.assert_array_equal(volume.voxels_hu, sub.voxels_hu)

    column = (rx @ rz)[:, 1]  # the drift of a 0.3 degree tilt: along the image's column direction

    def tilt(ds, k):
        ipp = np.array(ds.ImagePositionPatient, dtype=float) + column * 4.5 * k * np.tan(np.radians(0.3))
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]

    edit_series(folder, tilt)
    assert any("gantry tilt of 0.3" in w for w in read_volume(folder).warnings)


def test_one_sop_instance_uid_at_two_positions_keeps_both_slices(cranium, cranium_copy):
    """A damaged header gives slice 21 the SOPInstanceUID of slice 20: two slices, not one image twice."""
    files = sorted_series_files(cranium_copy)
    uid = pydicom.dcmread(files[20]).SOPInstanceUID
    ds = pydicom.dcmread(files[21])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(files[21])
    volume = read_volume(cranium_copy)
    np.testing.assert_array_equal(volume.voxels_hu, cranium.voxels_hu)
    assert any("share their SOPInstanceUID" in w for w in volume.warnings), volume.warnings
    assert not any("duplicate" in w or "resampled" in w for w in volume.warnings), volume.warnings
    shutil.copy(files[21], cranium_copy / "copy_of_21")  # a true copy (same UID, same position): read once
    copy = pydicom.dcmread(files[20])  # and a copy whose header rewrote the position to 0.1 mm: a copy too
    copy.ImagePositionPatient = [f"{float(v):.1f}" for v in copy.ImagePositionPatient]
    copy.save_as(cranium_copy / "rounded_copy_of_20")
    volume = read_volume(cranium_copy)
    np.testing.assert_array_equal(volume.voxels_hu, cranium.voxels_hu)
    assert any("2 duplicate copies" in w for w in volume.warnings), volume.warnings


def test_one_slice_drifting_in_plane_is_put_back(cranium, tmp_path):
    """The first and the last slice in line, one slice between them moved two rows (a drift that is not a
    straight tilt): the steepest drift counts, so that slice is shifted back onto the grid, with a warning."""
    _, expected = drifting_series(cranium, tmp_path / "drift", lambda k: 2 if k == 10 else 0)
    volume = read_volume(tmp_path / "drift")
    assert any("gantry tilt" in w for w in volume.warnings), volume.warnings
    np.testing.assert_array_equal(volume.voxels_hu, expected)


def test_one_missing_slice_is_interpolated_with_a_warning(cranium, cranium_copy):
    files = sorted_series_files(cranium_copy)
    files[50].unlink()
    volume = read_volume(cranium_copy)
    assert volume.voxels_hu.shape == cranium.voxels_hu.shape
    assert any("not uniform" in w and "resampled to 1.5 mm" in w for w in volume.warnings)
    np.testing.assert_array_equal(volume.voxels_hu[:50], cranium.voxels_hu[:50])
    np.testing.assert_array_equal(volume.voxels_hu[51:], cranium.voxels_hu[51:])
    np.testing.assert_allclose(volume.voxels_hu[50], (cranium.voxels_hu[49] + cranium.voxels_hu[51]) / 2, atol=1e-3)


def test_several_missing_slices_are_refused(cranium_copy):
    for f in sorted_series_files(cranium_copy)[50:53]:
        f.unlink()
    with pytest.raises(Exception, match=r"slices are missing or irregular: a gap of 6 mm .* spacing is 1.5 mm"):
        read_volume(cranium_copy)


def test_real_series_with_missing_slice_gap_is_refused(dicomdirtests):
    with pytest.raises(Exception, match="gap of 202.5 mm"):
        read_volume(dicomdirtests / "77654033" / "CT2")


def test_folder_with_several_series_takes_the_largest_ct(cranium, cranium_series, tmp_path, dicomdirtests):
    folder = tmp_path / "study"
    shutil.copytree(cranium_series, folder / "head")
    small = CTVolume(cranium.voxels_hu[:20], cranium.spacing_mm, cranium.origin_mm, cranium.direction)
    write_dicom_series(small, folder / "small")
    shutil.copytree(dicomdirtests / "98892003" / "MR700", folder / "mr")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.dcm").write_bytes(b"")
    shutil.copy(dicomdirtests / "DICOMDIR", folder / "DICOMDIR")
    before = hash_tree(folder)

    volume = read_volume(folder)
    assert volume.voxels_hu.shape[0] == 108
    assert volume.metadata["series_selection"].startswith("the largest CT series (108 images) of 3 series")
    small_uid = read_volume(folder / "small").metadata["series_instance_uid"]
    picked = read_volume(folder, series_uid=small_uid)
    np.testing.assert_array_equal(picked.voxels_hu, cranium.voxels_hu[:20])
    assert "as requested" in picked.metadata["series_selection"]
    with pytest.raises(Exception, match="series 1.2.3 is not here; found: "):
        read_volume(folder, series_uid="1.2.3")
    mr_uid = pydicom.dcmread(next((folder / "mr").iterdir())).SeriesInstanceUID
    with pytest.raises(Exception, match="MR images, not CT"):
        read_volume(folder, series_uid=mr_uid)
    # the DICOMDIR file stands for its folder
    assert read_volume(folder / "DICOMDIR").voxels_hu.shape[0] == 108
    assert hash_tree(folder) == before


def test_list_of_files(cranium, cranium_series):
    files = sorted_series_files(cranium_series)[10:30]
    random.Random(3).shuffle(files)
    volume = read_volume(files)
    np.testing.assert_array_equal(volume.voxels_hu, cranium.voxels_hu[10:30])
    np.testing.assert_allclose(volume.origin_mm, cranium.index_to_lps([0, 0, 10]), atol=1e-6)


def test_real_small_ct_series_from_pydicom_data(dicomdirtests):
    """A real GE CT series (descending z, InstanceNumber ascending) in a folder full of other series."""
    folder = dicomdirtests / "98892001" / "CT5N"
    volume = read_volume(folder)
    assert volume.voxels_hu.shape == (5, 16, 16)
    np.testing.assert_allclose(volume.spacing_mm, [0.488281, 0.488281, 2.5], atol=1e-6)
    np.testing.assert_allclose(volume.origin_mm, [-72.2, -143.0, -1.2375], atol=1e-5)
    assert volume.metadata["kvp"] == 120.0 and volume.metadata["manufacturer"] == "GE MEDICAL SYSTEMS"
    assert_matches_sitk(volume, sitk_series(folder), atol_mm=1e-5)
    # whole dicomdirtests tree: many series (CR, MR, CT, localizers, files without pixels) -> this one
    whole = read_volume(dicomdirtests)
    np.testing.assert_array_equal(whole.voxels_hu, volume.voxels_hu)


# ---- compressed transfer syntaxes (real pydicom-data slices) ---------------------------------------
def series_from_slice(src: Path, folder: Path, n: int = 3, step_mm: float = 5.0) -> Path:
    """n copies of one real slice stacked along its normal: a real encoded series for the decoders."""
    folder.mkdir(parents=True)
    for k in range(n):
        ds = pydicom.dcmread(src)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        ipp = np.array(ds.ImagePositionPatient, dtype=float) + k * step_mm * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{k}.dcm")
    return folder


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "693_UNCI.dcm", "693_J2KR.dcm", "693_J2KI.dcm", "bad_sequence.dcm",
                                  "J2K_pixelrep_mismatch.dcm", "explicit_VR-UN.dcm"])
def test_transfer_syntaxes_decode_like_gdcm(name, dcm, tmp_path):
    folder = series_from_slice(dcm(name), tmp_path / "s")
    volume = read_volume(folder)
    assert volume.voxels_hu.shape == (3, 512, 512)
    assert_matches_sitk(volume, sitk_series(folder), atol_mm=1e-4)
    ds = pydicom.dcmread(dcm(name))
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    np.testing.assert_allclose(volume.direction[:, 0], iop[:3] / np.linalg.norm(iop[:3]), atol=1e-6)
    np.testing.assert_allclose(volume.spacing_mm[2], 5.0, atol=1e-3)


def test_jpeg2000_lossless_equals_uncompressed(dcm, tmp_path):
    raw = read_volume(series_from_slice(dcm("693_UNCR.dcm"), tmp_path / "raw"))
    j2k = read_volume(series_from_slice(dcm("693_J2KR.dcm"), tmp_path / "j2k"))
    np.testing.assert_array_equal(j2k.voxels_hu, raw.voxels_hu)
    assert raw.voxels_hu.min() == -3024 and raw.voxels_hu.max() > 1000  # -3024: outside the scan circle


def test_rle_lossless(dcm, tmp_path):
    folder = series_from_slice(dcm("693_UNCR.dcm"), tmp_path / "rle")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == RLELossless
    raw = read_volume(series_from_slice(dcm("693_UNCR.dcm"), tmp_path / "raw"))
    np.testing.assert_array_equal(read_volume(folder).voxels_hu, raw.voxels_hu)


def test_enhanced_multiframe_ct(dcm):
    path = dcm("eCT_Supplemental.dcm")
    volume = read_volume(path)
    assert volume.voxels_hu.shape == (2, 512, 512)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.astype(np.float32) - 1024.0
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    # IOP (-1,0,0 / 0,1,0): the slice normal is -z, so the slice with the higher z comes first
    order = np.argsort(z)[::-1]
    np.testing.assert_array_equal(volume.voxels_hu, frames[order])
    np.testing.assert_allclose(volume.direction, np.diag([-1.0, 1.0, -1.0]), atol=1e-9)
    np.testing.assert_allclose(volume.spacing_mm, [0.388672, 0.388672, abs(z[0] - z[1])], atol=1e-6)
    np.testing.assert_allclose(volume.origin_mm, [99.5, -301.5, max(z)], atol=1e-6)
    assert any("RescaleType" in w for w in volume.warnings)  # a perfusion map, not HU: said plainly
    assert volume.metadata["slice_thickness_mm"] == 10.0
