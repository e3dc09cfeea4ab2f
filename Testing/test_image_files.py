"""NRRD and NIfTI: reading real files, and write -> read round trips to the bit."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nrrd  # pynrrd (a slicerio dependency): an NRRD parser independent of ITK
import numpy as np
import pytest
import SimpleITK as sitk

from ACATLogic import ACATInputError, CTVolume, read_volume, to_canonical, write_volume
from ACATLogic.io import itk_files


def test_ctchest_geometry_matches_an_independent_nrrd_parser(ctchest_path):
    volume = read_volume(ctchest_path)
    data, header = nrrd.read(str(ctchest_path))  # axes (i, j, k) in pynrrd
    assert header["space"] == "left-posterior-superior"
    assert volume.voxels_hu.shape == (34, 128, 128)
    np.testing.assert_array_equal(volume.voxels_hu, data.transpose(2, 1, 0).astype(np.float32))
    directions = header["space directions"]  # rows: the LPS step of each index axis
    np.testing.assert_allclose(volume.spacing_mm, np.linalg.norm(directions, axis=1), atol=1e-12)
    np.testing.assert_allclose(volume.direction * volume.spacing_mm, directions.T, atol=1e-12)
    np.testing.assert_allclose(volume.origin_mm, header["space origin"], atol=1e-12)
    np.testing.assert_allclose(volume.spacing_mm, [3.046876, 3.046876, 10.0], atol=1e-6)
    assert volume.orientation_code() == "RAS"
    assert volume.voxels_hu.min() == -3024 and volume.voxels_hu.max() == 3070
    assert volume.metadata["source_format"] == "NRRD" and volume.warnings == []


def test_ctchest_canonical_lungs_are_dark_on_both_sides(ctchest_path):
    canonical, _ = to_canonical(read_volume(ctchest_path))
    assert canonical.orientation_code() == "LPS"
    mid = canonical.voxels_hu[canonical.voxels_hu.shape[0] // 2]
    right_lung = mid[50:80, 25:55]  # canonical i runs towards patient left: low i = patient right
    left_lung = mid[50:80, 75:105]
    assert np.median(right_lung) < -500 and np.median(left_lung) < -500


def _oblique_volume(seed=0) -> CTVolume:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    voxels = rng.normal(0, 400, (6, 7, 9)).astype(np.float32)
    voxels[0, 0, 0] = 1234.5678  # fractional values survive
    return CTVolume(voxels, (0.7123456789, 0.80001, 2.5), (-123.456789012, 45.678901234, -300.123456789), q,
                    {"modality": "CT", "series_description": "round trip", "kvp": 120.0})


def test_nrrd_round_trip_is_exact(tmp_path):
    volume = _oblique_volume()
    path = write_volume(volume, tmp_path / "v.nrrd")
    back = read_volume(path)
    np.testing.assert_array_equal(back.voxels_hu, volume.voxels_hu)
    assert back.voxels_hu.dtype == np.float32
    np.testing.assert_allclose(back.origin_mm, volume.origin_mm, atol=1e-9)
    np.testing.assert_allclose(back.spacing_mm, volume.spacing_mm, atol=1e-12)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-12)
    corners = np.array([[0, 0, 0], [8, 6, 5]])
    assert np.abs(back.index_to_lps(corners) - volume.index_to_lps(corners)).max() < 1e-6
    assert back.metadata["series_description"] == "round trip" and back.metadata["kvp"] == 120.0


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip(tmp_path, suffix):
    """Voxels exact; geometry to NIfTI-1's float32 precision (its header stores float32)."""
    volume = _oblique_volume()
    back = read_volume(write_volume(volume, tmp_path / f"v{suffix}"))
    np.testing.assert_array_equal(back.voxels_hu, volume.voxels_hu)
    corners = np.array([[0, 0, 0], [8, 6, 5]])
    err = np.abs(back.index_to_lps(corners) - volume.index_to_lps(corners)).max()
    assert err < 5e-5  # float32 at ~300 mm is 3e-5 mm per ulp
    # values that float32 holds exactly come back exactly: a typical axial CT
    axial = CTVolume(volume.voxels_hu, (0.5, 0.5, 2.0), (-125.5, -100.25, 40.0), np.diag([-1.0, 1.0, 1.0]))
    back = read_volume(write_volume(axial, tmp_path / f"axial{suffix}"))
    assert np.abs(back.index_to_lps(corners) - axial.index_to_lps(corners)).max() < 1e-6
    np.testing.assert_array_equal(back.voxels_hu, axial.voxels_hu)
    if suffix == ".nii.gz":
        with gzip.open(tmp_path / f"v{suffix}") as fh:
            assert len(fh.read(348)) == 348  # really gzip-compressed NIfTI


def test_head_ct_dicom_to_nrrd_and_nifti_agree(cranium_series, tmp_path):
    source = read_volume(cranium_series)
    for name in ("head.nrrd", "head.nii.gz"):
        back = read_volume(write_volume(source, tmp_path / name))
        np.testing.assert_array_equal(back.voxels_hu, source.voxels_hu)
        np.testing.assert_allclose(back.origin_mm, source.origin_mm, atol=2e-5)
    # SimpleITK sees the same grid in our NRRD
    image = sitk.ReadImage(str(tmp_path / "head.nrrd"))
    assert image.GetSize() == (256, 256, 108)
    np.testing.assert_allclose(image.GetOrigin(), source.origin_mm, atol=1e-9)


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path, monkeypatch):
    volume = _oblique_volume()
    target = tmp_path / "out.nrrd"
    write_volume(volume, target)
    original = target.read_bytes()
    with pytest.raises(ACATInputError, match="exists already"):
        write_volume(volume, target)

    def crash(self, image):  # a writer dying half-way leaves a partial temporary file
        Path(self.GetFileName()).write_bytes(b"NRRD0004\npartial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", crash)
    with pytest.raises(ACATInputError, match="cannot write the file"):
        write_volume(volume, target, overwrite=True)
    assert target.read_bytes() == original  # the old output is intact
    assert sorted(os.listdir(tmp_path)) == ["out.nrrd"]  # and no partial file is left


def test_nan_and_infinite_voxels_are_refused(tmp_path):
    arr = np.zeros((3, 4, 5), np.float32)
    arr[1, 2, 3] = np.nan
    arr[2, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "bad.nrrd"))
    with pytest.raises(ACATInputError, match="2 voxels are NaN or infinite"):
        read_volume(tmp_path / "bad.nrrd")


def test_2d_and_vector_images_are_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.int16)), str(tmp_path / "flat.nrrd"))
    with pytest.raises(ACATInputError, match="is 2D"):
        read_volume(tmp_path / "flat.nrrd")
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(ACATInputError, match="3-component"):
        read_volume(tmp_path / "rgb.nii.gz")
    single = sitk.GetImageFromArray(np.zeros((1, 4, 5), np.int16))
    sitk.WriteImage(single, str(tmp_path / "one.nii"))
    with pytest.raises(ACATInputError, match="single slice"):
        read_volume(tmp_path / "one.nii")


def test_garbage_nrrd_is_one_clear_line(tmp_path):
    (tmp_path / "junk.nrrd").write_bytes(b"this is not an nrrd file at all")
    with pytest.raises(ACATInputError) as info:
        read_volume(tmp_path / "junk.nrrd")
    assert str(info.value).startswith(f"{tmp_path / 'junk.nrrd'}: cannot read the NRRD file")
    assert "\n" not in str(info.value)


def test_integer_nifti_is_converted_and_non_hu_ranges_are_flagged(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "u8.nii.gz"))
    volume = read_volume(tmp_path / "u8.nii.gz")
    assert volume.voxels_hu.dtype == np.float32
    np.testing.assert_array_equal(volume.voxels_hu, arr.astype(np.float32))
    assert any("do not look like Hounsfield units" in w for w in volume.warnings)


def test_unsupported_output_suffix(tmp_path):
    with pytest.raises(ACATInputError, match="use a name ending in .nrrd, .nii or .nii.gz"):
        write_volume(_oblique_volume(), tmp_path / "out.png")
    assert itk_files.file_kind(Path("a.NII.GZ")) == ".nii.gz"


def test_a_file_that_appears_while_writing_is_never_replaced_without_overwrite(tmp_path):
    """Two writers of one output: the first to finish wins; the second fails and its temporary file goes."""
    from ACATLogic.io.atomic import atomic_directory, atomic_path

    target = tmp_path / "out.txt"
    with pytest.raises(FileExistsError):
        with atomic_path(target) as tmp:
            tmp.write_text("second")
            target.write_text("first")  # the other writer finishes meanwhile
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    folder = tmp_path / "result"
    with pytest.raises(FileExistsError):
        with atomic_directory(folder) as tmp:
            (tmp / "a").write_text("second")
            folder.mkdir()
            (folder / "a").write_text("first")
    assert (folder / "a").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "result"]
    with atomic_path(target, overwrite=True) as tmp:  # overwrite=True replaces, as before
        tmp.write_text("third")
    assert target.read_text() == "third"


def test_outputs_get_the_usual_permissions_not_the_temporary_files_private_ones(tmp_path):
    """mkstemp/mkdtemp create 0600 files and 0700 folders; outputs follow the umask like any new file."""
    import os
    import stat

    from ACATLogic.io.atomic import atomic_directory, atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "b.txt").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
