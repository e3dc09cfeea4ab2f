"""Where a volume node came from in Slicer's DICOM database, for the DICOM results (``acat explain --dicom``).

Slicer's DICOM scalar volume plugin records the SOP Instance UIDs of the images a volume was loaded from in
the node's ``DICOM.instanceUIDs`` attribute (space-separated, one per slice); the DICOM database gives each
instance's file (``fileForInstance``, "" when the database no longer has it). Those files are the source
series that the DICOM results refer to: the background job explains the node's voxels (the NRRD the module
writes, as for every run) and gets the files as ``--dicom-source``, so the one ``acat explain`` writes the
whole results folder, DICOM objects included (`request.DicomResults`).

``database`` is ``slicer.dicomDatabase`` in Slicer (a ctkDICOMDatabase; None when no database is open); a
test passes any object with ``fileForInstance``. No Qt or Slicer import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def dicomSourceFiles(volumeNode, database) -> Tuple[List[str], str]:
    """(the files of the series ``volumeNode`` was loaded from, "") or ([], one line saying why there are
    none). The files are in the attribute's order, each once."""
    if volumeNode is None:
        return [], "select a CT volume first"
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        return [], "the volume was not loaded from Slicer's DICOM database, so there is no source series to refer to"
    if database is None:
        return [], "Slicer's DICOM database is not open: open it in the DICOM module to find the source series"
    files, missing, uids = [], 0, list(dict.fromkeys(uids))
    for uid in uids:
        path = database.fileForInstance(uid) or ""
        if path and Path(path).is_file():
            files.append(path)
        else:
            missing += 1
    if missing:
        return [], (f"{missing} of the {len(uids)} source images are no longer in the DICOM database or on disk; "
                    "import the series again")
    return files, ""


def _packages(packagesProblem: Optional[str]) -> str:
    from .dependencies import dicomPackagesProblem

    return dicomPackagesProblem() if packagesProblem is None else packagesProblem


def dicomResultsProblem(volumeNode, database, packagesProblem: Optional[str] = None) -> str:
    """Why the DICOM results cannot be written for ``volumeNode`` ("" when they can): no DICOM provenance, or
    (``packagesProblem``, default `dependencies.dicomPackagesProblem`) the packages they need are missing."""
    _files, reason = dicomSourceFiles(volumeNode, database)
    return reason or _packages(packagesProblem)


def dicomResults(volumeNode, database, deidentify: bool = False, packagesProblem: Optional[str] = None):
    """`request.DicomResults` for ``volumeNode``'s source series; ValueError (one line) if there is none."""
    from .request import DicomResults

    files, reason = dicomSourceFiles(volumeNode, database)
    reason = reason or _packages(packagesProblem)
    if reason:
        raise ValueError(f"no DICOM results: {reason}")
    return DicomResults(tuple(files), deidentify=deidentify)


def slicerDicomDatabase():
    """Slicer's DICOM database (``slicer.dicomDatabase``, set by the DICOM module), or None when there is none."""
    import slicer  # only inside Slicer

    try:
        return slicer.dicomDatabase
    except AttributeError:
        return None


class DicomOption:
    """The panel's "DICOM results" choice for the selected volume: `problem` (looked up once per node and
    series: the panel asks on every change of its state) and `results` (looked up again, when Explain is
    pressed). ``database``: a callable returning the DICOM database (``slicer.dicomDatabase``) or None."""

    def __init__(self, database: Callable[[], object], packagesProblem: Optional[str] = None) -> None:
        self.database, self.packagesProblem = database, packagesProblem
        self._checked: tuple = (None, "")

    def problem(self, volumeNode) -> str:
        key = None if volumeNode is None else (volumeNode.GetID(), volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE))
        if key is None or key != self._checked[0]:
            self._checked = (key, dicomResultsProblem(volumeNode, self.database(), self.packagesProblem))
        return self._checked[1]

    def results(self, volumeNode, deidentify: bool = False):
        return dicomResults(volumeNode, self.database(), deidentify, self.packagesProblem)
