import math

import pytest
import torch

from cgsgan import camera, config
from cgsgan.config import UPSAMPLE_STEPS, CameraMode
from cgsgan.generator import RENDER_BOX, Generator, PositionalEncoding
from cgsgan.models import build_generator, build_models

# Values of the authors' code (fraunhoferhhi/cgs-gan, the 512 config): parameter counts of
# CGSGenerator and of the discriminator without its discarded 8x8 pose block, and the mean
# log-scale of each level's Gaussians at initialisation.
REFERENCE_G_PARAMS_512 = 61_610_712
REFERENCE_D_LIVE_PARAMS_512 = 31_359_552
REFERENCE_LEVEL_LOG_SCALES_512 = (-7.47, -7.45, -8.23, -8.91, -9.43, -9.82)


def tiny_generator(camera_conditioned=False, seed=0) -> Generator:
    torch.manual_seed(seed)
    cfg = config.tiny()
    return Generator(cfg.model.generator, cfg.model.resolution, camera_conditioned=camera_conditioned)


def perturbed_generator(camera_conditioned: bool = False) -> Generator:
    # Move away from the initialisation so the hierarchy is exercised with non-trivial outputs.
    G = tiny_generator(camera_conditioned=camera_conditioned, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return G


def test_reference_parameter_counts_at_512():
    with torch.device("meta"):
        G, D = build_models(config.ffhq(512).model)
    assert sum(p.numel() for p in G.parameters()) == REFERENCE_G_PARAMS_512
    assert sum(p.numel() for p in D.parameters()) == REFERENCE_D_LIVE_PARAMS_512


def test_mean_log_scale_per_level_at_init_matches_the_reference_at_512():
    torch.manual_seed(0)
    G = build_generator(config.ffhq(512).model)
    with torch.no_grad():
        out = G(torch.randn(2, 512, generator=torch.Generator().manual_seed(0)))
    got = [level.log_scales.mean().item() for level in out.levels]
    assert len(got) == len(REFERENCE_LEVEL_LOG_SCALES_512)
    for level, (a, b) in enumerate(zip(got, REFERENCE_LEVEL_LOG_SCALES_512)):
        assert abs(a - b) < 0.15, f"level {level}: {a:.3f} vs reference {b}"


def test_scale_split_follows_the_reference_formula():
    # Threshold 0.5 / resolution, log2(resolution) - 4 splits from log(0.5 / sqrt(points)).
    with torch.device("meta"):
        G = Generator(config.ffhq(512).model.generator, 512)
    assert G.split_min_scale == pytest.approx(0.5 / 512)
    assert G.split_ratio == pytest.approx(1.866, abs=1e-3)
    assert G.scale_threshold == pytest.approx(math.log(0.5 / math.sqrt(512)))


@pytest.mark.parametrize("res,count", [(256, 109_056), (512, 240_128), (1024, 502_272), (2048, 1_026_560)])
def test_reference_gaussian_counts(res, count):
    cfg = config.ffhq(res)
    assert config.num_gaussians(cfg.model.generator) == count
    with torch.device("meta"):
        G = Generator(cfg.model.generator, res)
    assert sum(u.ratio * G.cfg.num_points for u in G.upsample) == count


def test_tiny_generator_gaussian_count_and_shapes():
    G = tiny_generator()
    out = G(torch.randn(3, G.cfg.z_dim))
    assert out.gaussians.num_gaussians == config.num_gaussians(G.cfg) == 128 + 512 + 2048
    assert out.anchors.means.shape == (3, 128, 3)
    assert len(out.anchor_levels) == G.cfg.num_levels - 1


def test_initial_points_have_the_reference_radius():
    # Gaussian noise scaled to unit RMS over x, y, z, times 0.3, before the tanh.
    torch.manual_seed(0)
    G = Generator(config.ffhq(512).model.generator, 512)
    rms = G.points.detach().square().mean(1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 0.3), atol=1e-4, rtol=0)  # eps 1e-8 under the rsqrt
    assert G.points.detach().norm(dim=1).mean() == pytest.approx(0.3 * math.sqrt(3), rel=1e-4)


def test_fourier_features_start_uniform_in_sqrt3():
    enc = PositionalEncoding(512, 512)
    w = enc.fourier.weight.detach()
    assert w.abs().max() <= math.sqrt(3) and w.abs().max() > 0.95 * math.sqrt(3)


def test_reference_table_read_is_a_constant_scaled_by_distance_from_the_centre():
    torch.manual_seed(0)
    enc = PositionalEncoding(8, 16, lookup="reference")
    pos = torch.rand(50, 3) * 2 - 1
    table = enc(pos)[:, 4:]  # the table half
    middle = enc.table.detach()[:, :, 0, 7:9].mean(-1)  # [3, C]: the two middle columns
    expected = ((1 - pos.abs() / 2)[:, :, None] * middle[None]).sum(1) / math.sqrt(3)
    torch.testing.assert_close(table, expected, atol=1e-6, rtol=1e-5)


def test_positional_table_read_interpolates_along_the_table():
    torch.manual_seed(0)
    enc = PositionalEncoding(8, 16, lookup="positional")
    # Coordinate of the centre of column j (align_corners=False): (2 j + 1) / 16 - 1.
    j = torch.tensor([0, 5, 15])
    pos = ((2 * j + 1) / 16 - 1).float()[:, None].expand(3, 3)
    got = enc(pos)[:, 4:]
    expected = enc.table.detach()[:, :, 0, :].index_select(2, j).sum(0).t() / math.sqrt(3)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    reference = PositionalEncoding(8, 16, lookup="reference")
    reference.load_state_dict(enc.state_dict())
    assert not torch.allclose(reference(pos)[:, 4:], got)


def test_same_z_gives_bit_identical_gaussians_whatever_the_camera():
    # Perturbed away from init: at init the zero layer scales make the output ignore w entirely.
    G = perturbed_generator()
    z = torch.randn(2, G.cfg.z_dim)
    c1 = camera.sample_gaussian_poses(2, generator=torch.Generator().manual_seed(0))
    c2 = camera.sample_uniform_yaw(2, generator=torch.Generator().manual_seed(1))
    a, b, none = G(z, c1).gaussians, G(z, c2).gaussians, G(z).gaussians
    for name, t in a.tensors().items():
        assert torch.equal(t, getattr(b, name)), name
        assert torch.equal(t, getattr(none, name)), name
    assert not torch.equal(a.means[0], a.means[1])  # it does depend on z


def test_mapping_takes_a_zeroed_label_in_the_camera_free_modes():
    # The reference's mapping has the 25 -> w label embedding (fc0 takes z and the label) and
    # zeroes the label: the same architecture in every mode, checkpoints interchangeable.
    G = perturbed_generator()
    assert G.mapping.embed is not None and G.mapping.layers[0].in_features == 2 * G.cfg.w_dim
    z = torch.randn(3, G.cfg.z_dim)
    torch.testing.assert_close(G.map(z, camera.frontal_label(3)), G.mapping(z, torch.zeros(3, 25)))


def test_g_conditioned_generator_does_depend_on_the_camera():
    G = perturbed_generator(camera_conditioned=True)
    z = torch.randn(2, G.cfg.z_dim)
    c1 = camera.frontal_label(2)
    c2 = camera.sample_uniform_yaw(2, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(G(z, c1).gaussians.means, G(z, c2).gaussians.means)
    with pytest.raises(ValueError, match="camera"):
        G(z)


def test_build_models_decodes_the_camera_mode():
    for mode, g_cond, d_cam in [(CameraMode.d_projection, False, True), (CameraMode.d_none, False, False),
                                (CameraMode.g_conditioned, True, True)]:
        cfg = config.tiny()
        cfg.model.camera_mode = mode
        G, D = build_models(cfg.model)
        assert G.camera_conditioned is g_cond and (D.camera_mapping is not None) is d_cam, mode


def test_every_transformer_block_is_identity_at_init():
    G = tiny_generator()
    x = torch.randn(2, G.cfg.num_points, G.cfg.width)
    w = torch.randn(2, G.cfg.w_dim)
    for block in G.blocks:
        assert torch.equal(block(x, w), x)


def test_children_never_larger_than_parents_and_only_rendered_positions_clamped():
    # A child's log-scale is soft_clamp(parent - split - softplus(-raw)) and soft_clamp is
    # monotonic, so it never exceeds soft_clamp(parent log-scale).
    from cgsgan.generator import soft_clamp

    G = perturbed_generator()
    out = G(torch.randn(4, G.cfg.z_dim) * 3)
    anchors, levels = out.anchor_levels, out.levels
    assert torch.all(levels[0].log_scales <= soft_clamp(anchors[0].log_scales) + 1e-6)
    for i in range(1, len(levels)):
        parent = soft_clamp(anchors[i - 1].log_scales.repeat_interleave(UPSAMPLE_STEPS[i], dim=1))
        assert torch.all(levels[i].log_scales <= parent + 1e-6), f"level {i} Gaussians"
        if i < len(anchors):
            assert torch.all(anchors[i].log_scales <= parent + 1e-6), f"level {i} anchors"
    assert torch.all(anchors[0].log_scales <= G.scale_threshold + 1e-6)
    # The reference clamps only what is rendered: the anchors and per-level outputs are free.
    assert out.gaussians.means.abs().max() <= RENDER_BOX
    unclamped = torch.cat([g.means for g in levels], dim=1)
    assert unclamped.abs().max() > RENDER_BOX
    torch.testing.assert_close(out.gaussians.means, unclamped.clamp(-RENDER_BOX, RENDER_BOX))
    assert torch.isfinite(out.gaussians.means).all()


def test_soft_clamp_acts_on_the_resulting_log_scale():
    # The reference applies tanh(x / 20) * 20 to parent scale - softplus(-raw), so a very negative
    # raw offset cannot push a log-scale below -20.
    G = tiny_generator()
    with torch.no_grad():
        for heads in G.gaussian_heads:
            heads.heads["scale"].bias.fill_(-200.0)
    out = G(torch.randn(2, G.cfg.z_dim))
    assert out.gaussians.log_scales.min() >= -20.0
    assert out.gaussians.log_scales.min() < -19.0


def test_truncation_pulls_towards_w_avg():
    G = tiny_generator()
    z = torch.randn(8, G.cfg.z_dim)
    for _ in range(3):
        G.mapping.track_w_avg(G.map(z).mean(0))
    assert G.mapping.w_avg.abs().sum() > 0
    w1, w0 = G.map(z, psi=1.0), G.map(z, psi=0.0)
    torch.testing.assert_close(w0, G.mapping.w_avg.expand_as(w0))
    torch.testing.assert_close(G.map(z, psi=0.5), 0.5 * (w1 + w0))


def test_w_avg_update_is_the_reference_lerp():
    G = tiny_generator()
    before = torch.randn(G.cfg.w_dim)
    G.mapping.w_avg.copy_(before)
    mean = torch.randn(G.cfg.w_dim)
    G.mapping.track_w_avg(mean)
    torch.testing.assert_close(G.mapping.w_avg, mean + (before - mean) * G.cfg.w_avg_beta)


def test_reference_levels_per_resolution():
    assert [config.ffhq(r).model.generator.num_levels for r in (256, 512, 1024, 2048)] == [5, 6, 7, 8]
    with pytest.raises(config.ConfigError, match="model.resolution"):
        config.ffhq(300)
    assert math.prod(UPSAMPLE_STEPS) == 1024


def test_attention_matches_the_reference_head_layout():
    # The reference views the qkv projection as [B, P, heads, 3 * ch] and splits q, k, v per head,
    # with the softmax of (q k^T) / sqrt(ch).
    torch.manual_seed(0)
    G = perturbed_generator()
    block = G.blocks[0]
    x = torch.randn(2, 10, G.cfg.width)
    heads, ch = block.heads, G.cfg.width // block.heads
    qkv = block.qkv(x).view(2, 10, heads, 3 * ch)
    q, k, v = qkv.split(ch, dim=-1)
    weight = torch.softmax(torch.einsum("bthc,bshc->bhts", q, k) / math.sqrt(ch), dim=-1)
    expected = block.proj(torch.einsum("bhts,bshc->bthc", weight, v).reshape(2, 10, -1))
    torch.testing.assert_close(block.attention(x), expected, atol=1e-5, rtol=1e-5)
