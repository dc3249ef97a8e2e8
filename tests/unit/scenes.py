"""Random Gaussian scenes the renderer tests share (float64 by default, seeded)."""

from __future__ import annotations

import math

import torch

from cgsgan.gaussians import Gaussians

F64 = torch.float64


def scene(b, n, scale=0.05, seed=0, spread=0.6, dtype=F64) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=(torch.rand(b, n, 3, generator=g, dtype=dtype) - 0.5) * spread,
        log_scales=math.log(scale) + 0.3 * torch.randn(b, n, 3, generator=g, dtype=dtype),
        quats=torch.randn(b, n, 4, generator=g, dtype=dtype),
        opacity_logits=torch.randn(b, n, generator=g, dtype=dtype) + 1.0,
        sh0=torch.randn(b, n, 3, generator=g, dtype=dtype),
    )
