import math

import pytest
import torch

from cgsgan import camera, config
from cgsgan.config import UPSAMPLE_STEPS
from cgsgan.generator import Generator


def tiny_generator(camera_conditioned=False, seed=0) -> Generator:
    torch.manual_seed(seed)
    cfg = config.tiny()
    return Generator(cfg.model.generator, cfg.model.resolution, camera_conditioned=camera_conditioned)


@pytest.mark.parametrize("res,count", [(256, 109_056), (512, 240_128), (1024, 502_272), (2048, 1_026_560)])
def test_reference_gaussian_counts(res, count):
    cfg = config.ffhq(res)
    assert config.num_gaussians(cfg.model.generator) == count
    # The model built from the config produces exactly that many (built on the meta device:
    # shapes without memory).
    with torch.device("meta"):
        G = Generator(cfg.model.generator, res)
    assert sum(u.ratio * G.cfg.num_points for u in G.upsample) == count


def test_reference_parameter_count_at_512():
    with torch.device("meta"):
        G = Generator(config.ffhq(512).model.generator, 512)
    n = sum(p.numel() for p in G.parameters())
    assert abs(n - 62e6) / 62e6 < 0.03, n


def test_tiny_generator_gaussian_count_and_shapes():
    G = tiny_generator()
    out = G(torch.randn(3, G.cfg.z_dim))
    assert out.gaussians.num_gaussians == config.num_gaussians(G.cfg) == 128 + 512 + 2048
    assert out.anchors.means.shape == (3, 128, 3)


def test_same_z_gives_bit_identical_gaussians_whatever_the_camera():
    # Perturbed away from init: at init the zero layer scales make the output ignore w entirely.
    G = perturbed_generator()
    z = torch.randn(2, G.cfg.z_dim)
    c1 = camera.sample_gaussian_poses(2, generator=torch.Generator().manual_seed(0))
    c2 = camera.sample_uniform_yaw(2, generator=torch.Generator().manual_seed(1))
    a, b = G(z, c1).gaussians, G(z, c2).gaussians
    for name, t in a.tensors().items():
        assert torch.equal(t, getattr(b, name)), name
    assert not torch.equal(a.means[0], a.means[1])  # it does depend on z


def test_g_conditioned_generator_does_depend_on_the_camera():
    G = perturbed_generator(camera_conditioned=True)
    z = torch.randn(2, G.cfg.z_dim)
    c1 = camera.frontal_label(2)
    c2 = camera.sample_uniform_yaw(2, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(G(z, c1).gaussians.means, G(z, c2).gaussians.means)
    with pytest.raises(ValueError, match="camera"):
        G(z)


def test_every_transformer_block_is_identity_at_init():
    G = tiny_generator()
    x = torch.randn(2, G.cfg.num_points, G.cfg.width)
    w = torch.randn(2, G.cfg.w_dim)
    for block in G.blocks:
        assert torch.equal(block(x, w), x)


def perturbed_generator(camera_conditioned: bool = False) -> Generator:
    # Move away from the initialisation so the hierarchy is exercised with non-trivial outputs.
    G = tiny_generator(camera_conditioned=camera_conditioned, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return G


def test_children_never_larger_than_parents_and_positions_in_box():
    G = perturbed_generator()
    out = G(torch.randn(4, G.cfg.z_dim) * 3)
    anchors, levels = out.anchor_levels, out.levels
    assert torch.all(levels[0].log_scales <= anchors[0].log_scales)
    for i in range(1, len(levels)):
        parent = anchors[i - 1].log_scales.repeat_interleave(UPSAMPLE_STEPS[i], dim=1)
        assert torch.all(levels[i].log_scales <= parent), f"level {i} Gaussians"
        if i < len(anchors):
            assert torch.all(anchors[i].log_scales <= parent), f"level {i} anchors"
    assert torch.all(anchors[0].log_scales <= G.scale_threshold + 1e-6)
    for g in levels + anchors:
        assert g.means.min() >= -0.5 and g.means.max() <= 0.5
    assert torch.isfinite(out.gaussians.means).all()


def test_truncation_pulls_towards_w_avg():
    G = tiny_generator()
    z = torch.randn(8, G.cfg.z_dim)
    for _ in range(3):
        G.map(z, update_w_avg=True)
    assert G.mapping.w_avg.abs().sum() > 0
    w1, w0 = G.map(z, psi=1.0), G.map(z, psi=0.0)
    torch.testing.assert_close(w0, G.mapping.w_avg.expand_as(w0))
    torch.testing.assert_close(G.map(z, psi=0.5), 0.5 * (w1 + w0))


def test_reference_levels_per_resolution():
    assert [config.ffhq(r).model.generator.num_levels for r in (256, 512, 1024, 2048)] == [5, 6, 7, 8]
    with pytest.raises(config.ConfigError, match="model.resolution"):
        config.ffhq(300)
    assert math.prod(UPSAMPLE_STEPS) == 1024
