"""EWA projection of 3D Gaussians to screen space, with gsplat's semantics.

Shared by the tiled CPU rasterizer and the dense oracle. Mirrors gsplat's fused projection:
near/far culling, the Jacobian with its field-of-view clamp, the 0.3 px screen-space low-pass
(eps2d), opacity-aware bounding boxes (extend = min(3.33, sqrt(2 ln(255 * opacity)))), and
culling of Gaussians whose box misses the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cgsgan.gaussians import covariance

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_EPS = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.01
FAR_PLANE = 1e10


@dataclass
class Projected:
    """Screen-space Gaussians, one set per camera. C cameras, N Gaussians.

    means2d  [C, N, 2]  pixel coordinates (pixel centres at half-integers)
    conics   [C, N, 3]  inverse 2D covariance (a, b, c): sigma = 0.5 (a dx^2 + c dy^2) + b dx dy
    depths   [C, N]     camera-space z
    opacities[C, N]
    colors   [C, N, D]
    radii    [C, N, 2]  integer box half-sizes in x and y (0: culled); not differentiable
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    radii: torch.Tensor


def project(
    means: torch.Tensor,
    log_scales: torch.Tensor,
    quats: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
) -> Projected:
    """Project Gaussians [C, N, ...] with per-camera view matrices [C, 4, 4] and pixel Ks [C, 3, 3]."""
    rot = viewmats[:, None, :3, :3]  # [C, 1, 3, 3]
    trans = viewmats[:, None, :3, 3]  # [C, 1, 3]
    mean_c = (rot @ means[..., None])[..., 0] + trans  # [C, N, 3]
    cov_c = rot @ covariance(log_scales, quats) @ rot.transpose(-1, -2)  # [C, N, 3, 3]

    fx, fy = Ks[:, None, 0, 0], Ks[:, None, 1, 1]  # [C, 1]
    cx, cy = Ks[:, None, 0, 2], Ks[:, None, 1, 2]
    x, y, z = mean_c.unbind(-1)
    # Guard the division for Gaussians that will be culled anyway (behind the camera).
    z_safe = torch.where(z > NEAR_PLANE, z, torch.ones_like(z))
    rz = 1.0 / z_safe
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z_safe * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z_safe * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [
            torch.stack([fx * rz, zeros, -fx * tx * rz * rz], dim=-1),
            torch.stack([zeros, fy * rz, -fy * ty * rz * rz], dim=-1),
        ],
        dim=-2,
    )  # [C, N, 2, 3]
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)  # [C, N, 2, 2]
    a = cov2d[..., 0, 0] + EPS2D
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + EPS2D
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    with torch.no_grad():
        op = opacities.detach()
        extend = torch.sqrt(2.0 * torch.log((op / ALPHA_THRESHOLD).clamp(min=1.0))).clamp(max=3.33)
        rx = torch.ceil(extend * a.detach().clamp(min=0).sqrt())
        ry = torch.ceil(extend * c.detach().clamp(min=0).sqrt())
        m = means2d.detach()
        visible = (
            (z > NEAR_PLANE)
            & (z < FAR_PLANE)
            & (det > 0)
            & (op >= ALPHA_THRESHOLD)
            & ((rx > 0) | (ry > 0))
            & (m[..., 0] + rx > 0)
            & (m[..., 0] - rx < width)
            & (m[..., 1] + ry > 0)
            & (m[..., 1] - ry < height)
        )
        radii = torch.stack([rx, ry], dim=-1) * visible[..., None]
        radii = radii.to(torch.int64)

    return Projected(means2d=means2d, conics=conics, depths=z, opacities=opacities, colors=colors, radii=radii)


def gaussian_alpha(conics: torch.Tensor, means2d: torch.Tensor, opacities: torch.Tensor, pix: torch.Tensor):
    """alpha of Gaussians at pixels with gsplat's cut-offs; shapes broadcast.

    conics [..., 3], means2d [..., 2], opacities [...], pix [..., 2] -> alpha [...]
    Returns 0 where gsplat skips the pair (sigma < 0 or alpha < 1/255).
    """
    d = means2d - pix
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (conics[..., 0] * dx * dx + conics[..., 2] * dy * dy) + conics[..., 1] * dx * dy
    alpha = (opacities * torch.exp(-sigma)).clamp(max=MAX_ALPHA)
    keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    return torch.where(keep, alpha, torch.zeros_like(alpha))
