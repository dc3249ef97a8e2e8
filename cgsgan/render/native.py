"""The compiled CPU renderer (native.cpp): built on first use, loaded with ctypes.

Two autograd Functions with the semantics of the PyTorch code they replace: NativeProject is
projection.py's `project` (EWA projection, gsplat's culling and boxes; called as `project_native`)
and NativeComposite is rasterize.py's compositing (called as `composite_native`, a
rasterize.Composite). The PyTorch versions take a few hundred whole-array operations
(dozens of passes over every (camera, Gaussian) and every (Gaussian, pixel) pair, forward and
backward); these make one pass each, in C++, threaded over heads and cameras. The source has no
torch headers and no pybind, so building it takes about a second with any C++17 compiler, and
nothing is downloaded. Without a compiler the "native" backend says why, and "auto" falls back to
the PyTorch rasterizer.

Build: `$CXX` (default g++) -O3 into `$CGSGAN_KERNEL_CACHE` (default ~/.cache/cgsgan/kernels),
named by a hash of the source, flags and compiler, written to a temporary name and renamed, so
that workers starting together never load a half-written library. No -march=native: a cache on
a shared home directory may be read by other CPUs.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from cgsgan.gaussians import Gaussians, covariance
from cgsgan.render.projection import Projected

SOURCE = Path(__file__).with_name("native.cpp")
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off"]

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_FORWARD_ARGS = [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int]
_BACKWARD_ARGS = [_P, _I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int]
_PROJECT_FORWARD_ARGS = [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, ctypes.c_int]
_PROJECT_BACKWARD_ARGS = [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _P, ctypes.c_int]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def cache_dir() -> Path:
    return Path(os.environ.get("CGSGAN_KERNEL_CACHE") or Path.home() / ".cache" / "cgsgan" / "kernels")


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CXX", "g++")
    exe = shutil.which(compiler)
    if exe is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX to one)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, version]).encode()).hexdigest()[:16]
    target = cache_dir() / f"native-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run([exe, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed to build {SOURCE}:\n{done.stderr[-2000:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    for suffix in _SUFFIX.values():
        getattr(lib, f"cgsgan_rasterize_forward_{suffix}").argtypes = _FORWARD_ARGS
        getattr(lib, f"cgsgan_rasterize_backward_{suffix}").argtypes = _BACKWARD_ARGS
        getattr(lib, f"cgsgan_project_forward_{suffix}").argtypes = _PROJECT_FORWARD_ARGS
        getattr(lib, f"cgsgan_project_backward_{suffix}").argtypes = _PROJECT_BACKWARD_ARGS
    return lib


def library() -> ctypes.CDLL:
    """The compiled renderer, built on the first call; raises RuntimeError saying why not."""
    global _library, _error
    with _lock:
        if _library is None and _error is None:
            try:
                _library = _build()
            except (RuntimeError, OSError) as e:
                _error = str(e)
        if _library is None:
            raise RuntimeError(f"the native CPU rasterizer is unavailable: {_error}")
        return _library


def available() -> tuple[bool, str]:
    """Whether the compiled renderer can run here, and why not."""
    try:
        library()
    except RuntimeError as e:
        return False, str(e)
    return True, ""


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _check(t: torch.Tensor, what: str) -> None:
    if t.dtype not in _SUFFIX or t.device.type != "cpu":
        raise TypeError(f"the native renderer takes float32/float64 CPU tensors; {what} is {t.dtype} on {t.device}")


class NativeProject(torch.autograd.Function):
    """means [B, N, 3], sigma [B, N, 6] (covariance xx, yy, zz, xy, xz, yz), opacities [B, N],
    viewmats [B, V, 4, 4], Ks [B, V, 3, 3] -> means2d [B V, N, 2], conics [B V, N, 3],
    depths [B V, N], radii [B V, N, 2] (int32, not differentiable).

    Differentiates the means and the covariance; opacities only decide the boxes, and the
    cameras are constants (render() never differentiates them; "torch" does where needed).
    """

    @staticmethod
    def forward(ctx, means, sigma, opacities, viewmats, Ks, width: int, height: int):
        _check(means, "means")
        lib, dt = library(), means.dtype
        B, N = means.shape[:2]
        V = viewmats.shape[1]
        means, sigma = means.detach().contiguous(), sigma.detach().to(dt).contiguous()
        opacities = opacities.detach().to(dt).contiguous()
        viewmats, Ks = viewmats.detach().to(dt).contiguous(), Ks.detach().to(dt).contiguous()
        means2d = means.new_empty(B * V, N, 2)
        conics = means.new_empty(B * V, N, 3)
        depths = means.new_empty(B * V, N)
        radii = torch.empty(B * V, N, 2, dtype=torch.int32)
        status = getattr(lib, f"cgsgan_project_forward_{_SUFFIX[dt]}")(
            _ptr(means), _ptr(sigma), _ptr(opacities), _ptr(viewmats), _ptr(Ks), B, V, N, width, height,
            _ptr(means2d), _ptr(conics), _ptr(depths), _ptr(radii), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"native projection failed (status {status})")
        ctx.save_for_backward(means, sigma, viewmats, Ks)
        ctx.size = (width, height)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii):
        means, sigma, viewmats, Ks = ctx.saved_tensors
        width, height = ctx.size
        B, N = means.shape[:2]
        V = viewmats.shape[1]

        def grad(g: torch.Tensor | None, *shape: int) -> torch.Tensor:
            return means.new_zeros(B * V, N, *shape) if g is None else g.to(means.dtype).contiguous()

        # Named, so that they outlive the call (a pointer does not keep its tensor alive).
        g_means2d, g_conics, g_depths = grad(g_means2d, 2), grad(g_conics, 3), grad(g_depths)
        g_means, g_sigma = torch.zeros_like(means), torch.zeros_like(sigma)
        status = getattr(library(), f"cgsgan_project_backward_{_SUFFIX[means.dtype]}")(
            _ptr(means), _ptr(sigma), _ptr(viewmats), _ptr(Ks), B, V, N, width, height, _ptr(g_means2d),
            _ptr(g_conics), _ptr(g_depths), _ptr(g_means), _ptr(g_sigma), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"native projection backward failed (status {status})")
        return g_means, g_sigma, None, None, None, None, None


def project_native(g: Gaussians, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int) -> Projected:
    """projection.project with the per-camera work compiled: same arguments, same Projected."""
    if viewmats.requires_grad or Ks.requires_grad:
        raise ValueError("the native renderer does not differentiate cameras; use backend='torch' for that")
    B, N = g.means.shape[:2]
    V = viewmats.shape[1]
    cov = covariance(g.log_scales, g.quats)  # [B, N, 3, 3]: per head, cheap in PyTorch
    sigma = torch.stack([cov[..., 0, 0], cov[..., 1, 1], cov[..., 2, 2], cov[..., 0, 1], cov[..., 0, 2],
                         cov[..., 1, 2]], dim=-1)  # [B, N, 6], the entries projection.project reads
    opacities = g.opacities
    means2d, conics, depths, radii = NativeProject.apply(g.means, sigma, opacities, viewmats, Ks, width, height)

    def per_camera(t: torch.Tensor) -> torch.Tensor:  # [B, N, ...] -> [B V, N, ...], no copy until needed
        return t[:, None].expand(B, V, *t.shape[1:]).reshape(B * V, *t.shape[1:])

    return Projected(means2d=means2d, conics=conics, depths=depths, opacities=per_camera(opacities),
                     colors=per_camera(g.rgb), radii=radii)


class NativeComposite(torch.autograd.Function):
    """table [C, N, 6 + F] (means2d, conics, opacity, features), depths [C, N], radii [C, N, 2]
    -> acc [C, H, W, F] (sum of T alpha f), final transmittance [C, H, W].

    Only the table is differentiated; depths give the order and radii bound the footprints. The
    pairs each pixel composited (int32 Gaussian index and alpha, per pixel front to back) are kept
    for the backward pass.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, depths: torch.Tensor, radii: torch.Tensor, width: int, height: int):
        _check(table, "the table")
        lib = library()
        C, N, K = table.shape
        table = table.detach().contiguous()
        depths = depths.detach().to(table.dtype).contiguous()
        radii = radii.to(torch.int32).contiguous()
        # An upper bound on each camera's pairs: every pixel row of a box, two pixels wider than
        # the box (the spans are a hair wider than the ellipse it bounds); the kernel checks it.
        rx, ry = radii[..., 0].long(), radii[..., 1].long()
        bound = ((2 * rx + 3) * (2 * ry + 1) * ((rx > 0) | (ry > 0))).sum(1)  # [C]
        base = torch.cat([bound.new_zeros(1), torch.cumsum(bound, 0)])  # [C + 1]
        total = int(base[-1])
        list_gauss = torch.empty(total, dtype=torch.int32)
        list_alpha = torch.empty(total, dtype=table.dtype)
        pix_start = torch.empty(C * height * width, dtype=torch.int64)
        pix_incl = torch.empty(C * height * width, dtype=torch.int32)
        acc = torch.empty(C, height, width, K - 6, dtype=table.dtype)
        final_t = torch.empty(C, height, width, dtype=table.dtype)
        status = getattr(lib, f"cgsgan_rasterize_forward_{_SUFFIX[table.dtype]}")(
            _ptr(table), _ptr(depths), _ptr(radii), C, N, K, width, height, _ptr(base), _ptr(list_gauss),
            _ptr(list_alpha), _ptr(pix_start), _ptr(pix_incl), _ptr(acc), _ptr(final_t), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"native rasterizer forward failed (status {status}: "
                               f"{'pair buffer overflow' if status == 1 else 'out of memory or internal error'})")
        ctx.save_for_backward(table, list_gauss, list_alpha, pix_start, pix_incl, final_t)
        ctx.size = (width, height)
        return acc, final_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_acc: torch.Tensor, g_t: torch.Tensor):
        table, list_gauss, list_alpha, pix_start, pix_incl, final_t = ctx.saved_tensors
        width, height = ctx.size
        C, N, K = table.shape
        g_acc = (g_acc if g_acc is not None else torch.zeros(C, height, width, K - 6, dtype=table.dtype))
        g_t = g_t if g_t is not None else torch.zeros_like(final_t)
        g_acc, g_t = g_acc.to(table.dtype).contiguous(), g_t.to(table.dtype).contiguous()
        g_table = torch.zeros_like(table)
        status = getattr(library(), f"cgsgan_rasterize_backward_{_SUFFIX[table.dtype]}")(
            _ptr(table), C, N, K, width, height, _ptr(list_gauss), _ptr(list_alpha), _ptr(pix_start), _ptr(pix_incl),
            _ptr(final_t), _ptr(g_acc), _ptr(g_t), _ptr(g_table), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"native rasterizer backward failed (status {status})")
        return g_table, None, None, None, None


def composite_native(p: Projected, features: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled compositor (a rasterize.Composite)."""
    table = torch.cat([p.means2d, p.conics, p.opacities[..., None], features], dim=-1)  # [C, N, 6 + F]
    return NativeComposite.apply(table, p.depths, p.radii, width, height)


def unavailable(device: torch.device) -> str:
    """Why the compiled renderer cannot render tensors on `device` ("" where it can)."""
    if device.type != "cpu":
        return f"the Gaussians are on {device}, the native rasterizer needs CPU tensors"
    return available()[1]
