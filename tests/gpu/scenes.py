"""Scenes for comparing Gaussian renderers: random clouds and head-shaped surfaces, multi-view."""

from __future__ import annotations

import math

import torch

from cgsgan import camera
from cgsgan.data.synthetic import sample_head
from cgsgan.gaussians import Gaussians, rgb_to_sh0

F64 = torch.float64


def random_scene(heads: int, n: int, scale: float, seed: int) -> Gaussians:
    """n Gaussians per head in a head-sized shell around the look-at point, random shapes and colours."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(heads, n, 3, generator=g, dtype=F64), dim=-1)
    r = 0.6 + 0.4 * torch.rand(heads, n, 1, generator=g, dtype=F64)
    means = d * torch.tensor([0.17, 0.22, 0.19], dtype=F64) * r + torch.tensor(camera.LOOKAT, dtype=F64)
    return Gaussians(
        means=means,
        log_scales=math.log(scale) + 0.4 * torch.randn(heads, n, 3, generator=g, dtype=F64),
        quats=torch.randn(heads, n, 4, generator=g, dtype=F64),
        opacity_logits=torch.randn(heads, n, generator=g, dtype=F64) + 0.5,
        sh0=torch.randn(heads, n, 3, generator=g, dtype=F64),
    )


def head_scene(identities: list[int], n: int, scale: float, seed: int = 0) -> Gaussians:
    """Opaque, flattened Gaussians on the surfaces of the synthetic heads (`cgsgan.data.synthetic`),
    coloured by part: n per head, spread over the parts by their surface area."""
    out = []
    for ident in identities:
        heads, _ = sample_head(seed, ident)
        g = torch.Generator().manual_seed(1000 * seed + ident)
        active = heads.active.nonzero()[:, 0]
        r = heads.radii[active].double()
        area = (r[:, 0] * r[:, 1] + r[:, 1] * r[:, 2] + r[:, 0] * r[:, 2])  # ~ surface area / (4 pi / 3)
        part = active[torch.multinomial(area / area.sum(), 4 * n, replacement=True, generator=g)]
        u = torch.nn.functional.normalize(torch.randn(4 * n, 3, generator=g, dtype=F64), dim=-1)
        local = u * heads.radii[part].double()
        p = torch.einsum("nij,nj->ni", heads.rot[part].double(), local) + heads.centre[part].double()
        keep = ((heads.clip_n[part].double() * p).sum(-1) >= heads.clip_d[part].double()).nonzero()[:, 0][:n]
        assert len(keep) == n, "too few surface points survive the clip planes"
        p, part, u = p[keep], part[keep], u[keep]
        # Flattened along the surface normal (the normal of the ellipsoid at u), like 2D splats.
        normal = torch.einsum("nij,nj->ni", heads.rot[part].double(), u / heads.radii[part].double())
        normal = torch.nn.functional.normalize(normal, dim=-1)
        quat = _quat_from_z(normal)
        log_scales = torch.log(torch.tensor([scale, scale, scale * 0.2], dtype=F64)).expand(n, 3).clone()
        log_scales += 0.2 * torch.randn(n, 3, generator=g, dtype=F64)
        # Kept off 0: colour is clamped at 0 there, where float32 and float64 would take the kink differently.
        rgb = (heads.colour[part].double() + 0.05 * torch.randn(n, 3, generator=g, dtype=F64)).clamp(0.02, 1)
        out.append(Gaussians(means=p[None], log_scales=log_scales[None], quats=quat[None],
                             opacity_logits=(2.5 + torch.randn(n, generator=g, dtype=F64))[None],
                             sh0=rgb_to_sh0(rgb)[None]))
    return Gaussians(**{k: torch.cat([o.tensors()[k] for o in out]) for k in out[0].tensors()})


def _quat_from_z(n: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) rotating +z onto the unit vectors n [N, 3]."""
    z = torch.tensor([0.0, 0.0, 1.0], dtype=n.dtype).expand_as(n)
    q = torch.cat([1.0 + (z * n).sum(-1, keepdim=True), torch.linalg.cross(z, n)], dim=-1)
    flip = q[:, 0] < 1e-6  # n = -z: any half-turn about x
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=n.dtype)
    return torch.nn.functional.normalize(q, dim=-1)


def views(heads: int, per_head: int, seed: int) -> torch.Tensor:
    """EG3D labels [heads, per_head, 25] from the dataset-like pose distribution."""
    return camera.sample_gaussian_poses(heads * per_head, generator=torch.Generator().manual_seed(seed),
                                        dtype=F64).reshape(heads, per_head, 25)


def render_with_grads(g: Gaussians, labels: torch.Tensor, size: int, bg: torch.Tensor, weights: tuple,
                      backend: str, device: str, dtype: torch.dtype) -> dict:
    """Render on `backend` at `dtype`, back-propagate sum(image * w_image) + sum(alpha * w_alpha);
    images, alphas and the gradients of every Gaussian tensor come back as float64 on the CPU."""
    from cgsgan.render import render

    params = {k: v.detach().to(device, dtype).clone().requires_grad_(True) for k, v in g.tensors().items()}
    out = render(Gaussians(**params), labels.to(device, dtype), size, bg.to(device, dtype), backend=backend)
    w_img, w_alpha = (w.to(device, dtype) for w in weights)
    ((out.image * w_img).sum() + (out.alpha * w_alpha).sum()).backward()
    return {"image": out.image.detach().cpu().double(), "alpha": out.alpha.detach().cpu().double(),
            "grads": {k: p.grad.detach().cpu().double() for k, p in params.items()}}


def differences(a: dict, ref: dict) -> dict[str, float]:
    """How far render `a` is from `ref`: per image and alpha the largest difference, the fraction of
    values off by more than 1e-3 and the mean difference; per gradient tensor the norm of the
    difference relative to the reference's norm."""
    out = {}
    for key in ("image", "alpha"):
        d = (a[key] - ref[key]).abs()
        out[f"{key}_max"] = d.max().item()
        out[f"{key}_frac_over_1e-3"] = (d > 1e-3).double().mean().item()
        out[f"{key}_mean"] = d.mean().item()
    for k, g in ref["grads"].items():
        out[f"grad_{k}_rel"] = ((a["grads"][k] - g).norm() / g.norm()).item()
    out["coverage"] = (ref["alpha"] > 0.5).double().mean().item()
    return out
