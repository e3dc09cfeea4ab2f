"""CTVolume geometry and canonical reorientation: "patient left" is geometry, not an array index."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ACATLogic import ACATInputError, CTVolume, to_canonical
from ACATLogic.volume import canonical_reorientation, lps_to_ras, orientation_code


def _random_volume(rng, direction, shape=(5, 6, 7)):
    return CTVolume(rng.normal(0, 300, shape).astype(np.float32), (0.8, 0.9, 2.5), (-10.0, 20.0, 30.0), direction)


def _permuted_flipped(volume: CTVolume, perm, flips) -> CTVolume:
    """The same anatomy stored with index axes permuted and flipped (what another scanner might write)."""
    arr = volume.voxels_hu
    size = np.array(volume.size_ijk)
    # new index axis a reads old index axis perm[a], reversed when flips[a]
    start = np.zeros(3)
    for a in range(3):
        if flips[a]:
            start[perm[a]] = size[perm[a]] - 1
    origin = volume.index_to_lps(start)
    direction = np.stack([volume.direction[:, perm[a]] * (-1 if flips[a] else 1) for a in range(3)], axis=1)
    spacing = [volume.spacing_mm[perm[a]] for a in range(3)]
    flip_np = [2 - perm[a] for a in range(3) if flips[a]]
    out = np.flip(arr, axis=flip_np) if flip_np else arr
    out = out.transpose([2 - perm[2], 2 - perm[1], 2 - perm[0]])
    return CTVolume(np.ascontiguousarray(out), spacing, origin, direction)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", list(itertools.product([False, True], repeat=3)))
def test_every_axis_order_gives_the_same_canonical_anatomy(perm, flips):
    rng = np.random.default_rng(1)
    reference = _random_volume(rng, np.eye(3))
    stored = _permuted_flipped(reference, perm, flips)
    # sanity: the stored copy is the same anatomy - voxel at a given LPS point is unchanged
    p = reference.index_to_lps([[1, 2, 3]])
    ijk = np.rint(stored.lps_to_index(p)).astype(int)[0]
    assert stored.voxels_hu[ijk[2], ijk[1], ijk[0]] == reference.voxels_hu[3, 2, 1]

    canonical, r = to_canonical(stored)
    np.testing.assert_array_equal(canonical.voxels_hu, reference.voxels_hu)
    np.testing.assert_allclose(canonical.origin_mm, reference.origin_mm, atol=1e-12)
    np.testing.assert_allclose(canonical.spacing_mm, reference.spacing_mm)
    np.testing.assert_allclose(canonical.direction, np.eye(3), atol=1e-12)
    assert canonical.orientation_code() == "LPS"
    # undo maps a canonical-grid result back onto the stored grid, voxel for voxel
    np.testing.assert_array_equal(r.undo(canonical.voxels_hu), stored.voxels_hu)
    np.testing.assert_array_equal(r.apply(stored.voxels_hu), canonical.voxels_hu)


def test_apply_and_undo_handle_leading_channel_axes():
    rng = np.random.default_rng(2)
    stored = _permuted_flipped(_random_volume(rng, np.eye(3)), (2, 0, 1), (True, False, True))
    _, r = to_canonical(stored)
    stack = np.stack([stored.voxels_hu, -stored.voxels_hu])  # (C, K, J, I)
    canon = r.apply(stack)
    assert canon.shape[0] == 2
    np.testing.assert_array_equal(canon[1], -r.apply(stored.voxels_hu))
    np.testing.assert_array_equal(r.undo(canon), stack)


def test_patient_left_half_is_anatomical_not_an_index():
    """A bright block in the patient's left half stays in the left half, whatever the storage order."""
    voxels = np.zeros((4, 6, 8), np.float32)
    voxels[:, :, 4:] = 100.0  # canonical i runs towards patient left: columns 4..7 are the left half
    reference = CTVolume(voxels, (1, 1, 1), (-3.5, -2.5, 0), np.eye(3))
    mirrored_storage = _permuted_flipped(reference, (0, 1, 2), (True, False, False))  # i now runs towards right
    assert mirrored_storage.orientation_code() == "RPS"
    assert mirrored_storage.voxels_hu[0, 0, 0] == 100.0  # left block now at low column indices
    canonical, _ = to_canonical(mirrored_storage)
    assert canonical.voxels_hu[..., 4:].min() == 100.0 and canonical.voxels_hu[..., :4].max() == 0.0
    # and the LPS x of every bright voxel is positive (patient left) in both storages
    for vol in (reference, mirrored_storage):
        k, j, i = np.nonzero(vol.voxels_hu)
        xs = vol.index_to_lps(np.stack([i, j, k], axis=1))[:, 0]
        assert xs.min() > 0


def test_oblique_direction_keeps_residual_rotation():
    th = np.radians(12)
    rot = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    stored_direction = rot @ np.diag([-1.0, 1.0, -1.0])
    vol = CTVolume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), (1, 1, 2), (0, 0, 0), stored_direction)
    r = canonical_reorientation(vol.direction)
    assert r.source_axis == (0, 1, 2) and r.flip == (True, False, True)
    canonical, _ = to_canonical(vol)
    np.testing.assert_allclose(canonical.direction, rot, atol=1e-12)
    corners = np.array(list(itertools.product([0, 4], [0, 3], [0, 2])))
    # the canonical grid covers the same physical box: the same 8 corners, in another order
    np.testing.assert_allclose(sorted(map(tuple, canonical.index_to_lps(corners))),
                               sorted(map(tuple, vol.index_to_lps(corners))), atol=1e-9)


def test_index_lps_round_trip_and_affine():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    vol = CTVolume(np.zeros((3, 4, 5), np.float32), (0.5, 0.7, 3.0), (1.0, -2.0, 3.0), q)
    ijk = rng.uniform(0, 4, size=(10, 3))
    np.testing.assert_allclose(vol.lps_to_index(vol.index_to_lps(ijk)), ijk, atol=1e-12)
    homog = np.c_[ijk, np.ones(10)] @ vol.affine_lps().T
    np.testing.assert_allclose(homog[:, :3], vol.index_to_lps(ijk))


def test_lps_to_ras_negates_x_and_y():
    np.testing.assert_array_equal(lps_to_ras(np.array([[1.0, 2.0, 3.0]])), [[-1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(lps_to_ras(np.eye(3)), np.diag([-1.0, -1.0, 1.0]))
    assert orientation_code(np.diag([-1.0, -1.0, 1.0])) == "RAS"


@pytest.mark.parametrize("kwargs, message", [
    (dict(spacing_mm=(1, 0, 1)), "spacing must be positive"),
    (dict(direction=[[1, 0, 0], [0.5, 1, 0], [0, 0, 1]]), "not perpendicular"),
    (dict(origin_mm=(0, np.nan, 0)), "NaN"),
])
def test_invalid_geometry_is_refused(kwargs, message):
    base = dict(voxels_hu=np.zeros((2, 2, 2), np.float32), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0),
                direction=np.eye(3))
    base.update(kwargs)
    with pytest.raises(ACATInputError, match=message):
        CTVolume(**base)


def test_metadata_refuses_phi_keys():
    with pytest.raises(ValueError, match="PHI"):
        CTVolume(np.zeros((2, 2, 2)), (1, 1, 1), (0, 0, 0), np.eye(3), {"patient_name": "X"})
    vol = CTVolume(np.zeros((2, 2, 2), np.int16), (1, 1, 1), (0, 0, 0), np.eye(3))
    assert vol.voxels_hu.dtype == np.float32
