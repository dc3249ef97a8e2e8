"""CGS-GAN losses: non-saturating GAN loss with multi-view gradient averaging, lazy R1, anchor
regularisers, the fading blur, and the ordering of discriminator batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cgsgan.discriminator import Discriminator
from cgsgan.generator import Generator, GeneratorOutput
from cgsgan.render import render


def view_cameras(labels: torch.Tensor, num_views: int) -> torch.Tensor:
    """labels [B, 25] -> [B, V, 25]: view v of head b uses the label of sample (b - v) mod B.

    Rolling the batch's labels (as the reference does) shows every head from other samples'
    poses, drawn from the data's pose distribution.
    """
    return torch.stack([labels.roll(v, dims=0) for v in range(num_views)], dim=1)


def discriminator_order(num_heads: int, num_views: int) -> torch.Tensor:
    """Permutation of head-major renders (index b * V + v) into view-major order (v * B + b).

    Minibatch-std groups are runs of consecutive samples; in view-major order a run of up to
    num_heads samples holds distinct heads, so no group sees two renders of one head as long as
    the group size divides num_heads.
    """
    return torch.arange(num_heads * num_views).reshape(num_heads, num_views).t().reshape(-1)


def check_group_size(num_heads: int, group: int) -> None:
    g = min(group, num_heads)
    if num_heads % g:
        raise ValueError(
            f"per-worker batch {num_heads} is not divisible by the minibatch-std group {g}: "
            "groups would mix renders of one head"
        )


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur [N, C, H, W] with std `sigma` pixels (identity when sigma <= 0)."""
    if sigma <= 0:
        return images
    radius = max(1, int(math.ceil(sigma * 3)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    C = images.shape[1]
    pad = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(pad, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def blur_sigma(cur_nimg: int, sigma: float, fade_kimg: float) -> float:
    """Blur of reals and fakes fading linearly to 0 over the first `fade_kimg` thousand images."""
    if fade_kimg <= 0:
        return 0.0
    return max(0.0, 1.0 - cur_nimg / (fade_kimg * 1e3)) * sigma


def knn_compactness(points: torch.Tensor, k: int) -> torch.Tensor:
    """Mean distance of each point [B, P, 3] to its k nearest neighbours (keeps anchors together)."""
    d = torch.cdist(points, points)  # [B, P, P]
    knn = d.topk(k + 1, dim=-1, largest=False).values[..., 1:]  # drop the point itself
    return knn.mean()


def centre_loss(points: torch.Tensor) -> torch.Tensor:
    """Squared distance of the anchors' centroid from the origin, averaged over heads."""
    return points.mean(dim=1).square().sum(-1).mean()


@dataclass
class GeneratorStep:
    loss: torch.Tensor  # total, what gets back-propagated
    adversarial: torch.Tensor
    knn: torch.Tensor
    centre: torch.Tensor
    per_view: torch.Tensor  # [V] adversarial loss of each view (mean over heads)
    images: torch.Tensor  # [B, V, 3, H, W]


def multiview_generator_loss(
    G: Generator,
    D: Discriminator,
    z: torch.Tensor,
    cams: torch.Tensor,
    backgrounds: torch.Tensor,
    *,
    grad_averaging: bool,
    resolution: int,
    blur_px: float = 0.0,
    knn_k: int = 0,
    knn_weight: float = 0.0,
    centre_weight: float = 0.0,
    backend: str = "auto",
    update_w_avg: bool = False,
) -> GeneratorStep:
    """The multi-view generator step.

    Gaussians are generated once per head and rendered from each of its V cameras
    (cams [B, V, 25], backgrounds [B, V, 3]). Each view's adversarial loss is weighted 1/V with
    gradient averaging on (every view contributes 1/V of the gradient), 1 with it off.
    """
    B, V = cams.shape[:2]
    out: GeneratorOutput = G(z, cams[:, 0], update_w_avg=update_w_avg)
    images = render(out.gaussians, cams, resolution, backgrounds, backend=backend).image  # [B, V, 3, H, W]
    order = discriminator_order(B, V)
    flat = blur(images.reshape(B * V, *images.shape[2:])[order], blur_px)
    logits = D(flat, cams.reshape(B * V, -1)[order])  # view-major: [V * B]
    per_view = F.softplus(-logits).reshape(V, B).mean(dim=1)  # [V]
    weight = 1.0 / V if grad_averaging else 1.0
    adversarial = (per_view * weight).sum()
    knn = knn_compactness(out.anchors.means, knn_k) if knn_weight > 0 else adversarial.new_zeros(())
    centre = centre_loss(out.anchors.means) if centre_weight > 0 else adversarial.new_zeros(())
    loss = adversarial + knn_weight * knn + centre_weight * centre
    return GeneratorStep(loss=loss, adversarial=adversarial, knn=knn, centre=centre, per_view=per_view, images=images)


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def r1_penalty(D: Discriminator, reals: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, ||dD/dx||^2 per image [N]) for reals; the caller weights by gamma / 2 * interval."""
    reals = reals.detach().requires_grad_(True)
    logits = D(reals, labels)
    (grad,) = torch.autograd.grad(logits.sum(), reals, create_graph=True)
    return logits, grad.square().sum(dim=(1, 2, 3))
