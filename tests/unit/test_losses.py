import pytest
import torch

import cgsgan.losses as losses
from cgsgan import camera, config
from cgsgan.discriminator import Discriminator, MinibatchStd
from cgsgan.generator import Generator


def tiny_models(group=2, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = config.tiny()
    cfg.model.resolution = 16
    cfg.model.discriminator.mbstd_group = group
    G = Generator(cfg.model.generator, 16).to(dtype)
    D = Discriminator(cfg.model.discriminator, 16).to(dtype)
    # Larger Gaussians than at init so that renders (and gradients) are not nearly empty.
    with torch.no_grad():
        for h in G.anchor_heads[0].heads["scale"], G.gaussian_heads[0].heads["scale"]:
            h.bias.add_(3.0)
    return G, D


def generator_grads(G, D, z, cams, bg, averaging):
    G.zero_grad(set_to_none=True)
    step = losses.multiview_generator_loss(G, D, z, cams, bg, grad_averaging=averaging, resolution=16, backend="torch")
    step.loss.backward()
    return torch.cat([p.grad.flatten() for p in G.parameters() if p.grad is not None])


@pytest.mark.parametrize("averaging", [True, False])
def test_gradient_averaging_equals_mean_of_per_view_gradients(averaging):
    G, D = tiny_models()
    B, V = 4, 3
    z = torch.randn(B, G.cfg.z_dim, dtype=torch.float64)
    labels = camera.sample_gaussian_poses(B, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cams = losses.view_cameras(labels, V)
    bg = torch.rand(B, V, 3, dtype=torch.float64)
    joint = generator_grads(G, D, z, cams, bg, averaging)
    per_view = torch.stack([generator_grads(G, D, z, cams[:, v : v + 1], bg[:, v : v + 1], True) for v in range(V)])
    expected = per_view.mean(0) if averaging else per_view.sum(0)
    assert joint.abs().max() > 1e-8
    torch.testing.assert_close(joint, expected, atol=1e-6, rtol=1e-6)
    # And the two settings really differ by the factor V.
    other = generator_grads(G, D, z, cams, bg, not averaging)
    ratio = V if averaging else 1 / V
    torch.testing.assert_close(other, joint * ratio, atol=1e-6, rtol=1e-6)


def test_view_cameras_roll_the_batch_labels():
    labels = camera.sample_gaussian_poses(5, generator=torch.Generator().manual_seed(1))
    cams = losses.view_cameras(labels, 3)
    assert cams.shape == (5, 3, 25)
    torch.testing.assert_close(cams[:, 0], labels)
    torch.testing.assert_close(cams[2, 1], labels[1])
    torch.testing.assert_close(cams[0, 2], labels[3])


class RecordingD(Discriminator):
    """Records which head each image passed to minibatch std came from."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen_labels = []

    def forward(self, image, label=None):
        self.seen_labels.append(label.detach().clone())
        return super().forward(image, label)


def heads_in_groups(num_views, group, order_fn=None, B=8):
    torch.manual_seed(0)
    cfg = config.tiny()
    cfg.model.discriminator.mbstd_group = group
    G = Generator(cfg.model.generator, 16)
    D = RecordingD(cfg.model.discriminator, 16)
    labels = camera.sample_gaussian_poses(B, generator=torch.Generator().manual_seed(2))
    cams = losses.view_cameras(labels, num_views).clone()
    # Rolled labels repeat across views: tag each (head, view) in an intrinsics entry the
    # renderer never reads (row 3 of K), so every render can be traced back to its head.
    cams[..., 23] = torch.arange(B * num_views, dtype=cams.dtype).reshape(B, num_views) * 1e-3
    with torch.no_grad():
        losses.multiview_generator_loss(G, D, torch.randn(B, G.cfg.z_dim), cams, torch.ones(B, num_views, 3),
                                        grad_averaging=True, resolution=16, backend="torch")
    seen = D.seen_labels[-1]  # [B * V, 25] in the order D received them
    flat = cams.reshape(B * num_views, 25)
    head = torch.tensor([int(((flat - s).abs().sum(1) == 0).nonzero()[0]) // num_views for s in seen])
    g = MinibatchStd(group, 1).group_size(len(head))
    return head.reshape(-1, g)


@pytest.mark.parametrize("num_views", [1, 2, 4, 8])
@pytest.mark.parametrize("group", [2, 4])
def test_every_minibatch_std_group_holds_distinct_heads(num_views, group):
    groups = heads_in_groups(num_views, group)
    for row in groups:
        assert len(set(row.tolist())) == len(row), f"group {row.tolist()} repeats a head"


def test_naively_stacked_views_would_fail_the_check(monkeypatch):
    monkeypatch.setattr(losses, "discriminator_order", lambda B, V: torch.arange(B * V))  # head-major
    groups = heads_in_groups(4, 4)
    assert any(len(set(r.tolist())) < len(r) for r in groups)


def test_group_size_must_divide_the_per_worker_batch():
    with pytest.raises(ValueError, match="minibatch-std"):
        losses.check_group_size(6, 4)
    losses.check_group_size(8, 4)
    losses.check_group_size(2, 4)  # group shrinks to the batch


def test_blur_fades_and_preserves_mean():
    assert losses.blur_sigma(0, 10.0, 200) == 10.0
    assert losses.blur_sigma(100_000, 10.0, 200) == 5.0
    assert losses.blur_sigma(300_000, 10.0, 200) == 0.0
    x = torch.rand(2, 3, 16, 16)
    y = losses.blur(x, 2.0)
    assert y.shape == x.shape and y.std() < x.std()
    torch.testing.assert_close(losses.blur(x, 0.0), x)


def test_knn_and_centre_losses():
    pts = torch.randn(2, 32, 3)
    spread = losses.knn_compactness(pts * 2, 4)
    torch.testing.assert_close(spread, 2 * losses.knn_compactness(pts, 4))
    shifted = pts - pts.mean(1, keepdim=True)
    assert losses.centre_loss(shifted) < 1e-10
    assert losses.centre_loss(shifted + torch.tensor([0.1, 0, 0])) == pytest.approx(0.01, rel=1e-4)


def test_r1_penalty_matches_autograd():
    _, D = tiny_models(dtype=torch.float32)
    reals = torch.randn(4, 3, 16, 16)
    labels = camera.frontal_label(4)
    _, r1 = losses.r1_penalty(D, reals, labels)
    x = reals.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x, labels).sum(), x)
    torch.testing.assert_close(r1, g.square().sum(dim=(1, 2, 3)))
