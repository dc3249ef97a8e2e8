"""Image operations shared by training and metrics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """The reference's blur of D's inputs: images [N, C, H, W], separable kernel
    2^(-(x / sigma)^2) for |x| <= floor(3 sigma), normalised, zero padding (upfirdn2d.filter2d).

    The kernel is a Gaussian of standard deviation sigma / sqrt(2 ln 2) = 0.85 sigma. Identity
    when floor(3 sigma) is 0. On CPU it is two matrix products with banded matrices (the same
    sums; depthwise convolutions and their padding copies cost several times more there); on GPUs
    two depthwise convolutions (the matrices would cost O(size) per pixel at 512).
    """
    radius = math.floor(sigma * 3)
    if radius <= 0:
        return images
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp2(-(x / sigma).square())
    k = k / k.sum()
    return (_blur_banded if images.device.type == "cpu" else _blur_depthwise)(images, k)


def _blur_depthwise(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable blur by the kernel k [2r + 1]: two depthwise convolutions with zero padding."""
    C, r = images.shape[1], (len(k) - 1) // 2
    out = F.conv2d(images, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), padding=(0, r), groups=C)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), padding=(r, 0), groups=C)


def _blur_banded(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The same blur as band(H) @ images @ band(W)^T, band(n)[i, j] = k[j - i + r] (0 off the band:
    zero padding)."""
    r = (len(k) - 1) // 2

    def band(n: int) -> torch.Tensor:
        i = torch.arange(n, device=k.device)
        d = i[None, :] - i[:, None] + r  # [n, n]: tap index of input j for output i
        return torch.where((d >= 0) & (d <= 2 * r), k[d.clamp(0, 2 * r)], torch.zeros((), dtype=k.dtype, device=k.device))

    return band(images.shape[-2]) @ images @ band(images.shape[-1]).t()
