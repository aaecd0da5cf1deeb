"""Random affine views of uint8 images, shared by the student and its teachers."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def augment_images(images: np.ndarray, generator: torch.Generator, *, hflip: bool = True,
                   chunk: int = 256) -> np.ndarray:
    """A random affine view of every image (zoom 0.8–1, shift ±10 %, rotation ±10°, optional mirror), uint8.

    Done at the images' own resolution, before any model's resizing and normalisation, so that teachers and
    student, whatever their input configs, see the same view.
    """
    out = np.empty_like(images)
    for s in range(0, len(images), chunk):
        x = torch.from_numpy(images[s:s + chunk]).permute(0, 3, 1, 2).float()
        n = x.shape[0]
        scale = torch.empty(n).uniform_(0.8, 1.0, generator=generator)
        angle = torch.empty(n).uniform_(-math.pi / 18, math.pi / 18, generator=generator)
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.2  # ±10 % of the side (grid spans 2)
        flip = (torch.rand(n, generator=generator) < 0.5) & bool(hflip)
        sx = torch.where(flip, -scale, scale)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([sx * cos, -scale * sin, shift[:, 0]], 1),
                             torch.stack([sx * sin, scale * cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        out[s:s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
