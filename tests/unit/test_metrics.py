"""Distances (FD against its closed form, KID) and the 3D-consistency metrics on generators whose
answer is known: the camera-free Generator (exactly consistent), the g_conditioned one, and a toy
theta(z) + eps * f(c) whose inconsistency grows with eps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cgsgan import camera, config
from cgsgan.gaussians import Gaussians, rgb_to_sh0
from cgsgan.generator import Generator
from cgsgan.metrics.consistency import (
    PSNR_CAP,
    conditioning_psnr,
    conditioning_sensitivity,
    depth_consistency,
    reprojection_error,
)
from cgsgan.metrics.frechet import frechet_distance
from cgsgan.metrics.kid import kid, kid_subsets
from cgsgan.metrics.random_features import RandomFeatures
from cgsgan.metrics.sampling import as_generator, generated_features
from cgsgan.render import render


# ------------------------------------------------------------------------------ Frechet distance
def test_frechet_distance_matches_closed_form_for_commuting_covariances():
    # C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T commute, so tr((C1 C2)^1/2) = sum sqrt(a b) exactly.
    rng = np.random.default_rng(0)
    d = 16
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))  # = |dmu|^2 + sum (sqrt a - sqrt b)^2
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_1d_gaussians_is_the_w2_distance():
    # 1D: FD = (m1 - m2)^2 + (s1 - s2)^2.
    fd = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[0.25]]))
    assert fd == pytest.approx(9.0 + (2.0 - 0.5) ** 2)


def test_frechet_distance_non_commuting_matches_eigen_formula():
    # Independent check through eigenvalues of C1 C2 (real, non-negative for PSD C1, C2).
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    c1, c2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
    mu = np.zeros(8)
    tr_sqrt = np.sqrt(np.linalg.eigvals(c1 @ c2).real.clip(0)).sum()
    assert frechet_distance(mu, c1, mu, c2) == pytest.approx(np.trace(c1 + c2) - 2 * tr_sqrt, rel=1e-8)


# ------------------------------------------------------------------------------ KID
def test_kid_near_zero_for_one_distribution_and_positive_when_shifted():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 32, generator=g), torch.randn(2000, 32, generator=g)
    same = kid(x, y, num_subsets=50, subset_size=500).mean
    shifted = kid(x, y + 0.5, num_subsets=50, subset_size=500).mean
    more = kid(x, y + 1.0, num_subsets=50, subset_size=500).mean
    assert abs(same) < 5e-3  # unbiased: scatters around 0 (may be slightly negative)
    assert shifted > 20 * max(abs(same), 1e-4)
    assert more > shifted


def test_kid_is_unbiased_mean_over_seeds_straddles_zero():
    g = torch.Generator().manual_seed(1)
    vals = [kid(torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g), num_subsets=5,
                subset_size=100, seed=s).mean for s in range(20)]
    assert min(vals) < 0 < max(vals)  # a biased (V-statistic) estimator would be > 0 every time
    assert abs(np.mean(vals)) < 3 * np.std(vals) / math.sqrt(len(vals)) + 1e-4


def test_kid_spread_is_the_std_over_subsets_and_shrinks_with_the_subset_size():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g) + 0.3
    small, large = kid(x, y, num_subsets=40, subset_size=50), kid(x, y, num_subsets=40, subset_size=400)
    assert small.std == pytest.approx(float(kid_subsets(x, y, num_subsets=40, subset_size=50).std()))
    assert small.std > 0 and large.std < small.std / 2  # an estimate over 8x the pairs scatters less
    assert abs(large.mean - small.mean) < 3 * small.std  # both estimate the same (unbiased) MMD^2


def test_kid_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="widths"):
        kid(torch.randn(10, 4), torch.randn(10, 5))


# ------------------------------------------------------------------------------ generators
def perturbed_generator(camera_conditioned: bool) -> Generator:
    # At init the zero-initialised layer scales make the output ignore w; perturb first.
    torch.manual_seed(3)
    cfg = config.tiny()
    G = Generator(cfg.model.generator, cfg.model.resolution, camera_conditioned=camera_conditioned).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return G


POSES = camera.sample_gaussian_poses(64, generator=torch.Generator().manual_seed(7))


class ToyGenerator:
    """theta(z) + eps * f(c): an opaque head-sized ellipsoid shell whose colours and size depend on z.

    eps moves the shell up and back in proportion to the conditioning camera's yaw (and tints it),
    so eps = 0 is perfectly 3D-consistent and larger eps is less so.
    """

    z_dim = 4

    def __init__(self, eps: float, n: int = 6000) -> None:
        g = torch.Generator().manual_seed(0)
        self.eps = eps
        self.dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
        self.colour = torch.rand(n, 3, generator=g) * 0.6 + 0.2

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> Gaussians:
        B, n = len(z), len(self.dirs)
        yaw, pitch = camera.yaw_pitch(c)
        size = 1 + 0.1 * torch.tanh(z[:, :1])  # [B, 1]
        means = self.dirs * torch.tensor([0.16, 0.2, 0.17]) * size[:, None] + torch.tensor(camera.LOOKAT)
        shift = torch.stack([torch.zeros_like(yaw), yaw, yaw], -1)  # f(c) [B, 3]: up and back with the yaw
        means = means + self.eps * shift[:, None]
        rgb = (self.colour + 0.2 * torch.tanh(z[:, 1:4])[:, None] + self.eps * yaw[:, None, None]).clamp(0, 1)
        return Gaussians(
            means=means,
            log_scales=torch.full((B, n, 3), math.log(0.012)),
            quats=torch.tensor([1.0, 0, 0, 0]).expand(B, n, 4),
            opacity_logits=torch.full((B, n), 5.0),
            sh0=rgb_to_sh0(rgb),
        )


def test_sensitivity_exactly_zero_for_camera_free_and_positive_for_g_conditioned():
    free = conditioning_sensitivity(as_generator(perturbed_generator(False)), POSES, num_z=3, num_cams=3)
    assert free["sensitivity"] == 0.0
    assert all(v == 0.0 for v in free.values())
    cond = conditioning_sensitivity(as_generator(perturbed_generator(True)), POSES, num_z=3, num_cams=3)
    assert cond["sensitivity"] > 0
    assert cond["sensitivity/means"] > 0


def test_camera_free_generator_renders_identical_fid3d_images_and_capped_psnr():
    gen = as_generator(perturbed_generator(False))
    feats = RandomFeatures(dim=8, size=32)
    own = generated_features(gen, feats, POSES, 6, 32, condition="own", batch_size=3, backend="torch")
    front = generated_features(gen, feats, POSES, 6, 32, condition="frontal", batch_size=3, backend="torch")
    assert torch.equal(own, front)  # FID3D == FID by construction: the very same images
    assert conditioning_psnr(gen, POSES, 32, num=3, batch_size=3, backend="torch") == PSNR_CAP


def test_g_conditioned_generator_changes_with_frontal_conditioning():
    gen = as_generator(perturbed_generator(True))
    assert conditioning_psnr(gen, POSES, 32, num=3, batch_size=3, backend="torch") < PSNR_CAP


def test_every_3d_metric_moves_monotonically_with_eps_on_the_toy_generator():
    eps_values = [0.0, 0.03, 0.1, 0.3]
    sens, psnrs, depth = [], [], []
    for eps in eps_values:
        toy = ToyGenerator(eps)
        sens.append(conditioning_sensitivity(toy, POSES, num_z=4, num_cams=4)["sensitivity"])
        psnrs.append(conditioning_psnr(toy, POSES, 32, num=8, batch_size=8, backend="torch"))
        d = depth_consistency(toy, POSES, 32, num=8, batch_size=8, backend="torch")
        depth.append(d["depth_consistency"])
        assert d["depth_consistency/valid_fraction"] > 0.3
    assert sens[0] == 0.0 and psnrs[0] == PSNR_CAP
    assert all(a < b for a, b in zip(sens, sens[1:])), sens
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert all(a < b for a, b in zip(depth, depth[1:])), depth
    assert depth[0] < 0.02  # consistent geometry: only the occlusion/discretisation floor


def test_reprojection_error_of_a_consistent_head_is_small_and_of_a_moved_one_is_not():
    toy = ToyGenerator(0.0)
    z = torch.zeros(1, 4)
    ca = camera.make_label(camera.pose_from_angles(torch.tensor([-0.1]), torch.tensor([0.0])), camera.intrinsics())
    cb = camera.make_label(camera.pose_from_angles(torch.tensor([0.25]), torch.tensor([0.05])), camera.intrinsics())
    g = toy(z, ca)
    ra, rb = render(g, ca, 48, backend="torch"), render(g, cb, 48, backend="torch")
    err, valid = reprojection_error(ra.depth, ra.alpha, ca, rb.depth, rb.alpha, cb)
    assert valid.sum() > 200
    assert float(err[valid].median()) < 0.01  # the same surface, seen twice
    moved = g.map(lambda t: t)
    moved.means = g.means + torch.tensor([0.0, 0.0, 0.1])  # pushed 0.1 back along the axis
    rb2 = render(moved, cb, 48, backend="torch")
    err2, valid2 = reprojection_error(ra.depth, ra.alpha, ca, rb2.depth, rb2.alpha, cb)
    assert float(err2[valid2].median()) > 0.05
