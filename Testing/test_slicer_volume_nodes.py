"""MRML volume node <-> CTVolume and the NRRD exchange, in a real (headless) MRML scene."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")

import slicer  # noqa: E402
from slicer_scene import slicer_scene_fixture  # noqa: E402

from ACATSlicerLib import nrrd_exchange, volume_nodes  # noqa: E402
from ACATLogic.io.itk_files import read_itk_file  # noqa: E402
from ACATLogic.volume import CTVolume, to_canonical  # noqa: E402

slicer_scene = pytest.fixture(slicer_scene_fixture)

# An oblique, non-axis-aligned LPS geometry with unequal spacing: every sign and axis matters.
ANGLE = np.deg2rad(20)
ROTATION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, 1]])
SPACING = np.array([0.8, 0.9, 2.5])
ORIGIN_LPS = np.array([-101.5, 37.25, -480.0])


def _asymmetric_volume() -> CTVolume:
    """(K=6, J=7, I=8): -1000 HU, one bright voxel near the first column (i = 1)."""
    voxels = np.full((6, 7, 8), -1000.0, dtype=np.float32)
    voxels[3, 2, 1] = 500.0
    return CTVolume(voxels, SPACING, ORIGIN_LPS, ROTATION)


def test_ijk_to_ras_is_lps_with_x_and_y_negated():
    m = volume_nodes.ijkToRasFromGeometry(SPACING, ORIGIN_LPS, ROTATION)
    # voxel (i, j, k) = (1, 2, 3): LPS = origin + R @ (spacing * ijk), RAS = (-x, -y, z)
    lps = ORIGIN_LPS + ROTATION @ (SPACING * [1, 2, 3])
    np.testing.assert_allclose(m @ [1, 2, 3, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-12)
    spacing, origin, direction = volume_nodes.geometryFromIjkToRas(m)
    np.testing.assert_allclose(spacing, SPACING, atol=1e-12)
    np.testing.assert_allclose(origin, ORIGIN_LPS, atol=1e-12)
    np.testing.assert_allclose(direction, ROTATION, atol=1e-12)


def test_round_trip_keeps_voxels_and_patient_geometry(slicer_scene):
    volume = _asymmetric_volume()
    node = volume_nodes.addVolumeNodeFromCTVolume(slicer_scene.scene, volume, "oblique")
    # Slicer itself must put the bright voxel where the LPS geometry says (RAS = LPS with x, y negated)
    bright_lps = volume.index_to_lps([1, 2, 3])
    matrix = volume_nodes.ijkToRasArray(node)
    np.testing.assert_allclose((matrix @ [1, 2, 3, 1])[:3], [-bright_lps[0], -bright_lps[1], bright_lps[2]], atol=1e-9)
    back = volume_nodes.ctVolumeFromNode(node)
    np.testing.assert_array_equal(back.voxels_hu, volume.voxels_hu)
    np.testing.assert_allclose(back.spacing_mm, SPACING, atol=1e-12)
    np.testing.assert_allclose(back.origin_mm, ORIGIN_LPS, atol=1e-12)
    np.testing.assert_allclose(back.direction, ROTATION, atol=1e-12)
    assert back.metadata == {"modality": "CT"}


def test_patient_left_stays_left_for_a_flipped_node(slicer_scene):
    """A node whose columns run towards the patient's RIGHT (RAS identity: i -> +x RAS = right)."""
    voxels = np.zeros((4, 5, 6), dtype=np.float32)
    voxels[:, :, 5] = 100.0  # the last column: the patient's right-most column in this node
    node = volume_nodes.addVolumeNode(slicer_scene.scene, voxels, "ras-identity", ijkToRas=np.eye(4))
    volume = volume_nodes.ctVolumeFromNode(node)
    assert volume.orientation_code() == "RAS"  # i -> Right, j -> Anterior, k -> Superior (LPS letters)
    canonical, _ = to_canonical(volume)
    # canonical i runs towards the patient's left: the bright (right-most) column must now be first
    assert canonical.voxels_hu[:, :, 0].min() == 100.0 and canonical.voxels_hu[:, :, 1:].max() == 0.0
    # and its LPS x is the smallest (most rightward) of the volume
    assert volume.index_to_lps([5, 0, 0])[0] < volume.index_to_lps([0, 0, 0])[0]


@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8", "float64"])
def test_nrrd_exchange_is_exact_raw_and_checks_the_grid(slicer_scene, tmp_path, dtype):
    """The child's input is the node's own voxels, raw (no compression, no conversion), in LPS geometry to
    17 digits; what comes back is checked to lie on the input's grid."""
    from ACATSlicerLib.loading import Grid, readResultVoxels

    volume = _asymmetric_volume()
    volume = volume.with_voxels(np.clip(volume.voxels_hu, 0, 200))
    node = volume_nodes.addVolumeNode(slicer_scene.scene, volume.voxels_hu.astype(dtype), "oblique",
                                      ijkToRas=volume_nodes.ijkToRasFromGeometry(volume.spacing_mm, volume.origin_mm,
                                                                                 volume.direction))
    view = volume_nodes.arrayView(node)
    assert view.dtype == np.dtype(dtype) and np.shares_memory(view, slicer.util.arrayFromVolume(node))
    path = nrrd_exchange.writeInputNrrd(view, volume_nodes.ijkToRasArray(node), tmp_path / "input.nrrd")
    header = path.read_bytes().split(b"\n\n", 1)[0].decode()
    assert "encoding: raw" in header and path.stat().st_size == len(header) + 2 + view.nbytes
    on_disk = read_itk_file(path)
    np.testing.assert_array_equal(on_disk.voxels_hu, volume.voxels_hu.astype(np.float32))
    np.testing.assert_allclose(on_disk.origin_mm, ORIGIN_LPS, atol=1e-9)
    np.testing.assert_allclose(on_disk.direction, ROTATION, atol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nrrd"]  # written atomically, nothing left over
    np.testing.assert_array_equal(readResultVoxels(path, Grid.fromNode(node)), volume.voxels_hu.astype(np.float32))
    shifted = volume_nodes.ijkToRasArray(node)
    shifted[0, 3] += 5.0  # the same voxels 5 mm away
    other = volume_nodes.addVolumeNode(slicer_scene.scene, volume.voxels_hu, "shifted", ijkToRas=shifted)
    with pytest.raises(ValueError, match="not on the grid"):
        readResultVoxels(path, Grid.fromNode(other))


@pytest.mark.parametrize("kind, message", [("labelmap", "labelmap"), ("2d", "2D image"), ("none", "select an input")])
def test_non_ct_nodes_are_refused_with_a_message(slicer_scene, kind, message):
    scene = slicer_scene.scene
    if kind == "labelmap":
        node = volume_nodes.addVolumeNode(scene, np.zeros((3, 4, 5), np.uint8), "seg", ijkToRas=np.eye(4),
                                          nodeClass="vtkMRMLLabelMapVolumeNode")
    elif kind == "2d":
        node = volume_nodes.addVolumeNode(scene, np.zeros((1, 4, 5), np.float32), "xray", ijkToRas=np.eye(4))
    else:
        node = None
    with pytest.raises(ValueError, match=message):
        volume_nodes.ctVolumeFromNode(node)


def _oblique_grid(shape, dtype=np.int16):
    from ACATSlicerLib.loading import Grid

    ijk = volume_nodes.ijkToRasFromGeometry(SPACING, ORIGIN_LPS, ROTATION)
    return Grid(tuple(shape[::-1]), ijk, np.dtype(dtype))


@pytest.mark.parametrize("compress", [True, False])
def test_result_maps_are_read_slab_by_slab_exactly_as_acatlogic_reads_them(tmp_path, monkeypatch, compress):
    """The child's gzip NRRD (ACATLogic's writer) and a raw one: the slabs are the file's voxels, in order, over
    several slabs and a short last one; the display copies are those of the whole-volume read, which is never
    made (the float map is not held whole)."""
    from ACATLogic.io.itk_files import write_itk_file
    from ACATSlicerLib import loading

    rng = np.random.default_rng(3)
    shape = (3 * loading.SLAB + 1, 9, 11)
    saliency = rng.random(shape, dtype=np.float32)
    saliency[:4] = 0.0
    grid = _oblique_grid(shape)
    path = write_itk_file(CTVolume(saliency, SPACING, ORIGIN_LPS, ROTATION), tmp_path / "saliency.nrrd",
                          compress=compress)
    assert (b"encoding: gzip" if compress else b"encoding: raw") in path.read_bytes()[:1000]
    expected = read_itk_file(path).voxels_hu
    monkeypatch.setattr(loading, "readResultVoxels", lambda *a: pytest.fail("the whole map was read"))
    slabs = list(loading.resultSlabs(path, grid))
    assert [k for k, _ in slabs] == [0, loading.SLAB, 2 * loading.SLAB, 3 * loading.SLAB]
    assert [s.shape[0] for _, s in slabs] == [loading.SLAB] * 3 + [1]
    np.testing.assert_array_equal(np.concatenate([s for _, s in slabs]), expected)
    shown = loading.readMap(tmp_path, loading.SALIENCY, "", grid)
    np.testing.assert_array_equal(shown.voxels, loading.quantise(saliency))
    np.testing.assert_array_equal(shown.histogram, np.bincount(loading.quantise(saliency).ravel(), minlength=256))
    # an attention mask: the same values on linear levels
    write_itk_file(CTVolume(saliency, SPACING, ORIGIN_LPS, ROTATION), tmp_path / "attention_fused.nrrd",
                   compress=compress)
    attention = loading.readMap(tmp_path, loading.ATTENTION, "fused", grid)
    np.testing.assert_array_equal(attention.voxels, loading.quantise(saliency, logarithmic=False))
    assert not np.array_equal(attention.voxels, shown.voxels)
    hu = (saliency * 2000 - 1000).astype(np.float32)
    write_itk_file(CTVolume(hu, SPACING, ORIGIN_LPS, ROTATION), tmp_path / "counterfactual_none.nrrd",
                   compress=compress)
    counterfactual = loading.readMap(tmp_path, loading.COUNTERFACTUAL, "none", grid)
    assert counterfactual.voxels.dtype == np.int16
    np.testing.assert_array_equal(counterfactual.voxels, loading.toInputType(hu, np.int16))
    inputVoxels = np.full(shape, 40, np.int16)
    difference = loading.readMap(tmp_path, loading.DIFFERENCE, "none", grid, inputVoxels)
    np.testing.assert_allclose(difference.voxels, hu - 40, atol=1e-4)
    assert difference.extent == pytest.approx(np.abs(hu - 40).max(), abs=1e-3)


def test_a_map_of_zeros_compressed_a_hundredfold_is_decoded_in_bounded_steps(tmp_path):
    """All of its gzip stream fits one read of the file; each slab still gets exactly its own bytes."""
    from ACATLogic.io.itk_files import write_itk_file
    from ACATSlicerLib import loading

    shape = (3 * loading.SLAB + 1, 160, 170)
    voxels = np.zeros(shape, np.float32)
    voxels[-1, -1, -1] = voxels[loading.SLAB, 3, 5] = 1.0
    path = write_itk_file(CTVolume(voxels, SPACING, ORIGIN_LPS, ROTATION), tmp_path / "saliency.nrrd")
    assert path.stat().st_size < voxels.nbytes / 50
    slabs = list(loading.resultSlabs(path, _oblique_grid(shape)))
    assert max(s.nbytes for _, s in slabs) == loading.SLAB * 160 * 170 * 4
    np.testing.assert_array_equal(np.concatenate([s for _, s in slabs]), voxels)


def test_a_result_map_in_ras_space_reads_the_same_and_an_unusual_one_whole(tmp_path):
    """The header's space is honoured (RAS directions are LPS ones with x and y negated); a header the slab
    reader does not take (detached data) goes through ACATLogic's reader, with the same result."""
    from ACATSlicerLib import loading

    shape = (6, 5, 4)
    voxels = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 200
    grid = _oblique_grid(shape)
    lps = np.column_stack([ROTATION[:, n] * SPACING[n] for n in range(3)])
    ras, origin = np.diag([-1.0, -1, 1]) @ lps, np.diag([-1.0, -1, 1]) @ ORIGIN_LPS
    vector = lambda v: "(" + ",".join(repr(float(x)) for x in v) + ")"  # noqa: E731
    header = (f"NRRD0004\ntype: float\ndimension: 3\nspace: right-anterior-superior\nsizes: 4 5 6\n"
              f"space directions: {' '.join(vector(ras[:, n]) for n in range(3))}\nendian: little\nencoding: raw\n"
              f"space origin: {vector(origin)}\n\n")
    (tmp_path / "saliency.nrrd").write_bytes(header.encode() + voxels.tobytes())
    shown = loading.readMap(tmp_path, loading.SALIENCY, "", grid)
    np.testing.assert_array_equal(shown.voxels, loading.quantise(voxels))
    detached = header.replace("encoding: raw\n", "encoding: raw\ndata file: saliency.raw\n")
    (tmp_path / "saliency.raw").write_bytes(voxels.tobytes())
    (tmp_path / "saliency.nrrd").write_bytes(detached.encode())
    assert loading._plainNrrdLayout(tmp_path / "saliency.nrrd", shape) is None
    shown = loading.readMap(tmp_path, loading.SALIENCY, "", grid)
    np.testing.assert_array_equal(shown.voxels, loading.quantise(voxels))


def test_a_truncated_or_misplaced_result_map_is_refused_in_one_line(tmp_path):
    from ACATLogic.io.itk_files import write_itk_file
    from ACATSlicerLib import loading

    shape = (40, 8, 8)
    grid = _oblique_grid(shape)
    path = write_itk_file(CTVolume(np.ones(shape, np.float32), SPACING, ORIGIN_LPS, ROTATION),
                          tmp_path / "saliency.nrrd")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 40])  # the end of the gzip stream is missing
    with pytest.raises(ValueError, match="saliency.nrrd is truncated"):
        loading.readMap(tmp_path, loading.SALIENCY, "", grid)
    shifted = grid.ijkToRas.copy()
    shifted[0, 3] += 5.0  # the same voxels 5 mm away
    elsewhere = loading.Grid(grid.dims, shifted, grid.dtype)
    with pytest.raises(ValueError, match="not on the grid"):
        loading.readMap(tmp_path, loading.SALIENCY, "", elsewhere)
