"""The compiled CPU renderer ("native"): its projection against the PyTorch one, float32 agreement,
threads, the build and its fallback. Its images and gradients against the dense oracle and finite
differences are test_render's tests, run for both rasterizers.

Skipped with the reason where no C++ compiler can build it; CGSGAN_REQUIRE_NATIVE=1 (set by
.ci/run) turns that skip into a failure.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

from cgsgan import camera
from cgsgan.gaussians import Gaussians
from cgsgan.render import Cameras, native, render
from cgsgan.render.backends import resolve_backend
from cgsgan.render.projection import project
from tests.unit.scenes import scene

F64 = torch.float64
OK, WHY = native.available()
if not OK and os.environ.get("CGSGAN_REQUIRE_NATIVE") == "1":
    raise RuntimeError(f"CGSGAN_REQUIRE_NATIVE=1 but {WHY}")
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


def poses(n: int, seed: int, dtype=F64) -> torch.Tensor:
    return camera.sample_gaussian_poses(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_native_projection_equals_the_pytorch_projection_with_its_gradients():
    # Gaussians spread well beyond the view: some behind the camera, some past the field-of-view
    # clamp of the Jacobian, some culled off-screen, so every branch of the projection is taken.
    B, V, N, W, H = 2, 3, 400, 40, 32
    g = scene(B, N, scale=0.05, seed=11, spread=6.0)
    labels = poses(B * V, 11).reshape(B, V, 25)
    cams = Cameras.from_labels(labels)
    viewmats, Ks = camera.view_matrix(cams.cam2world), camera.pixel_intrinsics(cams.intrinsics, W, H)
    leaves = [t.requires_grad_(True) for t in (g.means, g.log_scales, g.quats)]
    g = g.replace(means=leaves[0], log_scales=leaves[1], quats=leaves[2])
    args = (viewmats, Ks, W, H)
    ours = native.project_native(g, *args)
    ref = project(g, *args)
    z = ref.depths
    assert (z < 0.01).any() and (ref.radii == 0).any() and (ref.radii > 0).any()
    assert (ref.means2d[..., 0] < -0.5 * W).any() or (ref.means2d[..., 0] > 1.5 * W).any()  # beyond the clamp
    for name in ("means2d", "conics", "depths"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), atol=1e-12, rtol=1e-12, msg=name)
    assert torch.equal(ours.radii.long(), ref.radii)
    gen = torch.Generator().manual_seed(12)
    for name in ("means2d", "conics", "depths"):
        w = torch.randn(getattr(ref, name).shape, generator=gen, dtype=F64)
        a = torch.autograd.grad((getattr(ours, name) * w).sum(), leaves, retain_graph=True, allow_unused=True)
        b = torch.autograd.grad((getattr(ref, name) * w).sum(), leaves, retain_graph=True, allow_unused=True)
        for leaf, x, y in zip(("means", "log_scales", "quats"), a, b):
            if y is None:  # e.g. the depth does not depend on the covariance
                assert x is None or x.abs().max() == 0, (name, leaf)
                continue
            torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-9, msg=f"d {name} / d {leaf}")


def test_native_and_pytorch_agree_in_float32_on_a_training_sized_scene():
    # The tiny config's shape: 8 heads x 4 views, 2,688 small Gaussians, 64x64.
    g = scene(8, 2688, scale=0.01, seed=3, dtype=torch.float32)
    labels = poses(32, 1, dtype=torch.float32).reshape(8, 4, 25)
    weights = torch.rand(8, 4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    params = {k: t.requires_grad_(True) for k, t in g.tensors().items()}

    def run(backend):
        out = render(Gaussians(**params), labels, 64, None, backend=backend)
        return out.image, torch.autograd.grad((out.image * weights).sum() + out.alpha.sum(), list(params.values()))

    (img_t, grads_t), (img_n, grads_n) = run("torch"), run("native")
    assert img_t.std() > 0.05
    # float32 sums in another order: a pair at the alpha threshold (1/255) or the transmittance
    # stop may fall on the other side of it, moving a pixel by up to 2/255; a handful do.
    diff = (img_n - img_t).abs()
    assert diff.max() < 2 / 255 and (diff > 1e-5).float().mean() < 1e-3, (diff.max(), (diff > 1e-5).float().mean())
    for name, a, b in zip(params, grads_n, grads_t):
        assert (a - b).abs().max() <= 1e-2 * b.abs().max(), name
        assert (a - b).norm() <= 1e-3 * b.norm(), name


def test_threads_split_cameras_so_results_do_not_depend_on_the_thread_count():
    g = scene(4, 500, scale=0.03, seed=4, dtype=torch.float32)
    labels = poses(8, 4, dtype=torch.float32).reshape(4, 2, 25)
    params = {k: t.requires_grad_(True) for k, t in g.tensors().items()}
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = render(Gaussians(**params), labels, 48, None, backend="native")
            results.append((out.image, torch.autograd.grad(out.image.square().sum(), list(params.values()))))
    finally:
        torch.set_num_threads(before)
    (img1, g1), (img2, g2) = results
    assert torch.equal(img1, img2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_auto_picks_native_on_cpu_and_the_library_is_cached_by_content(tmp_path):
    assert resolve_backend("auto", torch.device("cpu")) == "native"
    built = sorted(native.cache_dir().glob("native-*.so"))
    assert built, "the library is built into the cache directory"
    # A second process finds it there: same file, nothing rebuilt (its mtime is unchanged).
    mtimes = {p: p.stat().st_mtime_ns for p in built}
    code = "from cgsgan.render import native; native.library(); print(native.cache_dir())"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert {p: p.stat().st_mtime_ns for p in sorted(native.cache_dir().glob("native-*.so"))} == mtimes


def test_without_a_compiler_native_says_why_and_auto_falls_back_to_torch(tmp_path):
    code = (
        "import torch\n"
        "from cgsgan.render import native\n"
        "from cgsgan.render.backends import resolve_backend\n"
        "ok, why = native.available()\n"
        "print(ok, '|', why)\n"
        "print(resolve_backend('auto', torch.device('cpu')))\n"
        "try:\n"
        "    resolve_backend('native', torch.device('cpu'))\n"
        "except RuntimeError as e:\n"
        "    print('error:', e)\n"
    )
    env = {**os.environ, "CXX": "no-such-compiler-cgsgan", "CGSGAN_KERNEL_CACHE": str(tmp_path / "empty")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    first, auto, error = out.strip().splitlines()
    assert first.startswith("False") and "no-such-compiler-cgsgan" in first
    assert auto == "torch"
    assert "native" in error and "no-such-compiler-cgsgan" in error and "backend='torch'" in error


def test_native_rejects_what_it_cannot_do():
    g = scene(1, 10)
    with pytest.raises(TypeError, match="float32/float64"):
        render(Gaussians(**{k: v.half() for k, v in g.tensors().items()}), camera.frontal_label(1), 16, backend="native")
    labels = camera.frontal_label(1, dtype=F64).requires_grad_(True)
    with pytest.raises(ValueError, match="cameras"):
        render(g, labels, 16, backend="native")
    assert math.isfinite(render(g, camera.frontal_label(1, dtype=F64), 16, backend="native").image.sum().item())
