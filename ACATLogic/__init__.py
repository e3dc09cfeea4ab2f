"""ACAT (Adversarial Counterfactual Attention) for CT: the science and the I/O.

Pure Python + torch + numpy + SimpleITK + pydicom. Never imports slicer, qt, vtk or trame, and never
imports `training` (see ../shared/STYLE.md in the developers' notes and README.md).
"""

from .errors import ACATInputError
from .io import read_volume, write_dicom_series, write_volume
from .volume import CTVolume, Reorientation, to_canonical

__version__ = "0.1.0"

__all__ = ["ACATInputError", "CTVolume", "Reorientation", "read_volume", "to_canonical", "write_dicom_series",
           "write_volume", "__version__"]
