"""The render backends are one table (render/backends.py): one entry per RenderBackend (auto aside,
which picks one) plus the dense oracle, each a function of the same signature; the project's
rasterizer takes its compositor as a function. Each entry's images and gradients against the
oracle are test_render's tests, run over the table."""


import pytest
import torch

from cgsgan import camera
from cgsgan.config import RenderBackend
from cgsgan.render import Cameras, native
from cgsgan.render.backends import BACKENDS, NAMES, Oracle, resolve_backend
from cgsgan.render.dense import composite_dense
from cgsgan.render.projection import project
from cgsgan.render import rasterize as rasterize_module
from cgsgan.render.rasterize import composite_torch, rasterize
from tests.unit.fakes import gsplat_without_kernels
from tests.unit.scenes import scene

F64 = torch.float64
CPU = torch.device("cpu")
COMPOSITES = [composite_torch, pytest.param(native.composite_native, marks=pytest.mark.skipif(
    not native.available()[0], reason=native.available()[1]))]


def test_the_table_has_every_configurable_backend_and_the_oracle():
    assert set(BACKENDS) == (set(RenderBackend) - {RenderBackend.auto}) | set(Oracle)
    assert NAMES == ["auto", "gsplat", "native", "torch", "dense"]
    assert all(callable(spec.render) and callable(spec.unavailable) for spec in BACKENDS.values())
    # auto: the first RenderBackend entry that can run; torch runs anywhere, so there always is one.
    assert resolve_backend(RenderBackend.auto, CPU) == ("native" if native.available()[0] else "torch")
    assert resolve_backend("torch", CPU) is RenderBackend.torch and resolve_backend("dense", CPU) is Oracle.dense
    assert BACKENDS[RenderBackend.torch].unavailable(CPU) == "" and BACKENDS[Oracle.dense].unavailable(CPU) == ""


def test_an_unknown_backend_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'opengl'.*\['auto', 'gsplat', 'native', 'torch', 'dense'\]"):
        resolve_backend("opengl", CPU)


def test_a_backend_that_cannot_run_says_why_and_what_can():
    with pytest.raises(RuntimeError, match=r"'gsplat' cannot run: .*(CUDA|cuda).*Use backend='(native|torch)'"):
        resolve_backend("gsplat", CPU)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_rasterize_takes_its_compositor_and_agrees_with_the_dense_one_across_passes(composite, monkeypatch):
    # Called directly through rasterize(composite=...), with the cameras split into one pass each
    # (a tiny pass budget) and in one pass: both agree with the dense compositor.
    g = scene(2, 150, scale=0.04, seed=21)
    labels = camera.sample_gaussian_poses(6, generator=torch.Generator().manual_seed(21), dtype=F64).reshape(2, 3, 25)
    cams = Cameras.from_labels(labels)
    W, H = 30, 26
    p = project(g, camera.view_matrix(cams.cam2world), camera.pixel_intrinsics(cams.intrinsics, W, H), W, H)
    bg = torch.rand(6, 3, generator=torch.Generator().manual_seed(22), dtype=F64)
    ref = rasterize(p, bg, W, H, composite=composite_dense)
    assert ref[1].max() > 0.9 and ref[1].std() > 0.05
    calls = []

    def counted(p, features, width, height):  # records the cameras of each pass
        calls.append(p.depths.shape[0])
        return composite(p, features, width, height)

    one_pass = rasterize(p, bg, W, H, composite=counted)
    monkeypatch.setattr(rasterize_module, "MAX_PAIRS_PER_PASS", 1)
    per_camera = rasterize(p, bg, W, H, composite=counted)
    assert calls == [6] + [1] * 6
    for got in (one_pass, per_camera):
        for a, b, tol in zip(got, ref, (1e-10, 1e-10, 1e-8)):
            torch.testing.assert_close(a, b, atol=tol, rtol=0)


@pytest.mark.parametrize("backend", [RenderBackend.torch, Oracle.dense])
def test_the_device_agnostic_backends_keep_every_tensor_on_the_device_of_their_input(backend):
    """The torch backend is the one that runs on any device (CUDA without gsplat included), and the
    dense oracle checks it there. A tensor either makes without naming the input's device lands on
    the default device: under a `meta` default device, any such tensor meets the CPU inputs and the
    render fails, forward or backward."""
    from cgsgan.render.backends import Views

    g = scene(1, 120, scale=0.04, seed=5)
    g.means.requires_grad_(True)
    labels = camera.sample_gaussian_poses(2, generator=torch.Generator().manual_seed(5), dtype=F64).reshape(1, 2, 25)
    cams = Cameras.from_labels(labels)
    views = Views(viewmats=camera.view_matrix(cams.cam2world), Ks=camera.pixel_intrinsics(cams.intrinsics, 24, 20),
                  width=24, height=20, backgrounds=torch.ones(1, 2, 3, dtype=F64))
    with torch.device("meta"):
        colors, alphas, depths = BACKENDS[backend].render(g, views)
        (colors.sum() + alphas.sum() + depths.sum()).backward()
    assert colors.device == CPU and colors.shape == (1, 2, 20, 24, 3) and alphas.sum() > 0
    assert g.means.grad is not None and g.means.grad.device == CPU and g.means.grad.abs().sum() > 0


def test_gsplat_without_its_compiled_kernels_cannot_run_and_says_what_to_install(monkeypatch):
    """`import gsplat` succeeds without the kernels; the first render would die on `_C` None."""
    gsplat_without_kernels(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match=r"'gsplat' cannot run: .*compiled CUDA kernels.*nvcc.*infra/docker/Dockerfile"):
        resolve_backend("gsplat", torch.device("cuda", 0))
    assert resolve_backend(RenderBackend.auto, torch.device("cuda", 0)) is RenderBackend.torch
