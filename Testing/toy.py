"""Small real models trained in the tests on toy problems (bright blobs on a noisy background)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShuffleAutoencoder(nn.Module):
    """An exactly invertible 'autoencoder': pixel-unshuffle by 4 (spatial latent (16, H/4, W/4))."""

    def encode(self, x):
        return F.pixel_unshuffle(x, 4)

    def decode(self, z):
        return F.pixel_shuffle(z, 4)


class TinyScanClassifier(nn.Module):
    """(B, S, 1, H, W) -> logits (B, C): per-slice CNN, mean over slices."""

    def __init__(self, num_classes: int = 2, width: int = 8):
        super().__init__()
        self.class_names = tuple(f"class{i}" for i in range(num_classes))
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(2 * width, num_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.conv2

    def forward(self, x):
        b, s = x.shape[:2]
        f = F.relu(self.conv2(F.relu(self.conv1(x.flatten(0, 1)))))
        # max and mean pooling: the max sees a small blob, the mean sees the whole slice
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
        return self.head(pooled.view(b, s, -1).mean(dim=1))

    def layer_output_to_slices(self, t, batch, slices):
        return t.view(batch, slices, *t.shape[1:])


def blob_scans(n: int, *, size: int = 32, slices: int = 3, seed: int = 0, side: str | None = None):
    """n scans (n, S, 1, size, size) in [0, 1]; label 1 = a bright disk, 0 = none (or 'left'/'right'
    halves when ``side`` is 'both': label 0 = disk in columns < size/2, 1 = disk in columns >= size/2).

    Returns (x, labels, centres) with centres (n, 2) as (row, column) of the disk (-1 when none).
    """
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.05 * torch.randn(n, slices, 1, size, size, generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    centres = torch.full((n, 2), -1, dtype=torch.long)
    rr, cc = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for k in range(n):
        if side is None and labels[k] == 0:
            continue
        r = int(torch.randint(8, size - 8, (1,), generator=g))
        if side == "both":
            lo, hi = (4, size // 2 - 6) if labels[k] == 0 else (size // 2 + 6, size - 4)
        else:
            lo, hi = 8, size - 8
        c = int(torch.randint(lo, hi, (1,), generator=g))
        disk = ((rr - r) ** 2 + (cc - c) ** 2) <= 9
        x[k, :, 0][:, disk] = 0.9
        centres[k] = torch.tensor([r, c])
    return x.clamp(0, 1), labels, centres


def train(model: nn.Module, x, labels, *, steps: int = 150, lr: float = 3e-2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
    opt.zero_grad()
    return model.eval()
