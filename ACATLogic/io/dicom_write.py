"""Write a `CTVolume` as a classic CT DICOM series (one file per slice, CT Image Storage).

Voxels are stored as int16 with RescaleSlope 1 and RescaleIntercept 0, so integer HU round-trip
exactly; fractional HU are rounded to the nearest integer (a warning is returned). No patient name,
ID or birth date is written: those attributes are present but empty, as the standard allows; so are the
other type 2 attributes of the CT Image IOD that a volume does not know (study date and time, accession
number, referring physician, position reference, kVp, ...), so the series passes a DICOM validator
(dciodvfy) and other tools (highdicom) accept it as a source.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from pydicom.valuerep import format_number_as_ds

from ..errors import ACATInputError
from ..progress import ProgressCallback, no_progress
from ..volume import CTVolume
from .atomic import atomic_directory


def _ds(values) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def write_dicom_series(volume: CTVolume, out_dir: Path, *, series_description: str = "ACAT volume",
                       series_number: int = 1001, study_instance_uid: Optional[str] = None,
                       overwrite: bool = False, progress: ProgressCallback = no_progress) -> list[str]:
    """Write ``volume`` into the new folder ``out_dir`` (atomically). Returns warnings (may be empty).

    Each slice k is written with ImagePositionPatient = origin + k * spacing_k * direction[:, 2] and
    ImageOrientationPatient = the i and j direction columns, so any reader that sorts along the slice
    normal recovers the geometry exactly.
    """
    notes = []
    voxels = volume.voxels_hu
    rounded = np.rint(voxels)
    if not np.array_equal(rounded, voxels):
        notes.append("fractional HU values were rounded to integers for DICOM")
    if rounded.min() < -32768 or rounded.max() > 32767:
        raise ACATInputError(f"HU values {rounded.min():g}..{rounded.max():g} do not fit 16-bit DICOM")
    pixels = rounded.astype(np.int16)

    now = datetime.datetime.now()
    study_uid = study_instance_uid or volume.metadata.get("study_instance_uid") or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    meta = volume.metadata
    k_step = volume.direction[:, 2] * volume.spacing_mm[2]
    iop = _ds(np.concatenate([volume.direction[:, 0], volume.direction[:, 1]]))
    pixel_spacing = _ds([volume.spacing_mm[1], volume.spacing_mm[0]])  # DICOM: (row, column) spacing
    n = voxels.shape[0]
    try:
        with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
            for k in range(n):
                if k % 16 == 0:
                    progress(k / n, "writing DICOM slices")
                sop_uid = generate_uid()
                file_meta = FileMetaDataset()
                file_meta.MediaStorageSOPClassUID = CTImageStorage
                file_meta.MediaStorageSOPInstanceUID = sop_uid
                file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
                ds = FileDataset(str(tmp / f"slice_{k:05d}.dcm"), {}, file_meta=file_meta, preamble=b"\0" * 128)
                ds.SOPClassUID = CTImageStorage
                ds.SOPInstanceUID = sop_uid
                ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
                ds.ContentDate = now.strftime("%Y%m%d")
                ds.ContentTime = now.strftime("%H%M%S")
                ds.Modality = "CT"
                ds.Manufacturer = meta.get("manufacturer", "")
                ds.SeriesDescription = series_description
                ds.PatientName = ""
                ds.PatientID = ""
                ds.PatientBirthDate = ""
                ds.PatientSex = ""
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.FrameOfReferenceUID = frame_uid
                ds.StudyID = ""
                # type 2 (present, may be empty) in the General Study, General Series, Frame of Reference and
                # CT Image modules: we know none of them, and dates or names would be identifying anyway
                ds.StudyDate = ""
                ds.StudyTime = ""
                ds.ReferringPhysicianName = ""
                ds.AccessionNumber = ""
                ds.Laterality = ""
                ds.PatientPosition = ""
                ds.PositionReferenceIndicator = ""
                ds.AcquisitionNumber = ""
                ds.SeriesNumber = series_number
                ds.InstanceNumber = k + 1
                ds.ImagePositionPatient = _ds(volume.origin_mm + k * k_step)
                ds.ImageOrientationPatient = iop
                ds.PixelSpacing = pixel_spacing
                ds.SliceThickness = format_number_as_ds(float(meta.get("slice_thickness_mm", volume.spacing_mm[2])))
                ds.KVP = format_number_as_ds(float(meta["kvp"])) if "kvp" in meta else ""
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
                ds.BitsAllocated = 16
                ds.BitsStored = 16
                ds.HighBit = 15
                ds.PixelRepresentation = 1
                ds.RescaleIntercept = "0"
                ds.RescaleSlope = "1"
                ds.RescaleType = "HU"
                ds.PixelData = pixels[k].tobytes()
                ds.save_as(tmp / f"slice_{k:05d}.dcm", enforce_file_format=True)
    except FileExistsError:
        raise ACATInputError("the output folder exists already; choose another or allow overwriting", out_dir) from None
    progress(1.0, "writing DICOM slices")
    return notes
