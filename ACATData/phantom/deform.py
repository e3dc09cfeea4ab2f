"""Random rigid + elastic deformations that turn one real scan into many distinct "patients".

A deformation maps every voxel of a new output grid to a position in the source scan:

    p_source = R (s * (p_out - c)) + c + t + u(p_out)

with a rotation R (head pose: yaw/pitch/roll in degrees), an isotropic scale s, a translation t (mm), and
a smooth displacement field u (elastic: random vectors on a coarse lattice, upsampled trilinearly, of
amplitude ``elastic_mm``). HU are resampled trilinearly, masks by nearest neighbour. The output grid may
have another spacing (slice thickness) than the source. Everything runs in the source's canonical
LPS frame; callers then choose how the result is stored (orientation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ACATLogic.volume import CTVolume


@dataclass(frozen=True)
class Deformation:
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # about x (pitch), y (roll), z (yaw)
    scale: float = 1.0
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    elastic_mm: float = 0.0
    elastic_grid: int = 5
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def random_deformation(rng: np.random.Generator, *, max_rotation_deg: Sequence[float] = (8, 5, 12),
                       scale_range: Sequence[float] = (0.92, 1.08), max_translation_mm: float = 8.0,
                       elastic_mm: Sequence[float] = (0.0, 4.0)) -> Deformation:
    rot = tuple(float(rng.uniform(-m, m)) for m in max_rotation_deg)
    return Deformation(rotation_deg=rot, scale=float(rng.uniform(*scale_range)),
                       translation_mm=tuple(float(v) for v in rng.uniform(-max_translation_mm, max_translation_mm, 3)),
                       elastic_mm=float(rng.uniform(*elastic_mm)), seed=int(rng.integers(0, 2**31 - 1)))


def _rotation(deg: Sequence[float]) -> np.ndarray:
    ax, ay, az = np.radians(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def output_grid(source: CTVolume, spacing_mm: Sequence[float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An axis-aligned grid over the source's extent with another spacing: (origin, size_ijk)."""
    extent = source.spacing_mm * (np.array(source.size_ijk) - 1)
    size = tuple(int(np.floor(e / s)) + 1 for e, s in zip(extent, spacing_mm))
    return source.origin_mm.copy(), size


def deform(source: CTVolume, masks: dict, d: Deformation, *, spacing_mm: Sequence[float] | None = None,
           fill_hu: float = -1024.0) -> tuple[CTVolume, dict]:
    """Resample ``source`` (canonical, identity direction) and its masks through deformation ``d``.

    Returns the new volume (identity direction, spacing ``spacing_mm``) and the masks on its grid.
    """
    if not np.allclose(source.direction, np.eye(3), atol=1e-6):
        raise ValueError("deform() expects a canonical source (identity direction); use to_canonical first")
    spacing = np.asarray(spacing_mm if spacing_mm is not None else source.spacing_mm, dtype=np.float64)
    origin, size = output_grid(source, spacing)
    ni, nj, nk = size
    # output voxel centres in mm (x, y, z), shape (K, J, I, 3)
    zs = origin[2] + spacing[2] * np.arange(nk)
    ys = origin[1] + spacing[1] * np.arange(nj)
    xs = origin[0] + spacing[0] * np.arange(ni)
    centre = source.origin_mm + source.spacing_mm * (np.array(source.size_ijk) - 1) / 2
    pts = torch.from_numpy(np.stack(np.meshgrid(xs, ys, zs, indexing="xy"), axis=-1).transpose(2, 0, 1, 3).copy())
    rot = torch.from_numpy(_rotation(d.rotation_deg))
    moved = (pts - torch.from_numpy(centre)) * d.scale @ rot.T + torch.from_numpy(centre) + \
        torch.tensor(d.translation_mm, dtype=torch.float64)
    if d.elastic_mm > 0:
        g = torch.Generator().manual_seed(int(d.seed))
        coarse = torch.randn(1, 3, d.elastic_grid, d.elastic_grid, d.elastic_grid, generator=g, dtype=torch.float64)
        field = F.interpolate(coarse, size=(nk, nj, ni), mode="trilinear", align_corners=True)[0]
        field = field / field.abs().amax().clamp_min(1e-9) * d.elastic_mm
        moved = moved + field.permute(1, 2, 3, 0)
    # source voxel index -> grid_sample's normalised coordinates (x = i, y = j, z = k)
    src_size = np.array(source.size_ijk, dtype=np.float64)
    idx = (moved - torch.from_numpy(source.origin_mm)) / torch.from_numpy(source.spacing_mm)
    grid = (2 * idx / torch.from_numpy(np.maximum(src_size - 1, 1)) - 1).float()[None]
    hu = torch.from_numpy(source.voxels_hu)[None, None] - fill_hu  # so that zero padding means air
    out = F.grid_sample(hu, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0] + fill_hu
    new_masks = {}
    for name, mask in masks.items():
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        new_masks[name] = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros",
                                        align_corners=True)[0, 0].numpy().astype(mask.dtype)
    volume = CTVolume(out.numpy().astype(np.float32), spacing, origin, np.eye(3), dict(source.metadata))
    return volume, new_masks
