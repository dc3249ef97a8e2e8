"""One `render` entry for batched, multi-view Gaussian rendering.

The backends are `cgsgan.config.RenderBackend` (what train.render_backend takes), plus a test oracle:
    "gsplat" - gsplat.rasterization on CUDA tensors;
    "torch"  - the project's own differentiable PyTorch rasterizer (per-pixel depth-sorted lists;
               CPU, or any device);
    "native" - the same projection and rasterizer compiled from C++ (CPU; built on first use,
               see render/native.py), several times faster than "torch";
    "dense"  - the all-pairs oracle the tests compare "torch" and "native" against (small scenes only).
"auto" picks gsplat for CUDA tensors, otherwise native where a C++ compiler could build it and
torch where not. Colours are degree-0 SH evaluated as
the 3DGS rasterizers do (clamped at 0); images come back in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from cgsgan import camera
from cgsgan.config import RenderBackend
from cgsgan.gaussians import Gaussians
from cgsgan.render import native
from cgsgan.render.dense import rasterize_dense
from cgsgan.render.projection import project
from cgsgan.render.rasterize import rasterize

DENSE = "dense"  # the test oracle: not a training option, so not a RenderBackend
Backend = RenderBackend | Literal["dense"]
BACKENDS = (*(b.value for b in RenderBackend), DENSE)  # what `render` accepts


@dataclass
class Cameras:
    """B heads seen from V cameras each.

    cam2world  [B, V, 4, 4]  OpenCV convention
    intrinsics [B, V, 3, 3]  normalised by the image size (EG3D)
    """

    cam2world: torch.Tensor
    intrinsics: torch.Tensor

    @staticmethod
    def from_labels(labels: torch.Tensor) -> "Cameras":
        """labels [B, 25] (one view per head) or [B, V, 25]."""
        if labels.dim() == 2:
            labels = labels[:, None]
        c2w, intr = camera.split_label(labels)
        return Cameras(cam2world=c2w, intrinsics=intr)


@dataclass
class RenderOutput:
    """image [B, (V,) 3, H, W] in [-1, 1]; alpha and depth (expected z) [B, (V,) 1, H, W]."""

    image: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor


def gsplat_available() -> tuple[bool, str]:
    """Whether gsplat can rasterize here, and why not."""
    if not torch.cuda.is_available():
        return False, "no CUDA device is available (torch.cuda.is_available() is False)"
    try:
        import gsplat  # noqa: F401
    except ImportError as e:  # pragma: no cover - gsplat is a dependency
        return False, f"gsplat is not importable: {e}"
    return True, ""


def resolve_backend(backend: Backend, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; expected one of {list(BACKENDS)}")
    if backend == RenderBackend.auto:
        if device.type == "cuda":
            return RenderBackend.gsplat.value
        return RenderBackend.native.value if device.type == "cpu" and native.available()[0] else RenderBackend.torch.value
    if backend == RenderBackend.native:
        ok, why = native.available()
        if not ok or device.type != "cpu":
            reason = why or f"the Gaussians are on {device}, the native rasterizer needs CPU tensors"
            raise RuntimeError(f"render backend 'native' cannot run: {reason}. Use backend='torch'.")
    if backend == RenderBackend.gsplat:
        ok, why = gsplat_available()
        if not ok or device.type != "cuda":
            reason = why or f"the Gaussians are on {device}, gsplat needs CUDA tensors"
            raise RuntimeError(f"render backend 'gsplat' cannot run: {reason}. Use backend='torch' on CPU.")
    return str(backend)


def render(
    gaussians: Gaussians,
    cameras: torch.Tensor | Cameras,
    image_size: int | tuple[int, int],
    background: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> RenderOutput:
    """Render head b of `gaussians` (B heads) from each of its cameras.

    cameras: EG3D labels [B, 25] / [B, V, 25] or a `Cameras`. With [B, 25] the view axis is
    dropped from the outputs. background: RGB in [0, 1], broadcastable to [B, V, 3] (or [B, 3]
    with [B, 25] cameras); None is
    white.
    """
    single_view = isinstance(cameras, torch.Tensor) and cameras.dim() == 2
    cams = Cameras.from_labels(cameras) if isinstance(cameras, torch.Tensor) else cameras
    B, V = cams.cam2world.shape[:2]
    if B != gaussians.batch_size:
        raise ValueError(f"{gaussians.batch_size} heads but cameras for {B}")
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    dtype, device = gaussians.means.dtype, gaussians.means.device
    if background is None:
        background = torch.ones(3, dtype=dtype, device=device)
    background = background.to(dtype=dtype, device=device)
    if single_view and background.dim() == 2:  # [B, 3] for [B, 25] cameras
        background = background[:, None]
    bg = background.expand(B, V, 3)
    viewmats = camera.view_matrix(cams.cam2world.to(dtype))  # [B, V, 4, 4]
    Ks = camera.pixel_intrinsics(cams.intrinsics.to(dtype), width, height)  # [B, V, 3, 3]

    which = resolve_backend(backend, device)
    if which == "gsplat":
        colors, alphas, depths = _render_gsplat(gaussians, viewmats, Ks, width, height, bg)
    else:
        colors, alphas, depths = _render_torch(gaussians, viewmats, Ks, width, height, bg, which)

    # [B, V, H, W, ...] -> [B, V, C, H, W]; images to [-1, 1].
    out = RenderOutput(
        image=colors.permute(0, 1, 4, 2, 3) * 2.0 - 1.0,
        alpha=alphas[:, :, None],
        depth=depths[:, :, None],
    )
    if single_view:
        out = RenderOutput(image=out.image[:, 0], alpha=out.alpha[:, 0], depth=out.depth[:, 0])
    return out


def _render_torch(g: Gaussians, viewmats, Ks, width, height, bg, which: str):
    B, V = viewmats.shape[:2]
    project_fn = native.project_native if which == "native" else project
    proj = project_fn(g.means, g.log_scales, g.quats, g.opacities, g.rgb, viewmats, Ks, width, height)
    if which == DENSE:
        colors, alphas, depths = rasterize_dense(proj, bg.reshape(B * V, 3), width, height)
    else:
        colors, alphas, depths = rasterize(proj, bg.reshape(B * V, 3), width, height, native=which == "native")
    return (
        colors.reshape(B, V, height, width, 3),
        alphas.reshape(B, V, height, width),
        depths.reshape(B, V, height, width),
    )


def _render_gsplat(g: Gaussians, viewmats, Ks, width, height, bg):
    from gsplat import rasterization

    renders, alphas, _ = rasterization(
        means=g.means,
        quats=g.quats,
        scales=g.scales,
        opacities=g.opacities,
        colors=g.rgb,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        backgrounds=bg,
        render_mode="RGB+ED",
        packed=False,
    )  # renders [B, V, H, W, 4], alphas [B, V, H, W, 1]
    return renders[..., :3], alphas[..., 0], renders[..., 3]
