"""CGS-GAN losses, as the reference computes them (training/loss.py):

    G:    non-saturating loss of every head rendered from V cameras, view v weighted 1/V
          (gradient averaging), + knn_weight * kNN compactness + center_weight * centre, both
          on the level-0 anchors
    D:    softplus(D(fake)) and softplus(-D(real)), each followed by its own gradient clip
    R1:   lazy, its own step: gamma / 2 * ||dD/dx||^2 at the reals as D sees them, x interval

Every D input passes the fading blur (`image_ops.blur`), reals and fakes alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cgsgan.config import REFERENCE_BATCH, LossConfig
from cgsgan.discriminator import Discriminator
from cgsgan.generator import Generator, GeneratorOutput
from cgsgan.image_ops import blur
from cgsgan.render import render


def view_cameras(labels: torch.Tensor, num_views: int) -> torch.Tensor:
    """labels [B, 25] -> [B, V, 25]: view v of head b uses the label of sample (b - v - 1) mod B.

    The reference rolls the batch's labels by one before each of the V renders, so every head
    is seen from other samples' poses, drawn from the data's pose distribution.
    """
    return torch.stack([labels.roll(v + 1, dims=0) for v in range(num_views)], dim=1)


def blur_sigma(cur_nimg: int, cfg: LossConfig, batch_size: int) -> float:
    """Blur of D's inputs: blur_sigma fading linearly to 0 over blur_fade_kimg * batch / 32 thousand images."""
    fade_kimg = cfg.blur_fade_kimg * batch_size / REFERENCE_BATCH
    if fade_kimg <= 0:
        return 0.0
    return max(0.0, 1.0 - cur_nimg / (fade_kimg * 1e3)) * cfg.blur_sigma


def knn_compactness(points: torch.Tensor, k: int) -> torch.Tensor:
    """points [B, P, 3] -> mean over heads, points, their k nearest neighbours (the point itself
    excluded) and x, y, z of the squared coordinate difference (the reference's knn_distance)."""
    d = torch.cdist(points, points)  # [B, P, P]; only the ranking is used
    idx = d.topk(k + 1, dim=-1, largest=False).indices[..., 1:]  # [B, P, k]: nearest first, self dropped
    B, P, _ = points.shape
    neighbours = torch.gather(points[:, None].expand(B, P, P, 3), 2, idx[..., None].expand(B, P, k, 3))
    return (points[:, :, None] - neighbours).square().mean()


def centre_loss(points: torch.Tensor) -> torch.Tensor:
    """points [B, P, 3] -> mean over heads and x, y, z of the squared centroid."""
    return points.mean(dim=1).square().mean()


@dataclass
class GeneratorLoss:
    total: torch.Tensor  # what gets back-propagated
    adversarial: torch.Tensor
    knn: torch.Tensor
    centre: torch.Tensor
    per_view: torch.Tensor  # [V] adversarial loss of each view (mean over heads)
    logits: torch.Tensor  # [B * V] head-major
    images: torch.Tensor  # [B, V, 3, H, W]


def generator_loss(
    G: Generator,
    D: Discriminator,
    z: torch.Tensor,
    cams: torch.Tensor,
    backgrounds: torch.Tensor,
    cfg: LossConfig,
    *,
    resolution: int,
    blur_px: float = 0.0,
    backend: str = "auto",
) -> GeneratorLoss:
    """The multi-view generator step: Gaussians generated once per head (z [B, z_dim]), rendered
    from each of its V cameras (cams [B, V, 25], backgrounds [B, V, 3]).

    With grad_averaging each view's adversarial loss is weighted 1/V, so every view contributes
    1/V of the gradient; without, 1. The B * V renders go through D in one call, head-major:
    with D's strided minibatch-std groups, each group then holds one view of distinct heads,
    exactly the groups of the reference's V separate calls.
    """
    B, V = cams.shape[:2]
    out: GeneratorOutput = G(z, cams[:, 0])
    images = render(out.gaussians, cams, resolution, backgrounds, backend=backend).image  # [B, V, 3, H, W]
    logits = D(blur(images.flatten(0, 1), blur_px), cams.reshape(B * V, -1), mbstd_group=B)
    per_view = F.softplus(-logits).reshape(B, V).mean(dim=0)  # [V]
    adversarial = per_view.sum() / V if cfg.grad_averaging else per_view.sum()
    anchors = out.anchors.means
    knn = knn_compactness(anchors, cfg.knn_k) if cfg.knn_weight > 0 else anchors.new_zeros(())
    centre = centre_loss(anchors) if cfg.center_weight > 0 else anchors.new_zeros(())
    total = adversarial + cfg.knn_weight * knn + cfg.center_weight * centre
    return GeneratorLoss(total=total, adversarial=adversarial, knn=knn, centre=centre, per_view=per_view, logits=logits,
                         images=images)


def discriminator_fake_loss(D: Discriminator, fakes: torch.Tensor, labels: torch.Tensor, blur_px: float = 0.0):
    """(mean softplus(D(fake)), logits [N]) for fakes [N, 3, H, W] rendered from labels [N, 25]."""
    logits = D(blur(fakes.detach(), blur_px), labels)
    return F.softplus(logits).mean(), logits


def discriminator_real_loss(D: Discriminator, reals: torch.Tensor, labels: torch.Tensor, blur_px: float = 0.0):
    """(mean softplus(-D(real)), logits [N]) for reals [N, 3, H, W] with their labels [N, 25]."""
    logits = D(blur(reals, blur_px), labels)
    return F.softplus(-logits).mean(), logits


def r1_loss(D: Discriminator, reals: torch.Tensor, labels: torch.Tensor, cfg: LossConfig, blur_px: float = 0.0):
    """The lazy R1 step's loss: mean of gamma / 2 * ||dD/dx||^2 times r1_interval, and the
    penalty ||dD/dx||^2 per image [N].

    x is the real image as D sees it: after the blur while it fades (the reference differentiates
    `real_img_tmp['image']`, which its run_D has replaced by the blurred image).
    """
    x = blur(reals.detach(), blur_px).detach().requires_grad_(True)
    logits = D(x, labels)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = grad.square().sum(dim=(1, 2, 3))
    return (penalty * (cfg.r1_gamma / 2)).mean() * cfg.r1_interval, penalty
