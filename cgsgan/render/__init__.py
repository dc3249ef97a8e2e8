"""One `render` entry for batched, multi-view Gaussian rendering.

The backend is a `cgsgan.config.RenderBackend` (what train.render_backend takes: auto, gsplat,
native, torch) or the test oracle "dense"; each is one function in render/backends.py's table,
where "auto" is resolved (gsplat for CUDA tensors, otherwise native where a C++ compiler could
build it and torch where not). Colours are degree-0 SH evaluated as the 3DGS rasterizers do
(clamped at 0); images come back in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cgsgan import camera
from cgsgan.config import RenderBackend
from cgsgan.gaussians import Gaussians
from cgsgan.render.backends import BACKENDS, Oracle, Views, resolve_backend


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


def render(
    gaussians: Gaussians,
    cameras: torch.Tensor | Cameras,
    image_size: int | tuple[int, int],
    background: torch.Tensor | None = None,
    backend: RenderBackend | Oracle | str = RenderBackend.auto,
) -> RenderOutput:
    """Render head b of `gaussians` (B heads) from each of its cameras.

    cameras: EG3D labels [B, 25] / [B, V, 25] or a `Cameras`. With [B, 25] the view axis is
    dropped from the outputs. background: RGB in [0, 1], broadcastable to [B, V, 3] (or [B, 3]
    with [B, 25] cameras); None is white. backend: a name of render/backends.py's table, or auto.
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
    views = Views(viewmats=camera.view_matrix(cams.cam2world.to(dtype)),  # [B, V, 4, 4]
                  Ks=camera.pixel_intrinsics(cams.intrinsics.to(dtype), width, height),  # [B, V, 3, 3]
                  width=width, height=height, backgrounds=background.expand(B, V, 3))
    colors, alphas, depths = BACKENDS[resolve_backend(backend, device)].render(gaussians, views)

    # [B, V, H, W, ...] -> [B, V, C, H, W]; images to [-1, 1].
    out = RenderOutput(
        image=colors.permute(0, 1, 4, 2, 3) * 2.0 - 1.0,
        alpha=alphas[:, :, None],
        depth=depths[:, :, None],
    )
    if single_view:
        out = RenderOutput(image=out.image[:, 0], alpha=out.alpha[:, 0], depth=out.depth[:, 0])
    return out
