"""The Python API a user finds: ``from ACATLogic import ...``, `load_bundle` by id or path, `CTVolume` from and to
SimpleITK and numpy; the README's Python example and docs/python_api.ipynb run as they are written.

The notebook runs through nbclient when nbformat, nbclient and ipykernel are installed; otherwise its code cells
are executed in order in one fresh Python process (what a kernel would do, without Jupyter).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import ACATLogic
from ACATLogic import ACATInputError, CTVolume, load_bundle, read_volume
from ACATLogic.bundle import sha256_file
from ACATLogic.io import write_volume

ROOT = Path(__file__).resolve().parents[1]


def test_the_api_is_one_import():
    from ACATLogic import (CTVolume, Explainer, ExplainOptions, Explanation, ModelBundle,  # noqa: F401
                           available_models, load_bundle, read_volume, write_explanation)

    for name in ("read_volume", "load_bundle", "Explainer", "CTVolume", "ExplainOptions", "write_explanation",
                 "list_studies", "run_batch"):
        assert name in ACATLogic.__all__ and name in dir(ACATLogic)
    assert ExplainOptions().method == "counterfactual"


def test_load_bundle_takes_a_bundled_id_or_a_path(tmp_path):
    by_id = load_bundle("brain-stroke-phantom")
    by_path = load_bundle(ROOT / "Resources" / "Models" / "brain-stroke-phantom")
    assert by_id.path.resolve() == by_path.path.resolve() and by_id.sha256() == by_path.sha256()
    assert by_id.labels == by_path.labels
    with pytest.raises(ACATInputError, match="no model bundle 'no-such-model'.*brain-stroke-phantom"):
        load_bundle("no-such-model")
    with pytest.raises(ACATInputError, match="not a model bundle"):
        load_bundle(tmp_path)


def _oblique(cranium) -> CTVolume:
    """The head CT on an oblique, left-handed-free grid with an origin away from 0 (a demanding geometry)."""
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return CTVolume(cranium.voxels_hu[:20], cranium.spacing_mm, (-101.5, 37.25, 12.0), rotation @ cranium.direction,
                    {"modality": "CT"})


def test_from_sitk_and_to_sitk_keep_voxels_and_geometry(cranium, tmp_path):
    volume = _oblique(cranium)
    image = volume.to_sitk()
    assert image.GetSize() == volume.size_ijk and image.GetPixelID() == sitk.sitkFloat32
    back = CTVolume.from_sitk(image)
    np.testing.assert_array_equal(back.voxels_hu, volume.voxels_hu)
    np.testing.assert_allclose(back.affine_lps(), volume.affine_lps(), atol=1e-12)
    # what SimpleITK reads from a file is what read_volume reads
    write_volume(volume, tmp_path / "v.nrrd")
    from_file = CTVolume.from_sitk(sitk.ReadImage(str(tmp_path / "v.nrrd")))
    ours = read_volume(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(from_file.voxels_hu, ours.voxels_hu)
    np.testing.assert_allclose(from_file.affine_lps(), ours.affine_lps(), atol=1e-9)
    with pytest.raises(ACATInputError, match="3D image"):
        CTVolume.from_sitk(sitk.Image(4, 4, sitk.sitkFloat32))


def test_from_array_with_an_affine_or_spacing_origin_direction(cranium):
    volume = _oblique(cranium)
    # our own order and LPS
    same = CTVolume.from_array(volume.voxels_hu, volume.affine_lps())
    np.testing.assert_array_equal(same.voxels_hu, volume.voxels_hu)
    np.testing.assert_allclose(same.affine_lps(), volume.affine_lps(), atol=1e-12)
    # nibabel's order and RAS: the same voxels at the same patient positions
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine_lps()
    nib = CTVolume.from_array(volume.voxels_hu.transpose(2, 1, 0).astype(np.float64), ras, axes="ijk",
                              coordinates="RAS")
    np.testing.assert_array_equal(nib.voxels_hu, volume.voxels_hu)
    np.testing.assert_allclose(nib.affine_lps(), volume.affine_lps(), atol=1e-12)
    ijk = np.array([[5, 7, 3], [200, 11, 19]])
    np.testing.assert_allclose(nib.index_to_lps(ijk), volume.index_to_lps(ijk), atol=1e-9)
    # spacing, origin, direction
    parts = CTVolume.from_array(volume.voxels_hu, spacing=volume.spacing_mm, origin=volume.origin_mm,
                                direction=volume.direction)
    np.testing.assert_allclose(parts.affine_lps(), volume.affine_lps(), atol=1e-12)
    plain = CTVolume.from_array(np.zeros((2, 3, 4), np.int16), spacing=(0.5, 0.6, 2.0))
    assert plain.size_ijk == (4, 3, 2) and plain.voxels_hu.dtype == np.float32
    np.testing.assert_allclose(plain.index_to_lps([1, 1, 1]), [0.5, 0.6, 2.0])
    assert plain.metadata == {"source_format": "array"}


def test_from_array_refuses_what_is_not_a_ct_grid():
    with pytest.raises(ACATInputError, match="3 dimensions"):
        CTVolume.from_array(np.zeros((4, 4)), spacing=(1, 1, 1))
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(ACATInputError, match="not perpendicular"):
        CTVolume.from_array(np.zeros((2, 2, 2)), shear)
    with pytest.raises(ValueError, match="either an affine or"):
        CTVolume.from_array(np.zeros((2, 2, 2)), np.eye(4), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        CTVolume.from_array(np.zeros((2, 2, 2)))


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env=env)


def test_the_readme_python_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python\n"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    done = _run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "demo-output" / "python" / "report.json").read_text())
    assert report["model"]["id"] == "brain-stroke-phantom" and report["parameters"]["coverage"] == "sampled"
    assert done.stdout.split()[0] == report["prediction"]


def _notebook_code(path: Path) -> list[str]:
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def test_the_notebook_runs(tmp_path):
    path = ROOT / "docs" / "python_api.ipynb"
    cells = _notebook_code(path)
    assert len(cells) >= 5
    try:
        import nbclient
        import nbformat
        import ipykernel  # noqa: F401
    except ImportError:
        # no Jupyter here: every code cell in order, in one fresh process, as a kernel would run them
        program = "\n".join(f"# --- cell {n}\n{cell}\n" for n, cell in enumerate(cells))
        done = _run_python(program, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        notebook = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(notebook, timeout=900, resources={"metadata": {"path": str(tmp_path)}}).execute()
    files = {p.name for p in (tmp_path / "notebook-output" / "explanation").iterdir()}
    assert {"report.json", "saliency.nrrd", "overview.png"} <= files
    # the notebook is committed without outputs: what it prints comes from a run, not from the file
    assert all(not c.get("outputs") for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
