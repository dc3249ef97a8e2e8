"""3D consistency of the explicit Gaussians: how much a generator's output depends on the camera
it is conditioned on, and whether two views of one head agree on its depth.

    sensitivity        variance of each Gaussian attribute across conditioning cameras (same z),
                       relative to its variance across z: exactly 0 for the camera-free generator.
    psnr_cond          PSNR between a render conditioned on its own camera and the same render
                       conditioned on the frontal camera; capped at PSNR_CAP = 100 dB, which is
                       what identical renders (camera-free generator) give.
    depth_consistency  mean |reprojection error| of the alpha-weighted depth between two views of
                       one head, 20 degrees of yaw apart (world units; the head is ~0.5 wide).
                       Occlusion and splat size give a small floor even for a consistent head.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cgsgan import camera
from cgsgan.gaussians import Gaussians
from cgsgan.metrics.sampling import GaussianGenerator, gaussians_of, pick, render_labels

PSNR_CAP = 100.0  # dB; the value of identical renders (MSE 0), finite so JSON/MLflow take it


def _attributes(g: Gaussians) -> dict[str, torch.Tensor]:
    """Activated attributes [B, N, C] (what a render actually sees), float64."""
    return {
        "means": g.means,
        "log_scales": g.log_scales,
        "rotation": g.unit_quats,
        "opacity": g.opacities[..., None],
        "color": g.rgb,
    }


@torch.no_grad()
def conditioning_sensitivity(
    gen: GaussianGenerator, labels: torch.Tensor, num_z: int = 16, num_cams: int = 8, seed: int = 0
) -> dict[str, float]:
    """Var over conditioning cameras (same z) / var over z (same camera), per attribute and mean.

    Cameras: the frontal one plus num_cams - 1 from `labels`. Variances are taken around the
    first camera's / first z's value (the shifted formula), so bit-identical Gaussians give
    exactly 0, not rounding noise. Keys: "sensitivity" (mean over attributes) and
    "sensitivity/<attribute>".
    """
    if num_z < 2 or num_cams < 2:
        raise ValueError("conditioning_sensitivity needs num_z >= 2 and num_cams >= 2")
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num_z, gen.z_dim, generator=rng)
    cams = torch.cat([camera.frontal_label(1, dtype=labels.dtype), pick(labels, num_cams - 1, rng)])
    K = len(cams)
    within: dict[str, float] = {}
    first: dict[str, torch.Tensor] = {}
    s1: dict[str, torch.Tensor] = {}
    s2: dict[str, torch.Tensor] = {}
    for i in range(num_z):  # one head at a time: memory O(K * N), not O(Z * K * N)
        attrs = _attributes(gaussians_of(gen(z[i : i + 1].expand(K, -1), cams)))
        for name, t in attrs.items():
            x = t.detach().double().reshape(K, -1)  # [K, N * C]
            d = x - x[:1]
            within[name] = within.get(name, 0.0) + float((d.pow(2).mean(0) - d.mean(0).pow(2)).clamp(min=0).mean())
            if i == 0:
                first[name] = x.clone()
                s1[name], s2[name] = torch.zeros_like(x), torch.zeros_like(x)
            dz = x - first[name]
            s1[name] += dz
            s2[name] += dz * dz
    per: dict[str, float] = {}
    for name in within:
        w = within[name] / num_z
        across = float((s2[name] / num_z - (s1[name] / num_z).pow(2)).clamp(min=0).mean())
        per[f"sensitivity/{name}"] = w / across if across > 0 else (0.0 if w == 0 else math.inf)
    return {"sensitivity": float(np.mean(list(per.values()))), **per}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between image sets in [-1, 1] (clamped), measured on the [0, 1] scale; capped at PSNR_CAP."""
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).double().pow(2).mean())
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else 10 * math.log10(1.0 / mse)


@torch.no_grad()
def conditioning_psnr(
    gen: GaussianGenerator,
    labels: torch.Tensor,
    resolution: int,
    num: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    backend: str = "auto",
) -> float:
    """PSNR between G(z, c) and G(z, frontal), both seen from c (cameras from `labels`).

    The MSE is pooled over all images before the log, so one identical pair cannot make it inf.
    """
    rng = torch.Generator().manual_seed(seed)
    sq, count = 0.0, 0
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = torch.randn(b, gen.z_dim, generator=rng)
        cams = pick(labels, b, rng)
        own = render_labels(gaussians_of(gen(z, cams)), cams, resolution, backend).image
        frontal = camera.frontal_label(b, dtype=cams.dtype)
        front = render_labels(gaussians_of(gen(z, frontal)), cams, resolution, backend).image
        sq += float(((own.clamp(-1, 1) - front.clamp(-1, 1)) / 2).double().pow(2).sum())
        count += own.numel()
    mse = sq / count
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else 10 * math.log10(1.0 / mse)


def reprojection_error(
    depth_a: torch.Tensor,
    alpha_a: torch.Tensor,
    label_a: torch.Tensor,
    depth_b: torch.Tensor,
    alpha_b: torch.Tensor,
    label_b: torch.Tensor,
    alpha_threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel |depth error| of view A's surface seen from view B.

    depth_*/alpha_* [B, 1, H, W] (expected camera-space z and opacity), labels [B, 25].
    Pixels of A with alpha > threshold are unprojected to 3D at their expected depth, projected
    into B, and their z in B's frame is compared with B's expected depth at the pixel they land
    on (nearest pixel, so silhouette edges do not mix in background depth). A point is valid
    when it lands inside B's image, in front of B, on a pixel with B's alpha > threshold.
    Returns err [B, H * W] (0 where invalid) and valid [B, H * W] (bool).
    """
    B, _, H, W = depth_a.shape
    dtype, device = depth_a.dtype, depth_a.device
    c2w_a, intr_a = camera.split_label(label_a.to(device, dtype))
    c2w_b, _ = camera.split_label(label_b.to(device, dtype))
    k = camera.pixel_intrinsics(intr_a, W, H)  # [B, 3, 3]
    v, u = torch.meshgrid(torch.arange(H, dtype=dtype, device=device) + 0.5,
                          torch.arange(W, dtype=dtype, device=device) + 0.5, indexing="ij")  # pixel centres
    d = depth_a.reshape(B, H * W)
    x = (u.reshape(1, -1) - k[:, 0, 2:3]) / k[:, 0, 0:1] * d
    y = (v.reshape(1, -1) - k[:, 1, 2:3]) / k[:, 1, 1:2] * d
    cam_pts = torch.stack([x, y, d], dim=-1)  # [B, HW, 3] in A's camera frame
    world = cam_pts @ c2w_a[:, :3, :3].transpose(1, 2) + c2w_a[:, None, :3, 3]
    w2c_b = camera.view_matrix(c2w_b)
    z_b = (world @ w2c_b[:, :3, :3].transpose(1, 2) + w2c_b[:, None, :3, 3])[..., 2]  # [B, HW]
    uv = camera.project(world, label_b.to(device, dtype), W, H)  # [B, HW, 2], pixel units
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], dim=-1)[:, :, None]  # [B, HW, 1, 2]
    grid = torch.nan_to_num(grid, nan=2.0, posinf=2.0, neginf=-2.0)
    sampled = F.grid_sample(torch.cat([depth_b, alpha_b], 1), grid, mode="nearest", align_corners=False)[..., 0]
    depth_at, alpha_at = sampled[:, 0], sampled[:, 1]  # [B, HW]
    inside = (grid[:, :, 0].abs() < 1).all(-1) & (z_b > 1e-6)
    valid = (alpha_a.reshape(B, -1) > alpha_threshold) & inside & (alpha_at > alpha_threshold)
    err = torch.where(valid, (z_b - depth_at).abs(), torch.zeros_like(z_b))
    return err, valid


def orbit_yaw(labels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Labels [B, 25] with each camera orbited by delta [B] radians of yaw about the vertical axis
    through the look-at point (radius, pitch, roll and intrinsics kept)."""
    c2w, intr = camera.split_label(labels)
    cos, sin = torch.cos(delta).to(labels.dtype), torch.sin(delta).to(labels.dtype)
    rot = torch.zeros(len(labels), 3, 3, dtype=labels.dtype)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = cos, sin, 1.0, -sin, cos
    centre = torch.tensor(camera.LOOKAT, dtype=labels.dtype)
    m = torch.eye(4, dtype=labels.dtype).repeat(len(labels), 1, 1)
    m[:, :3, :3] = rot
    m[:, :3, 3] = centre - rot @ centre
    return camera.make_label(m @ c2w, intr)


@torch.no_grad()
def depth_consistency(
    gen: GaussianGenerator,
    labels: torch.Tensor,
    resolution: int,
    num: int = 32,
    seed: int = 0,
    batch_size: int = 16,
    yaw_offset: float = 0.35,
    alpha_threshold: float = 0.5,
    backend: str = "auto",
) -> dict[str, float]:
    """Cross-view depth consistency over `num` heads, each seen from two cameras A and B.

    A is a dataset camera, B the same camera orbited by +-yaw_offset (20 degrees) about the
    look-at point: a fixed, moderate baseline keeps occlusion (which no depth test can tell
    from inconsistency) small and the number comparable across datasets. Each view is rendered
    from G conditioned on that view's own camera (how a camera-conditioned generator is used),
    so camera-dependent geometry shows up as reprojection error. Errors are taken both ways.

    Keys: "depth_consistency" (mean |error| over valid pixels, world units),
    "depth_consistency/median" and "depth_consistency/valid_fraction" (share of foreground
    pixels that could be compared). Even a consistent head has a floor of about a splat's size:
    the expected depth of overlapping splats is not exactly the surface.
    """
    rng = torch.Generator().manual_seed(seed)
    errors: list[torch.Tensor] = []
    n_fg = 0
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = torch.randn(b, gen.z_dim, generator=rng)
        ca = pick(labels, b, rng)
        sign = torch.randint(2, (b,), generator=rng) * 2 - 1
        cb = orbit_yaw(ca, sign * yaw_offset)
        ra = render_labels(gaussians_of(gen(z, ca)), ca, resolution, backend)
        rb = render_labels(gaussians_of(gen(z, cb)), cb, resolution, backend)
        for (da, aa, la), (db, ab, lb) in (((ra.depth, ra.alpha, ca), (rb.depth, rb.alpha, cb)),
                                           ((rb.depth, rb.alpha, cb), (ra.depth, ra.alpha, ca))):
            err, valid = reprojection_error(da.float(), aa.float(), la, db.float(), ab.float(), lb, alpha_threshold)
            errors.append(err[valid].double().cpu())
            n_fg += int((aa > alpha_threshold).sum())
    e = torch.cat(errors)
    return {
        "depth_consistency": float(e.mean()) if len(e) else math.nan,
        "depth_consistency/median": float(e.median()) if len(e) else math.nan,
        "depth_consistency/valid_fraction": len(e) / n_fg if n_fg else 0.0,
    }
