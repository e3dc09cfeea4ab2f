"""The direct pixel read of `dicom_volume` (single parse per file) gives exactly pydicom's values, and hands
every other layout to pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from ACATLogic.io import dicom_volume, read_volume, write_dicom_series
from ACATLogic.volume import CTVolume


def series(tmp_path: Path, name: str = "series") -> list[Path]:
    rng = np.random.default_rng(0)
    voxels = rng.integers(-1024, 2000, size=(3, 12, 10)).astype(np.float32)
    volume = CTVolume(voxels, (0.7, 0.8, 2.5), (-3.0, 4.0, 10.0), np.eye(3), {"modality": "CT"})
    write_dicom_series(volume, tmp_path / name)
    return sorted((tmp_path / name).iterdir())


def rewrite(files: list[Path], change) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f, enforce_file_format=True)


def pydicom_hu(files: list[Path]) -> np.ndarray:
    """What pydicom's own decoder gives, rescaled, in slice order (position along z)."""
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])


@pytest.fixture
def spy(monkeypatch):
    """Counts the files decoded by pydicom (the slow path)."""
    calls = []
    original = dicom_volume._read_pixels

    def counting(path, *args):
        calls.append(path)
        return original(path, *args)

    monkeypatch.setattr(dicom_volume, "_read_pixels", counting)
    return calls


def high_bits_unsigned(ds):
    """BitsStored 12, unsigned, with garbage in the 4 unused high bits (pydicom masks them)."""
    values = np.frombuffer(ds.PixelData, "<i2").astype(np.int32) + 1024
    ds.PixelData = (values.astype(np.uint16) | 0xB000).tobytes()
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 0, 12, 11, "-1024"


def high_bits_signed(ds):
    """BitsStored 12, signed: pydicom sign-extends bit 11 over the unused bits."""
    values = np.frombuffer(ds.PixelData, "<i2").astype(np.int16) // 2
    ds.PixelData = (values.view(np.uint16) & 0x0FFF | 0x5000).tobytes()
    ds.BitsStored, ds.HighBit = 12, 11


@pytest.mark.parametrize("change", [None, high_bits_unsigned, high_bits_signed,
                                    lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", ImplicitVRLittleEndian),
                                    lambda ds: setattr(ds, "RescaleSlope", "0.5")],
                         ids=["explicit", "bits_stored_12_unsigned", "bits_stored_12_signed", "implicit_vr",
                              "fractional_slope"])
def test_direct_read_equals_pydicom(tmp_path, spy, change):
    files = series(tmp_path)
    if change is not None:
        rewrite(files, change)
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.voxels_hu, pydicom_hu(files).astype(np.float32))
    assert spy == []  # every file was read directly


def eight_bit(ds):
    values = np.clip(np.frombuffer(ds.PixelData, "<i2") // 16 + 64, 0, 255).astype(np.uint8)
    ds.PixelData = values.tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0


@pytest.mark.parametrize("change", [
    lambda ds: ds.add_new(0xFFFCFFFC, "OB", b"\0" * 6),  # Data Set Trailing Padding after the pixels
    lambda ds: eight_bit(ds),
], ids=["element_after_pixels", "eight_bit"])
def test_other_layouts_go_to_pydicom(tmp_path, spy, change):
    files = series(tmp_path)
    rewrite(files, change)
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.voxels_hu, pydicom_hu(files).astype(np.float32))
    assert len(spy) == len(files)


def test_a_truncated_file_is_reported_by_pydicom(tmp_path, spy):
    files = series(tmp_path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-50])
    with pytest.raises(Exception) as err:
        read_volume(tmp_path / "series")
    assert files[1].name in str(err.value)
    assert files[1] in spy
