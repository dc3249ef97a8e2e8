"""The render backends: one function each, in one table keyed by backend name.

Every backend has the signature `Backend.render`: B heads' Gaussians and the `Views` to render
them from in; colours [B, V, H, W, 3] in [0, 1], alphas and expected depths [B, V, H, W] out.
    gsplat - gsplat.rasterization on CUDA tensors;
    native - projection and compositing compiled from C++ (CPU; built on first use, see
             native.py), several times faster than torch;
    torch  - the project's differentiable PyTorch rasterizer (per-pixel depth-sorted lists; CPU,
             or any device): the reference for native;
    dense  - the all-pairs oracle the tests compare torch and native against (small scenes only).
The first three are `RenderBackend` values (train.render_backend); the oracle is `Oracle.dense`,
not a training option. `RenderBackend.auto` is no backend: it picks the first entry of the table
(in its order) that can run on the Gaussians' device.

Adding a backend: a RenderBackend value, a function with this signature, an entry in BACKENDS.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch

from cgsgan.config import RenderBackend
from cgsgan.gaussians import Gaussians
from cgsgan.render import native
from cgsgan.render.dense import composite_dense
from cgsgan.render.projection import Projected, project
from cgsgan.render.rasterize import Composite, composite_torch, rasterize


class Oracle(StrEnum):
    dense = "dense"  # a test oracle: not a training option, so not a RenderBackend


@dataclass(frozen=True)
class Views:
    """What B heads are rendered from: V cameras each.

    viewmats    [B, V, 4, 4]  world to camera (OpenCV)
    Ks          [B, V, 3, 3]  in pixels
    backgrounds [B, V, 3]     RGB in [0, 1]
    """

    viewmats: torch.Tensor
    Ks: torch.Tensor
    width: int
    height: int
    backgrounds: torch.Tensor


# colors [B, V, H, W, 3], alphas [B, V, H, W], depths [B, V, H, W]
Images = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _anywhere(device: torch.device) -> str:
    return ""


@dataclass(frozen=True)
class Backend:
    render: Callable[[Gaussians, Views], Images]
    # Why it cannot render tensors on `device` ("" where it can): decides `auto`, and the error.
    unavailable: Callable[[torch.device], str] = _anywhere


def render_gsplat(g: Gaussians, views: Views) -> Images:
    from gsplat import rasterization

    renders, alphas, _ = rasterization(
        means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=g.rgb,
        viewmats=views.viewmats, Ks=views.Ks, width=views.width, height=views.height,
        backgrounds=views.backgrounds, render_mode="RGB+ED", packed=False,
    )  # renders [B, V, H, W, 4], alphas [B, V, H, W, 1]
    return renders[..., :3], alphas[..., 0], renders[..., 3]


class BackendUnavailable(RuntimeError):
    """A render backend cannot run here (no CUDA, gsplat without its kernels): the same on every
    try, so an orchestrator should stop rather than retry."""


GSPLAT_INSTALL = ("use the training image (infra/docker/Dockerfile builds gsplat's kernels), or install the CUDA "
                  "toolkit (nvcc) so that gsplat can build them: docs/gpu.md")


@functools.cache
def gsplat_kernels() -> str:
    """Why gsplat's compiled CUDA extension cannot be loaded ("" where it can; needs no GPU).

    The gsplat wheel is pure Python with CUDA sources: `gsplat.csrc` exists only where gsplat was
    built from source (the training image); otherwise importing gsplat.cuda._backend compiles the
    kernels into torch's extension cache when nvcc is found and leaves `_C = None` when it is not,
    and the first render then fails on None. A plain `import gsplat` succeeds either way."""
    try:
        import gsplat  # noqa: F401
    except ImportError as e:
        return f"gsplat is not importable ({e}): pip install 'cgsgan[gpu]', then {GSPLAT_INSTALL}"
    try:
        from gsplat.cuda._backend import _C
    except Exception as e:  # a failed build raises (nvcc errors, a wrong TORCH_CUDA_ARCH_LIST)
        return f"gsplat's CUDA kernels failed to build or load ({type(e).__name__}: {e}); {GSPLAT_INSTALL}"
    if _C is None:
        return f"gsplat is installed without its compiled CUDA kernels (gsplat.csrc) and no nvcc to build them; {GSPLAT_INSTALL}"
    return ""


def gsplat_unavailable(device: torch.device) -> str:
    if not torch.cuda.is_available():
        return "no CUDA device is available (torch.cuda.is_available() is False)"
    if device.type != "cuda":
        return f"the Gaussians are on {device}, gsplat needs CUDA tensors"
    return gsplat_kernels()


def render_native(g: Gaussians, views: Views) -> Images:
    return _rasterized(native.project_native(g, views.viewmats, views.Ks, views.width, views.height), views,
                       native.composite_native)


def render_torch(g: Gaussians, views: Views) -> Images:
    return _rasterized(project(g, views.viewmats, views.Ks, views.width, views.height), views, composite_torch)


def render_dense(g: Gaussians, views: Views) -> Images:
    return _rasterized(project(g, views.viewmats, views.Ks, views.width, views.height), views, composite_dense)


def _rasterized(p: Projected, views: Views, composite: Composite) -> Images:
    """The project's rasterizer over C = B V cameras, back to [B, V, ...]."""
    B, V = views.viewmats.shape[:2]
    images = rasterize(p, views.backgrounds.reshape(B * V, 3), views.width, views.height, composite=composite)
    return tuple(t.reshape(B, V, *t.shape[1:]) for t in images)


BACKENDS: dict[RenderBackend | Oracle, Backend] = {
    RenderBackend.gsplat: Backend(render_gsplat, gsplat_unavailable),
    RenderBackend.native: Backend(render_native, native.unavailable),
    RenderBackend.torch: Backend(render_torch),
    Oracle.dense: Backend(render_dense),
}
NAMES = [RenderBackend.auto.value, *(b.value for b in BACKENDS)]  # what `render` takes


def resolve_backend(name: RenderBackend | Oracle | str, device: torch.device) -> RenderBackend | Oracle:
    """The backend `name` asks for on tensors of `device`, auto resolved; raises ValueError for a
    name that is none, BackendUnavailable (saying why) for one that cannot run here."""
    if name == RenderBackend.auto:
        return next(b for b, spec in BACKENDS.items() if isinstance(b, RenderBackend) and not spec.unavailable(device))
    which = next((b for b in BACKENDS if b == name), None)
    if which is None:
        raise ValueError(f"unknown render backend {name!r}; expected one of {NAMES}")
    why = BACKENDS[which].unavailable(device)
    if why:
        instead = resolve_backend(RenderBackend.auto, device)
        raise BackendUnavailable(f"render backend {which.value!r} cannot run: {why}. Use backend={instead.value!r}.")
    return which
