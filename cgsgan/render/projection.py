"""EWA projection of 3D Gaussians to screen space, with gsplat's semantics.

Shared by the PyTorch rasterizer (rasterize.py) and the dense oracle (dense.py); native.py
compiles the same projection. Mirrors gsplat's fused projection:
near/far culling, the Jacobian with its field-of-view clamp, the 0.3 px screen-space low-pass
(eps2d), opacity-aware bounding boxes (extend = min(3.33, sqrt(2 ln(255 * opacity)))), and
culling of Gaussians whose box misses the image.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from cgsgan.gaussians import Gaussians, covariance

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_EPS = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.01
FAR_PLANE = 1e10


@dataclass
class Projected:
    """Screen-space Gaussians, one set per camera. C cameras (head-major: head b's V cameras
    are rows b * V ... b * V + V - 1), N Gaussians.

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

    def cameras(self, which: slice) -> "Projected":
        """The same Gaussians seen by the cameras `which` only (views, no copies)."""
        return Projected(*(getattr(self, f.name)[which] for f in fields(self)))


def project(g: Gaussians, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int) -> Projected:
    """Project B heads' Gaussians g [B, N, ...] into each head's V cameras (view matrices
    [B, V, 4, 4], pixel Ks [B, V, 3, 3]) -> Projected over C = B * V cameras, head-major.

    The 3D covariance is built once per head, and the 2D covariance of every (camera, Gaussian)
    is written out per component (T Sigma T^T with T = J W the 2x3 Jacobian of the projection):
    batches of 3x3 matrix products cost far more on CPU than a few elementwise passes.
    """
    means, opacities, colors = g.means, g.opacities, g.rgb
    B, N = means.shape[:2]
    V = viewmats.shape[1]
    sigma = covariance(g.log_scales, g.quats)[:, None]  # [B, 1, N, 3, 3]
    rot = viewmats[:, :, None, :3, :3]  # [B, V, 1, 3, 3]
    trans = viewmats[:, :, None, :3, 3]  # [B, V, 1, 3]
    mean_c = torch.einsum("bnk,bvjk->bvnj", means, viewmats[:, :, :3, :3]) + trans  # [B, V, N, 3]

    fx, fy = Ks[:, :, None, 0, 0], Ks[:, :, None, 1, 1]  # [B, V, 1]
    cx, cy = Ks[:, :, None, 0, 2], Ks[:, :, None, 1, 2]
    x, y, z = mean_c.unbind(-1)
    # Guard the division for Gaussians that will be culled anyway (behind the camera).
    z_safe = torch.where(z > NEAR_PLANE, z, torch.ones_like(z))
    rz = 1.0 / z_safe
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))  # clamped x / z
    ty = torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    # Rows of T = J W: J = [[fx / z, 0, -fx tx / z], [0, fy / z, -fy ty / z]] (tx, ty already divided by z).
    t0 = (fx * rz)[..., None] * (rot[..., 0, :] - tx[..., None] * rot[..., 2, :])  # [B, V, N, 3]
    t1 = (fy * rz)[..., None] * (rot[..., 1, :] - ty[..., None] * rot[..., 2, :])
    # T Sigma T^T from the six distinct entries of the symmetric Sigma, component by component.
    sxx, sxy, sxz = sigma[..., 0, 0], sigma[..., 0, 1], sigma[..., 0, 2]  # [B, 1, N]
    syy, syz, szz = sigma[..., 1, 1], sigma[..., 1, 2], sigma[..., 2, 2]

    def quad(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # u^T Sigma v for u, v [B, V, N, 3]
        (ux, uy, uz), (vx, vy, vz) = u.unbind(-1), v.unbind(-1)
        return (sxx * ux * vx + syy * uy * vy + szz * uz * vz + sxy * (ux * vy + uy * vx) + sxz * (ux * vz + uz * vx)
                + syz * (uy * vz + uz * vy))

    a = quad(t0, t0) + EPS2D
    b = quad(t0, t1)
    c = quad(t1, t1) + EPS2D
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    opacities = opacities[:, None].expand(B, V, N)
    colors = colors[:, None].expand(B, V, *colors.shape[1:])

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
        radii = (torch.stack([rx, ry], dim=-1) * visible[..., None]).to(torch.int64)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(B * V, *t.shape[2:])

    return Projected(means2d=flat(means2d), conics=flat(conics), depths=flat(z), opacities=flat(opacities),
                     colors=flat(colors), radii=flat(radii))


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
