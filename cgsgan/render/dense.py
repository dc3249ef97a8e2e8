"""Dense all-Gaussians x all-pixels compositor: the test oracle for the PyTorch and compiled
compositors (rasterize.composite_torch, native.composite_native).

Deliberately simple and independent of their pair enumeration: every visible Gaussian is evaluated
at every pixel, sorted by depth per camera, and composited with a plain cumulative product.
Memory is O(C * N * H * W): only for small scenes.
"""

from __future__ import annotations

import torch

from cgsgan.render.projection import TRANSMITTANCE_EPS, Projected, gaussian_alpha


def composite_dense(p: Projected, features: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rasterize.Composite: features [C, N, F] -> acc [C, H, W, F], final transmittance [C, H, W]."""
    C, N = p.depths.shape
    dtype, device = p.means2d.dtype, p.means2d.device
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                            torch.arange(width, dtype=dtype, device=device), indexing="ij")  # fmt: skip
    pix = torch.stack([xs, ys], dim=-1).reshape(1, 1, -1, 2) + 0.5  # [1, 1, HW, 2]

    visible = (p.radii > 0).any(-1)  # [C, N]
    order = torch.argsort(torch.where(visible, p.depths.detach(), torch.full_like(p.depths, float("inf"))), dim=1)

    def gather(x: torch.Tensor) -> torch.Tensor:
        idx = order.reshape(C, N, *([1] * (x.dim() - 2))).expand(C, N, *x.shape[2:])
        return torch.gather(x, 1, idx)

    alpha = gaussian_alpha(
        gather(p.conics)[:, :, None, :], gather(p.means2d)[:, :, None, :], gather(p.opacities)[:, :, None], pix
    )  # [C, N, HW]
    alpha = alpha * gather(visible.to(dtype))[:, :, None]

    one_minus = 1.0 - alpha
    t_incl = torch.cumprod(one_minus, dim=1)
    t_excl = torch.cat([torch.ones_like(t_incl[:, :1]), t_incl[:, :-1]], dim=1)
    include = (t_incl > TRANSMITTANCE_EPS).detach()
    weight = alpha * t_excl * include  # [C, N, HW]
    final_t = torch.prod(torch.where(include, one_minus, torch.ones_like(one_minus)), dim=1)  # [C, HW]
    acc = torch.einsum("cnp,cnf->cpf", weight, gather(features))  # [C, HW, F]
    return acc.reshape(C, height, width, -1), final_t.reshape(C, height, width)
