import math

import pytest
import torch

import cgsgan.losses as losses
from cgsgan import camera, config
from cgsgan.discriminator import Discriminator, minibatch_std
from cgsgan.generator import Generator
from cgsgan.image_ops import blur


def tiny_models(group=2, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = config.tiny()
    cfg.model.resolution = 32
    cfg.model.discriminator.mbstd_group = group
    cfg.model.discriminator.num_fp16_res = 0  # float64 end to end
    G = Generator(cfg.model.generator, 32).to(dtype)
    D = Discriminator(cfg.model.discriminator, 32).to(dtype)
    # Larger Gaussians than at init so that renders (and gradients) are not nearly empty.
    with torch.no_grad():
        for h in G.anchor_heads[0].heads["scale"], G.gaussian_heads[0].heads["scale"]:
            h.bias.add_(3.0)
    return G, D, cfg.loss


def generator_grads(G, D, z, cams, bg, loss_cfg):
    G.zero_grad(set_to_none=True)
    step = losses.generator_loss(G, D, z, cams, bg, loss_cfg, resolution=32, backend="torch")
    step.total.backward()
    return torch.cat([p.grad.flatten() for p in G.parameters() if p.grad is not None])


@pytest.mark.parametrize("averaging", [True, False])
def test_gradient_averaging_equals_mean_of_per_view_gradients(averaging):
    G, D, lc = tiny_models()
    lc.knn_weight = lc.center_weight = 0.0  # the adversarial part alone
    lc.grad_averaging = averaging
    B, V = 4, 3
    z = torch.randn(B, G.cfg.z_dim, dtype=torch.float64)
    labels = camera.sample_gaussian_poses(B, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cams = losses.view_cameras(labels, V)
    bg = torch.rand(B, V, 3, dtype=torch.float64)
    joint = generator_grads(G, D, z, cams, bg, lc)
    single = config.LossConfig(**{**vars(lc), "grad_averaging": True})
    per_view = torch.stack([generator_grads(G, D, z, cams[:, v : v + 1], bg[:, v : v + 1], single) for v in range(V)])
    expected = per_view.mean(0) if averaging else per_view.sum(0)
    assert joint.abs().max() > 1e-8
    torch.testing.assert_close(joint, expected, atol=1e-6, rtol=1e-6)
    # And the two settings really differ by the factor V.
    other = generator_grads(G, D, z, cams, bg, config.LossConfig(**{**vars(lc), "grad_averaging": not averaging}))
    ratio = V if averaging else 1 / V
    torch.testing.assert_close(other, joint * ratio, atol=1e-6, rtol=1e-6)


def test_view_cameras_roll_the_batch_labels_as_the_reference():
    # The reference rolls the labels by one before each of the V renders: view v uses roll v + 1.
    labels = camera.sample_gaussian_poses(5, generator=torch.Generator().manual_seed(1))
    cams = losses.view_cameras(labels, 3)
    assert cams.shape == (5, 3, 25)
    torch.testing.assert_close(cams[:, 0], labels.roll(1, 0))
    torch.testing.assert_close(cams[2, 1], labels[0])
    torch.testing.assert_close(cams[0, 2], labels[2])


def minibatch_groups(n: int, group: int) -> list[set[int]]:
    """The partition minibatch_std really uses, found by probing: perturbing sample k changes the
    std channel of exactly the samples of k's group."""
    groups = []
    for k in range(n):
        x = torch.zeros(n, 2, 2, 2, dtype=torch.float64)
        x[k] = 1.0
        std = minibatch_std(x, group, 1)[:, -1, 0, 0]
        groups.append(set((std > 1e-3).nonzero().flatten().tolist()))
    return groups


def test_minibatch_std_groups_are_strided_as_stylegan2():
    groups = minibatch_groups(8, 4)
    assert groups[0] == {0, 2, 4, 6} and groups[1] == {1, 3, 5, 7}


class RecordingD(Discriminator):
    """Records the labels and the minibatch-std group of every call."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def forward(self, image, label=None, mbstd_group=None):
        self.calls.append((label.detach().clone(), mbstd_group))
        return super().forward(image, label, mbstd_group)


def heads_per_group(num_views, group, B=8):
    torch.manual_seed(0)
    cfg = config.tiny()
    cfg.model.resolution = 32
    cfg.model.discriminator.mbstd_group = group
    G = Generator(cfg.model.generator, 32)
    D = RecordingD(cfg.model.discriminator, 32)
    labels = camera.sample_gaussian_poses(B, generator=torch.Generator().manual_seed(2))
    cams = losses.view_cameras(labels, num_views).clone()
    # Rolled labels repeat across views: tag each (head, view) in an intrinsics entry the
    # renderer never reads (row 3 of K), so every render can be traced back to its head.
    cams[..., 23] = torch.arange(B * num_views, dtype=cams.dtype).reshape(B, num_views) * 1e-3
    with torch.no_grad():
        losses.generator_loss(G, D, torch.randn(B, G.cfg.z_dim), cams, torch.ones(B, num_views, 3), cfg.loss,
                              resolution=32, backend="torch")
    seen, mbstd_group = D.calls[-1]  # [B * V, 25] in the order D received them
    flat = cams.reshape(B * num_views, 25)
    head = [int(((flat - s).abs().sum(1) == 0).nonzero()[0]) // num_views for s in seen]
    used = min(group, mbstd_group or group)
    return [[head[i] for i in sorted(g)] for g in minibatch_groups(len(head), used)]


@pytest.mark.parametrize("num_views", [1, 2, 4, 8])
@pytest.mark.parametrize("group", [2, 4, 8])
def test_every_minibatch_std_group_holds_distinct_heads(num_views, group):
    for heads in heads_per_group(num_views, group):
        assert len(set(heads)) == len(heads) == min(group, 8), f"group {heads} repeats a head"


@pytest.mark.parametrize("device_path", ["banded (CPU)", "depthwise (GPU)"])
def test_blur_is_the_reference_kernel_with_zero_padding(device_path, monkeypatch):
    from cgsgan import image_ops

    if device_path.startswith("depthwise"):  # the GPU route, run here on CPU tensors
        monkeypatch.setattr(image_ops, "_blur_banded", image_ops._blur_depthwise)
    sigma = 1.5
    radius = math.floor(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp2(-(x / sigma) ** 2)
    k = k / k.sum()
    impulse = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    impulse[0, 0, 10, 10] = 1.0
    out = blur(impulse, sigma)[0, 0]
    expected = torch.zeros(21, 21, dtype=torch.float64)
    expected[10 - radius : 11 + radius, 10 - radius : 11 + radius] = torch.outer(k, k)
    torch.testing.assert_close(out, expected)
    # Its standard deviation is 0.85 sigma (sigma / sqrt(2 ln 2)).
    std = (k * x**2).sum().sqrt()
    assert std == pytest.approx(sigma / math.sqrt(2 * math.log(2)), rel=0.02)
    # Zero padding: a constant image loses mass at the border; floor(3 sigma) = 0 is the identity.
    ones = torch.ones(1, 3, 16, 16, dtype=torch.float64)
    assert blur(ones, sigma)[0, 0, 0, 0] < 0.8 and blur(ones, sigma)[0, 0, 8, 8] == pytest.approx(1.0)
    torch.testing.assert_close(blur(ones, 0.3), ones)
    # Not square, several channels, and the same in both routes.
    img = torch.randn(2, 3, 12, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(image_ops._blur_banded(img, k), image_ops._blur_depthwise(img, k))


def test_blur_fades_over_blur_fade_kimg_scaled_by_batch_over_32():
    lc = config.LossConfig(blur_sigma=10.0, blur_fade_kimg=200.0)
    assert losses.blur_sigma(0, lc, 32) == 10.0
    assert losses.blur_sigma(100_000, lc, 32) == pytest.approx(5.0)
    assert losses.blur_sigma(25_000, lc, 8) == pytest.approx(5.0)  # batch 8: fades over 50 kimg
    assert losses.blur_sigma(50_000, lc, 8) == 0.0
    assert losses.blur_sigma(300_000, lc, 32) == 0.0


def test_knn_and_centre_losses_on_a_hand_made_point_set():
    # Points at x = 0, 1, 3, 7. k = 1: nearest squared differences 1, 1, 4, 16, averaged over
    # the 3 coordinates -> 22 / 12. k = 2: per point means 5, 2.5, 6.5, 26 -> 40 / 12.
    pts = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]]], dtype=torch.float64)
    assert losses.knn_compactness(pts, 1).item() == pytest.approx(22 / 12)
    assert losses.knn_compactness(pts, 2).item() == pytest.approx(40 / 12)
    # Centre: the squared centroid (2.75, 0, 0) averaged over x, y, z (and over heads).
    assert losses.centre_loss(pts).item() == pytest.approx(2.75**2 / 3)
    two = torch.cat([pts, pts - pts.mean(1, keepdim=True)])
    assert losses.centre_loss(two).item() == pytest.approx(2.75**2 / 6)


def test_r1_loss_is_gamma_half_squared_gradient_times_interval_at_the_blurred_reals():
    _, D, lc = tiny_models(dtype=torch.float32)
    lc.r1_gamma, lc.r1_interval = 0.7, 16
    reals = torch.rand(4, 3, 32, 32) * 2 - 1
    labels = camera.frontal_label(4)
    loss, penalty = losses.r1_loss(D, reals, labels, lc, blur_px=1.0)
    x = blur(reals, 1.0).requires_grad_(True)  # the image D sees
    (g,) = torch.autograd.grad(D(x, labels).sum(), x)
    torch.testing.assert_close(penalty, g.square().sum(dim=(1, 2, 3)))
    torch.testing.assert_close(loss, (penalty * 0.35).mean() * 16)
