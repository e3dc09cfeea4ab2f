"""DICOM results a PACS can show: the saliency as a Parametric Map, its top region as a SEG, and a
secondary-capture series with the overlay burned in (``acat explain --dicom``).

Written with highdicom (Herrmann et al., "Highdicom: a Python library for standardized encoding of image
annotations and machine learning model outputs in pathology and radiology", J Digit Imaging 2022) into the
results folder, beside the NRRD files::

    dicom/saliency_map.dcm          Parametric Map: the saliency map in [0, 1], float32, one frame per slice
    dicom/saliency_region_seg.dcm   Segmentation (BINARY): the top ``top_percent`` % of the saliency
    dicom/overlay/overlay_NNNN.dcm  Secondary Capture (RGB): CT + saliency overlay, one image per slice

Every object is in the source's study (its StudyInstanceUID) and frame of reference, refers to the source
series and, frame by frame, to the source image at the same position; the series and instances are ours
(new UIDs). The frames lie on the explained volume's grid, which is the source's for a regular series
(positions and orientation equal); a series whose slices were resampled or realigned on reading (gantry
tilt, a missing slice) gets frames on the corrected grid, referring to the series as a whole.

The volume explained may also be an NRRD or NIfTI copy of the source series (``acat explain copy.nrrd --dicom
--dicom-source SERIES``: what the Slicer module and the web viewer run, explaining the volume they show): the
frames then match the source's images by position just the same, and at least one must.

The patient and study attributes are copied from the source - that is how a PACS files the results with
the scan - and nothing identifying is added. ``deidentify=True`` empties or removes them instead (PS3.15
Basic Application Level Confidentiality Profile with the Retain UIDs option: the UIDs stay, so the results
still lie beside their scan).
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pydicom

from . import __version__
from .errors import ACATInputError
from .io import dicom_scan, dicom_volume
from .io.itk_files import file_kind
from .volume import CTVolume

DICOM_FOLDER = "dicom"
PARAMETRIC_MAP = f"{DICOM_FOLDER}/saliency_map.dcm"
SEGMENTATION = f"{DICOM_FOLDER}/saliency_region_seg.dcm"
OVERLAY_FOLDER = f"{DICOM_FOLDER}/overlay"
#: the share of the saliency's non-zero voxels that the SEG marks (the most salient ones)
DEFAULT_TOP_PERCENT = 5.0
SERIES_NUMBERS = {"map": 9101, "seg": 9102, "overlay": 9103}
MANUFACTURER = "ACAT"
MODEL_NAME = "ACAT for 3D Slicer"
CREATOR = "ACAT^"  # a person name of one component ends with "^" (PS3.5 6.2.1.2)
#: type 2 attributes of the patient and study modules that highdicom copies from the source: a source that
#: leaves them out (valid for some objects, common in practice) gets them empty in the copy we read
_COPIED_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "AccessionNumber", "StudyID")
_POSITION_TOLERANCE_MM = 0.05  # DS values keep ~16 characters: positions written by others round-trip to this

#: PS3.15 Annex E Basic Profile attributes that can reach our objects (copied by highdicom from the source):
#: type 2 ones are emptied, the others removed
_EMPTIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
            "ReferringPhysicianName", "AccessionNumber", "StudyID", "Laterality")
_REMOVED = ("OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthTime", "PatientAge",
            "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
            "MilitaryRank", "EthnicGroup", "PatientComments", "IssuerOfPatientID", "PatientSpeciesDescription",
            "PatientBreedDescription", "ResponsiblePerson", "ResponsibleOrganization", "PatientIdentityRemoved",
            "DeidentificationMethod", "DeidentificationMethodCodeSequence", "StudyDescription", "SeriesDate",
            "SeriesTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "InstitutionName",
            "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "OperatorsName",
            "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
            "RequestingPhysician", "AdmittingDiagnosesDescription", "AdditionalPatientHistory",
            "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
            "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
            "ClinicalTrialTimePointID", "ClinicalTrialCoordinatingCenterName", "ReferringPhysicianIdentificationSequence",
            "ReferencedPatientSequence", "ReferencedStudySequence", "RequestAttributesSequence")


@dataclass
class DicomSource:
    """The source series of a volume: its images' headers (no pixels), and for each slice of the volume the
    header (and frame, for a multi-frame image) at the same position, or None where the grid was changed.

    Attributes:
        images: one header per source file (a multi-frame image once), localizers left out.
        slices: per volume slice k, (header, frame index or None) of the image at that position, or None.
    """

    images: list
    slices: list = field(default_factory=list)

    @property
    def first(self) -> pydicom.Dataset:
        return self.images[0]

    @property
    def matched(self) -> int:
        return sum(s is not None for s in self.slices)


def _source_files(source: Union[str, os.PathLike, Sequence]) -> tuple[list[Path], Path]:
    """The files that `ACATLogic.read_volume` would read from ``source``, and the folder they stand for."""
    if isinstance(source, (list, tuple)):
        files = [Path(p) for p in source]
        return files, Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path(".")
    path = Path(source)
    if path.is_file() and file_kind(path) is not None:
        kind = "NIfTI" if path.name.lower().endswith((".nii", ".nii.gz")) else "NRRD"
        raise ACATInputError(f"is {kind}, not DICOM: the DICOM results (--dicom) refer to the source's DICOM "
                             "series; explain the DICOM series, or leave out --dicom", path)
    if path.is_file() and path.name.upper() == "DICOMDIR":
        path = path.parent
    if path.is_dir():
        return list(dicom_scan.iter_candidate_files(path)), path
    return [path], path


def source_list(path: Union[str, os.PathLike]) -> Union[Path, list]:
    """``--dicom-source``: a DICOM folder or file as it is, or - a ``.txt`` file - the list of the series' files
    it holds, one path per line (what the Slicer module writes for a series in its DICOM database, whose
    files may lie anywhere)."""
    path = Path(path)
    if path.suffix.lower() != ".txt" or not path.is_file():
        return path
    try:
        files = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ACATInputError(f"cannot read the list of DICOM files ({exc})", path) from None
    if not files:
        raise ACATInputError("the list of DICOM files is empty", path)
    return files


def check_dicom_input(source) -> None:
    """Raise `ACATInputError` (one line) when ``source`` is not DICOM - before a long explanation starts."""
    if isinstance(source, (list, tuple)):
        for item in source:
            _source_files(item)
    else:
        _source_files(source)


def dicom_source(source, volume: CTVolume, *, series_uid: Optional[str] = None) -> DicomSource:
    """The headers of the series ``volume`` was read from (``source`` as given to `read_volume`).

    ``volume`` may also be a copy of that series in another format (the NRRD a viewer writes of the volume
    it shows, ``acat explain input.nrrd --dicom --dicom-source SERIES``): then ``series_uid`` or the largest
    CT series of ``source`` is the source, and at least one slice must lie at a source image's position.

    Raises `ACATInputError` when ``source`` is not DICOM or no longer holds that series."""
    files, root = _source_files(source)
    from_dicom = volume.metadata.get("source_format") == "DICOM"
    uid = series_uid or volume.metadata.get("series_instance_uid")
    if from_dicom and not uid:
        raise ACATInputError("the volume was not read from DICOM: the DICOM results (--dicom) need a DICOM source "
                             "series", root)
    with dicom_scan.lenient_pydicom():
        records, _ = dicom_volume.select_series(dicom_scan.scan(files), root, uid)
    records = [r for r in records if not r.is_localizer and r.position is not None]
    if not records:
        raise ACATInputError("the source series has no images with a position", root)
    images, seen = [], set()
    for r in records:
        if r.sop_instance_uid not in seen:
            seen.add(r.sop_instance_uid)
            for keyword in _COPIED_TYPE_2:  # headers parsed for us alone: the files stay untouched
                if keyword not in r.header:
                    setattr(r.header, keyword, "")
            images.append(r.header)
    positions = np.array([r.position for r in records])
    slices = []
    row_dir, col_dir = volume.direction[:, 0], volume.direction[:, 1]
    for k in range(volume.voxels_hu.shape[0]):
        distance = np.linalg.norm(positions - volume.index_to_lps([0, 0, k]), axis=1)
        best = int(np.argmin(distance))
        r = records[best]
        same_plane = (r.row_dir is not None and np.allclose(r.row_dir, row_dir, atol=1e-4)
                      and np.allclose(r.col_dir, col_dir, atol=1e-4)
                      and (r.rows, r.columns) == volume.voxels_hu.shape[1:])
        slices.append((r.header, r.frame) if distance[best] <= _POSITION_TOLERANCE_MM and same_plane else None)
    found = DicomSource(images, slices)
    if not from_dicom and found.matched == 0:
        # a volume handed over by a viewer (an NRRD of what it shows) is only said to come from this series:
        # without one slice at a source image's position the results would refer to a scan they do not lie on
        raise ACATInputError("the volume does not lie on the slices of the DICOM source series (another scan, or "
                             "resampled); explain the DICOM series itself", root)
    return found


# -------------------------------------------------------------------------------------------------------------
def top_region(saliency: np.ndarray, top_percent: float = DEFAULT_TOP_PERCENT) -> tuple[np.ndarray, float]:
    """(mask, threshold): the voxels at or above the (100 - top_percent) percentile of the saliency's non-zero
    values - the most salient ``top_percent`` % of what the map marks. An all-zero map gives an empty mask."""
    if not 0 < top_percent <= 100:
        raise ACATInputError(f"the top region must be 0 to 100 percent of the map, not {top_percent}")
    positive = saliency[saliency > 0]
    if positive.size == 0:
        return np.zeros(saliency.shape, bool), float("inf")
    threshold = float(np.quantile(positive, 1.0 - top_percent / 100.0, method="higher"))
    return (saliency >= threshold) & (saliency > 0), threshold


def _affine_kji(volume: CTVolume) -> np.ndarray:
    """(4, 4) from array indices (k, j, i) - highdicom's Volume axes - to LPS millimetres."""
    affine = np.eye(4)
    d, s = volume.direction, volume.spacing_mm
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = d[:, 2] * s[2], d[:, 1] * s[1], d[:, 0] * s[0]
    affine[:3, 3] = volume.origin_mm
    return affine


def _patient_orientation(vector: np.ndarray) -> str:
    """DICOM's Patient Orientation letters of a direction (LPS): e.g. "L", "P", "FP" for an oblique one."""
    letters = []
    for axis in np.argsort(-np.abs(vector)):
        if abs(vector[axis]) > 0.1:
            letters.append(("RL", "AP", "FH")[axis][int(vector[axis] > 0)])
    return "".join(letters) or "L"


def _algorithm(bundle_id: str, bundle_version: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(name=f"ACAT {bundle_id}", version=bundle_version or "0",
                                              family=codes.cid7162.ArtificialIntelligence,
                                              source="Fontanella et al., ICML 2023")


def _common_kwargs(series_uid: str, series_number: int) -> dict:
    import highdicom as hd

    return dict(series_instance_uid=series_uid, series_number=series_number, sop_instance_uid=hd.UID(),
                instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
                software_versions=__version__, device_serial_number="0")


def parametric_map(source: DicomSource, saliency: CTVolume, *, bundle_id: str, bundle_version: str,
                   series_description: str) -> pydicom.Dataset:
    """The saliency (float32 in [0, 1]) as a Parametric Map on its own grid, in the source's study."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    grid = hd.Volume(np.ascontiguousarray(saliency.voxels_hu, dtype=np.float32), _affine_kji(saliency),
                     coordinate_system="PATIENT", frame_of_reference_uid=source.first.FrameOfReferenceUID)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY", lut_explanation="ACAT saliency: 0 not salient, 1 most salient",
        unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0), intercept=0.0, slope=1.0,
        quantity_definition=codes.DCM.Saliency)
    pm = hd.pm.ParametricMap(
        source.images, grid, **_common_kwargs(hd.UID(), SERIES_NUMBERS["map"]),
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="SALIENCY", content_description=f"ACAT saliency ({bundle_id})"[:64],
        content_creator_name=CREATOR)
    pm.SeriesDescription = series_description
    pm.Laterality = source.first.get("Laterality", "")  # type 2C of the General Series module
    return pm


def segmentation(source: DicomSource, mask: np.ndarray, like: CTVolume, *, top_percent: float, bundle_id: str,
                 bundle_version: str, series_description: str) -> pydicom.Dataset:
    """The top region as a BINARY SEG, one frame per slice of ``like``'s grid (empty frames kept: every slice
    has its frame; highdicom orders the frames along the slice normal, each with its position)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label = f"ACAT top {top_percent:g}% saliency"
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label[:64], segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
        segmented_property_type=codes.DCM.ImageRegion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(bundle_id, bundle_version))
    grid = hd.Volume(np.ascontiguousarray(mask, dtype=np.uint8), _affine_kji(like), coordinate_system="PATIENT",
                     frame_of_reference_uid=source.first.FrameOfReferenceUID)
    seg = hd.seg.Segmentation(
        source.images, grid, hd.seg.SegmentationTypeValues.BINARY, [description],
        **_common_kwargs(hd.UID(), SERIES_NUMBERS["seg"]), omit_empty_frames=False,
        content_label="SALIENCY", content_description=label[:64], content_creator_name=CREATOR)
    seg.SeriesDescription = series_description
    return seg


def _burn_text(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(rgb)
    ImageDraw.Draw(image).text((3, 2), text, fill=(255, 255, 0), font=ImageFont.load_default())
    return np.asarray(image)


def overlay_images(source: DicomSource, volume: CTVolume, saliency: CTVolume, *, window: tuple,
                   bundle_id: str, series_description: str) -> list[pydicom.Dataset]:
    """One RGB secondary capture per slice: the CT in ``window`` (level, width) with the saliency burned in
    (the overview's colours and threshold: the top 5 % coloured, as the Slicer module and the web viewer
    show it), in the slice's own storage orientation, with its position and orientation
    (Image Plane attributes, for viewers that link series by position) and its source image."""
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.valuerep import format_number_as_ds

    from .overview import overlay_range, overlay_rgb

    level, width = float(window[0]), float(window[1])
    series_uid = hd.UID()
    row_dir, col_dir = volume.direction[:, 0], volume.direction[:, 1]
    orientation = (_patient_orientation(row_dir), _patient_orientation(col_dir))
    iop = [format_number_as_ds(float(v)) for v in np.concatenate([row_dir, col_dir])]
    spacing = (float(volume.spacing_mm[1]), float(volume.spacing_mm[0]))  # (row, column) spacing
    out = []
    low, high = overlay_range(saliency.voxels_hu)
    for k in range(volume.voxels_hu.shape[0]):
        grey = np.clip((volume.voxels_hu[k] - (level - width / 2)) / width, 0, 1)[..., None]
        rgb = (overlay_rgb(grey, saliency.voxels_hu[k], low, high) * 255 + 0.5).astype(np.uint8)
        rgb = _burn_text(rgb, "ACAT saliency - research use only")
        match = source.slices[k] if k < len(source.slices) else None
        reference = match[0] if match is not None else source.first
        sc = hd.sc.SCImage.from_ref_dataset(
            reference, rgb, hd.PhotometricInterpretationValues.RGB, 8, hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid, series_number=SERIES_NUMBERS["overlay"], sop_instance_uid=hd.UID(),
            instance_number=k + 1, manufacturer=MANUFACTURER, pixel_spacing=spacing, patient_orientation=orientation,
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian)
        sc.SeriesDescription = series_description
        sc.BurnedInAnnotation = "YES"
        sc.ImageType = ["DERIVED", "SECONDARY", "OVERLAY"]
        sc.DerivationDescription = f"CT with the ACAT saliency of {bundle_id} burned in"[:1024]
        sc.Laterality = reference.get("Laterality", "")  # type 2C of the General Series module
        sc.FrameOfReferenceUID = source.first.FrameOfReferenceUID
        sc.ImagePositionPatient = [format_number_as_ds(float(v)) for v in volume.index_to_lps([0, 0, k])]
        sc.ImageOrientationPatient = iop
        sc.PixelSpacing = [format_number_as_ds(v) for v in spacing]
        if match is not None:
            item = pydicom.Dataset()
            item.ReferencedSOPClassUID = match[0].SOPClassUID
            item.ReferencedSOPInstanceUID = match[0].SOPInstanceUID
            if match[1] is not None:
                item.ReferencedFrameNumber = match[1] + 1
            sc.SourceImageSequence = DicomSequence([item])
        out.append(sc)
    return out


def deidentify(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Empty (type 2) or remove the identifying attributes, and say so (PS3.15 Basic Profile, Retain UIDs)."""
    from pydicom.sequence import Sequence as DicomSequence

    for keyword in _REMOVED:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in _EMPTIED:
        if keyword in ds:
            setattr(ds, keyword, "")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "ACAT --deidentify: PS3.15 Basic Profile, Retain UIDs Option"
    codes = []
    for value, meaning in (("113100", "Basic Application Confidentiality Profile"), ("113110", "Retain UIDs Option")):
        item = pydicom.Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
    return ds


def write_dicom_results(folder: Path, source: DicomSource, volume: CTVolume, saliency: CTVolume, *,
                        bundle_id: str, bundle_version: str = "", window: tuple = (40.0, 80.0),
                        top_percent: float = DEFAULT_TOP_PERCENT, deidentify_output: bool = False) -> dict:
    """Write the three DICOM results under ``folder`` (the results folder being assembled).

    Returns {"files": [relative names], "top_percent", "threshold", "region_voxels", "series": {what: UID},
    "deidentified", "frames_matched"}: what report.json records."""
    if saliency.voxels_hu.shape != volume.voxels_hu.shape:
        raise ValueError("the saliency must lie on the volume's grid")
    folder = Path(folder)
    (folder / OVERLAY_FOLDER).mkdir(parents=True, exist_ok=True)
    mask, threshold = top_region(saliency.voxels_hu, top_percent)
    stamp = datetime.date.today().strftime("%Y%m%d")
    what = f"ACAT {bundle_id}"
    with warnings.catch_warnings():
        # highdicom's advice about the source's own values (a person name's form, ...): the validator in
        # the tests judges what we write; a user can do nothing about them
        warnings.simplefilter("ignore", UserWarning)
        pm = parametric_map(source, saliency, bundle_id=bundle_id, bundle_version=bundle_version,
                            series_description=f"{what} saliency map"[:64])
        seg = segmentation(source, mask, saliency, top_percent=top_percent, bundle_id=bundle_id,
                           bundle_version=bundle_version,
                           series_description=f"{what} top {top_percent:g}% saliency"[:64])
        overlays = overlay_images(source, volume, saliency, window=window, bundle_id=bundle_id,
                                  series_description=f"{what} saliency overlay"[:64])
    written = []
    for ds, name in [(pm, PARAMETRIC_MAP), (seg, SEGMENTATION)] + [
            (sc, f"{OVERLAY_FOLDER}/overlay_{k + 1:04d}.dcm") for k, sc in enumerate(overlays)]:
        if deidentify_output:
            deidentify(ds)
        ds.ContentDate = ds.get("ContentDate") or stamp
        ds.save_as(folder / name, enforce_file_format=True)
        written.append(name)
    return {"files": written, "top_percent": float(top_percent), "threshold": threshold,
            "region_voxels": int(mask.sum()), "deidentified": bool(deidentify_output),
            "frames_matched": f"{source.matched}/{volume.voxels_hu.shape[0]}",
            "series": {"saliency_map": str(pm.SeriesInstanceUID), "segmentation": str(seg.SeriesInstanceUID),
                       "overlay": str(overlays[0].SeriesInstanceUID) if overlays else ""},
            "source": {"study_instance_uid": str(source.first.StudyInstanceUID),
                       "series_instance_uid": str(source.first.SeriesInstanceUID)}}


def results_writer(source, volume: CTVolume, explanation, bundle, *, series_uid: Optional[str] = None,
                   top_percent: float = DEFAULT_TOP_PERCENT, deidentify_output: bool = False,
                   found: Optional[DicomSource] = None):
    """An ``extra_writer`` for `ACATLogic.outputs.write_explanation` that adds the DICOM results of
    ``explanation`` (its saliency) for ``volume`` read from ``source``; report.json gets a "dicom" section.

    The source's headers are read here (unless ``found``: `dicom_source`'s, read earlier), before anything
    is written: a source that changed since it was read fails now, in one line."""
    import time

    if found is None:
        found = dicom_source(source, volume, series_uid=series_uid)
    hu_window = tuple(bundle.spec.hu_window)

    def write(folder: Path) -> tuple[list[str], dict]:
        start = time.perf_counter()
        info = write_dicom_results(folder, found, volume, explanation.saliency, bundle_id=bundle.id,
                                   bundle_version=str(bundle.card.get("version", "")), window=hu_window,
                                   top_percent=top_percent, deidentify_output=deidentify_output)
        files = info.pop("files")
        info["write_s"] = round(time.perf_counter() - start, 3)
        return files, {"dicom": info}

    return write
