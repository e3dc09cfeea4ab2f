"""Every rejection named in the foundation issue, on real files: one clear line, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ACATLogic import ACATInputError, read_volume

from conftest import hash_tree, sorted_series_files


def rejected(source, match: str, **kwargs) -> str:
    """Read ``source`` expecting a one-line ACATInputError matching ``match``; returns the message."""
    folder = Path(source) if not isinstance(source, list) else None
    before = hash_tree(folder) if folder is not None and folder.is_dir() else None
    with pytest.raises(ACATInputError) as info:
        read_volume(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert pytest.importorskip("re").search(match, message), message
    if before is not None:
        assert hash_tree(folder) == before  # never a write inside the input folder
    return message


def test_non_ct_modality_single_file(dcm):
    msg = rejected(dcm("MR_small.dcm"), "the file holds MR images, not CT; ACAT explains CT scans only")
    assert msg.startswith(str(dcm("MR_small.dcm")))


def test_non_ct_modality_folder(dicomdirtests):
    rejected(dicomdirtests / "98892003" / "MR700", r"no usable CT series here; found 1 series: MR images, not CT")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (tmp_path / "zero.dcm").write_bytes(b"")
    rejected(tmp_path, r"no DICOM images found \(3 files looked at: 2 not a DICOM file, 1 the file is empty\)")


def test_empty_folder(tmp_path):
    rejected(tmp_path, "the folder is empty")


def test_missing_path(tmp_path):
    rejected(tmp_path / "nope", "no such file or folder")


def test_truncated_pixel_data_names_the_file(cranium_copy):
    victim = sorted_series_files(cranium_copy)[40]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 5000])
    msg = rejected(cranium_copy, "cannot (decode|read)")
    assert msg.startswith(str(victim))


def test_truncated_header_is_refused_not_skipped(cranium_copy):
    victim = sorted_series_files(cranium_copy)[40]
    victim.write_bytes(victim.read_bytes()[:300])
    msg = rejected(cranium_copy, "damaged DICOM header .*; repair or remove the file and read again")
    assert msg.startswith(str(victim))


def test_real_truncated_file(dcm):
    # pydicom-data's MR_truncated.dcm: refused (it is MR; its pixel data is also short)
    rejected(dcm("MR_truncated.dcm"), "MR images, not CT")


def test_no_file_meta_is_not_an_image(dcm):
    rejected(dcm("no_meta.dcm"), "not a DICOM file")


def test_single_slice_where_a_volume_is_required(dcm):
    rejected(dcm("CT_small.dcm"), "only 1 slice: a volume needs at least 2; open the folder that holds the whole series")
    # the same file is fine where one slice is allowed
    one = read_volume(dcm("CT_small.dcm"), min_slices=1)
    assert one.voxels_hu.shape == (1, 128, 128)


def test_mixed_image_sizes(cranium_copy, dcm):
    uid = pydicom.dcmread(next(cranium_copy.iterdir())).SeriesInstanceUID
    odd = pydicom.dcmread(dcm("CT_small.dcm"))
    odd.SeriesInstanceUID = uid
    odd.save_as(cranium_copy / "odd.dcm")
    rejected(cranium_copy, r"the series mixes image sizes: 256x256 \(108 images\), 128x128 \(1 images\)")


def test_missing_pixel_data_real_files(dicomdirtests):
    rejected(dicomdirtests / "TINY_ALPHA", "no usable CT series here; found 1 series: no pixel data")


def test_missing_pixel_data_in_one_slice(cranium_copy):
    victim = sorted_series_files(cranium_copy)[7]
    ds = pydicom.dcmread(victim)
    del ds.PixelData
    ds.save_as(victim)
    msg = rejected(cranium_copy, "the file has no pixel data")
    assert msg.startswith(str(victim))


def test_secondary_capture_rgb(dcm):
    rejected(dcm("SC_rgb.dcm"), "secondary capture")


def test_rgb_image_labelled_ct(dcm, tmp_path):
    for k in range(2):
        ds = pydicom.dcmread(dcm("SC_rgb.dcm"))
        ds.Modality = "CT"
        ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [0, 0, 5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.save_as(tmp_path / f"{k}.dcm")
    rejected(tmp_path, r"colour \(RGB\) images, not greyscale CT")


def test_localizers_only(dicomdirtests):
    rejected(dicomdirtests / "98892001" / "CT2N", "localizer")


def test_inconsistent_orientation_within_series(cranium_copy):
    victim = sorted_series_files(cranium_copy)[20]
    ds = pydicom.dcmread(victim)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, -0.43589]
    ds.save_as(victim)
    rejected(cranium_copy, "slice orientation differs within the series")


def test_two_images_at_one_position(cranium_copy):
    files = sorted_series_files(cranium_copy)
    ds = pydicom.dcmread(files[30])
    ds.ImagePositionPatient = pydicom.dcmread(files[31]).ImagePositionPatient
    ds.save_as(files[30])
    rejected(cranium_copy, "2 images share one slice position")


def test_duplicate_copies_of_the_same_file_are_ignored(cranium, cranium_copy):
    shutil.copy(sorted_series_files(cranium_copy)[5], cranium_copy / "copy_of_slice_5")
    volume = read_volume(cranium_copy)
    np.testing.assert_array_equal(volume.voxels_hu, cranium.voxels_hu)
    assert any("1 duplicate" in w for w in volume.warnings)


def test_missing_geometry(cranium_copy):
    victim = sorted_series_files(cranium_copy)[3]
    ds = pydicom.dcmread(victim)
    del ds.ImagePositionPatient
    ds.save_as(victim)
    rejected(cranium_copy, "no ImagePositionPatient/ImageOrientationPatient")


def test_symlink_loop_and_unicode_path(cranium, cranium_series, tmp_path):
    folder = tmp_path / "Schädel CT ünïcode" / "série 1"
    shutil.copytree(cranium_series, folder)
    (folder / "loop").symlink_to(folder.parent, target_is_directory=True)  # a directory cycle
    volume = read_volume(folder.parent)
    np.testing.assert_array_equal(volume.voxels_hu, cranium.voxels_hu)
