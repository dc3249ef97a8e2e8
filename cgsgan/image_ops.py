"""Image operations shared by training and metrics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """The reference's blur of D's inputs: images [N, C, H, W], separable kernel
    2^(-(x / sigma)^2) for |x| <= floor(3 sigma), normalised, zero padding (upfirdn2d.filter2d).

    The kernel is a Gaussian of standard deviation sigma / sqrt(2 ln 2) = 0.85 sigma. Identity
    when floor(3 sigma) is 0.
    """
    radius = math.floor(sigma * 3)
    if radius <= 0:
        return images
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp2(-(x / sigma).square())
    k = k / k.sum()
    C = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0)), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(out, (0, 0, radius, radius)), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
