"""A geometry score against the synthetic heads' exact geometry, without a feature network.

Generated heads and ground-truth heads are seen from the same fixed cameras around the head
(GEOMETRY_YAWS_DEG, pitch 0), at the resolution the generator trained at (`view_resolution`).
Each view becomes a shape descriptor on a coarse grid (GRID x GRID cells): the silhouette (alpha
coverage per cell) and the depth profile (alpha times the depth relative to the head centre, per
cell). Two sets of heads are compared by the distance between their descriptor distributions at
every yaw (a Frechet distance with diagonal covariances: per cell, the squared differences of the
means and of the standard deviations), summed over yaws.

Each part is scored on a scale fixed by two references drawn from the ground truth itself:

    score = 1 - (D(gen) - D(floor)) / (D(card) - D(floor))

D(floor): ground-truth heads of other identities (what a perfect generator reaches with this many
heads); D(card): those heads flattened into cards, their frontal silhouette as Gaussians on the
plane through the head centre facing the frontal camera. So 1 = the ground truth's geometry, 0 = a card, below 0
further from it than a card. `geometry` is the lower of the silhouette and depth scores: a card
turned to face every camera has the right silhouettes but no depth; a ball of hair has depth but
not a head's silhouettes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from cgsgan import camera
from cgsgan.metrics.sampling import GaussianGenerator, gaussians_of, render_labels

GEOMETRY_YAWS_DEG = (-90.0, -45.0, 0.0, 45.0, 90.0)
GRID = 16  # descriptor cells per side
# The views are rendered at the resolution the generator trained at, capped (the descriptors are
# 16 x 16 cells). Not lower: the rasterizer's anti-aliasing filter widens every splat by a fixed part
# of a pixel, so a head that is right at 64 px is about 0.6 px too wide at 32 px, and that alone took
# the hand-built true head from 0.97 to 0.75.
MIN_RESOLUTION, MAX_RESOLUTION = 32, 128
SUPERSAMPLE = 1  # ray-cast samples per pixel side: the 2 x 2 pooling into cells anti-aliases
DEPTH_SCALE = 0.1  # world units: relative depths in about +-0.2 weigh like coverages in 0..1


@dataclass(frozen=True)
class Descriptors:
    """Per yaw, per head: silhouette [Y, N, GRID^2] and depth profile [Y, N, GRID^2]."""

    silhouette: torch.Tensor
    depth: torch.Tensor


def plane_points(label: torch.Tensor, res: int) -> torch.Tensor:
    """Pixel centres [res * res, 3] of camera `label` [25] unprojected onto the plane through the
    head centre (the origin) facing the camera: where a card seen from that camera lies."""
    c2w, intr = camera.split_label(label[None])
    k = camera.pixel_intrinsics(intr, res, res)[0]
    v, u = torch.meshgrid(torch.arange(res) + 0.5, torch.arange(res) + 0.5, indexing="ij")
    d_cam = torch.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], torch.ones_like(u)], -1).reshape(-1, 3)
    rot, origin = c2w[0, :3, :3], c2w[0, :3, 3]
    d = d_cam @ rot.T
    forward = rot[:, 2]
    t = (-(origin @ forward)) / (d @ forward)  # plane through (0, 0, 0) with normal `forward`
    return origin + t[:, None] * d


def yaw_labels(num: int, yaw_deg: float) -> torch.Tensor:
    """num identical cameras [num, 25] at `yaw_deg`, pitch 0."""
    yaw = torch.full((num,), float(torch.deg2rad(torch.tensor(yaw_deg))))
    return camera.make_label(camera.pose_from_angles(yaw, torch.zeros(num)), camera.intrinsics(batch=num))


def centre_depth(labels: torch.Tensor) -> torch.Tensor:
    """Camera-space z [N] of the world origin (the head centre) for cameras [N, 25]."""
    c2w, _ = camera.split_label(labels.float())
    rot, t = c2w[:, :3, :3], c2w[:, :3, 3]
    return -(rot[:, :, 2] * t).sum(-1)


def describe(alpha: torch.Tensor, depth: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, depth [N, 1, H, W] seen from labels [N, 25] -> silhouette, depth profile [N, GRID^2]."""
    alpha = alpha.float().clamp(0, 1)
    rel = (depth.float() - centre_depth(labels)[:, None, None, None]) / DEPTH_SCALE
    sil = F.adaptive_avg_pool2d(alpha, GRID).flatten(1)
    prof = F.adaptive_avg_pool2d(alpha * torch.where(alpha > 1e-4, rel, 0.0), GRID).flatten(1)
    return sil, prof


def view_resolution(trained_at: int) -> int:
    """Pixels of the views for a generator trained at `trained_at` px."""
    return max(MIN_RESOLUTION, min(MAX_RESOLUTION, int(trained_at)))


def generated_descriptors(gen: GaussianGenerator, num: int, resolution: int, seed: int = 0, backend: str = "auto",
                          batch_size: int = 16) -> Descriptors:
    """Descriptors of `num` generated heads (the same heads at every yaw; a camera-conditioned
    generator is conditioned on the camera it is seen from)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num, gen.z_dim, generator=g)
    sils, profs = [], []
    for yaw in GEOMETRY_YAWS_DEG:
        labels = yaw_labels(num, yaw)
        s_parts, p_parts = [], []
        for i in range(0, num, batch_size):
            zz, c = z[i : i + batch_size], labels[i : i + batch_size]
            out = render_labels(gaussians_of(gen(zz, c)), c, resolution, backend)
            s, p = describe(out.alpha.cpu(), out.depth.cpu(), c)
            s_parts.append(s)
            p_parts.append(p)
        sils.append(torch.cat(s_parts))
        profs.append(torch.cat(p_parts))
    return Descriptors(torch.stack(sils), torch.stack(profs))


def truth_descriptors(seed: int, identities: Sequence[int], resolution: int, card: bool = False) -> Descriptors:
    """Descriptors of ground-truth heads `identities` (dataset seed `seed`), or with card=True of
    the same heads flattened into cards (see the module docstring)."""
    from cgsgan.data import synthetic

    ids = [int(i) for i in identities]
    n = len(ids)
    front = None
    if card:
        front, _ = synthetic.render_heads_depth(seed, ids, camera.frontal_label(n), resolution, SUPERSAMPLE)
    sils, profs = [], []
    for yaw in GEOMETRY_YAWS_DEG:
        labels = yaw_labels(n, yaw)
        if front is None:
            alpha, depth = synthetic.render_heads_depth(seed, ids, labels, resolution, SUPERSAMPLE)
        else:
            alpha, depth = card_view(front, labels)
        s, p = describe(alpha, depth, labels)
        sils.append(s)
        profs.append(p)
    return Descriptors(torch.stack(sils), torch.stack(profs))


def card_view(front_alpha: torch.Tensor, labels: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The frontal silhouettes front_alpha [N, 1, H, W] as cards seen from labels [N, 25]: one
    Gaussian per pixel on the plane through the origin facing the frontal camera, drawn by the
    project's renderer (so a card scores 0 with the splat footprint any generator has); alpha and
    depth [N, 1, H, W] (the size of front_alpha)."""
    from cgsgan.gaussians import Gaussians, rgb_to_sh0

    n, res = front_alpha.shape[0], front_alpha.shape[-1]
    points = plane_points(camera.frontal_label(1)[0], res)  # [res^2, 3]
    footprint = camera.RADIUS / (camera.FOCAL * res)
    P = len(points)
    g = Gaussians(means=points.expand(n, P, 3).clone(), log_scales=torch.full((n, P, 3), float(torch.tensor(0.6 * footprint).log())),
                  quats=torch.tensor([1.0, 0, 0, 0]).expand(n, P, 4).clone(),
                  opacity_logits=torch.logit((front_alpha.flatten(1) * 0.99).clamp(1e-4, 1 - 1e-4)),
                  sh0=rgb_to_sh0(torch.zeros(n, P, 3)))
    out = render_labels(g, labels, res, backend)
    return out.alpha, out.depth


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Diagonal-covariance Frechet distance between descriptor sets [Y, N, D] and [Y, M, D], summed
    over yaws (and cells)."""
    return float(((a.mean(1) - b.mean(1)) ** 2 + (a.std(1) - b.std(1)) ** 2).sum())


@dataclass(frozen=True)
class GeometryScale:
    """The ground-truth side of the score: the reference heads and the floor and card distances."""

    reference: Descriptors
    floor: tuple[float, float]  # silhouette, depth
    card: tuple[float, float]
    resolution: int  # px of the views; the generated heads are seen at the same

    @classmethod
    def build(cls, seed: int, reference_ids: Sequence[int], held_ids: Sequence[int], resolution: int) -> "GeometryScale":
        ref = truth_descriptors(seed, reference_ids, resolution)
        held = truth_descriptors(seed, held_ids, resolution)
        card = truth_descriptors(seed, held_ids, resolution, card=True)
        return cls(ref, (distance(ref.silhouette, held.silhouette), distance(ref.depth, held.depth)),
                   (distance(ref.silhouette, card.silhouette), distance(ref.depth, card.depth)), resolution)

    def score(self, d: Descriptors) -> dict[str, float]:
        """{"geometry", "geometry/silhouette", "geometry/depth"} of the heads `d` on this scale."""
        out = {}
        for i, part in enumerate(("silhouette", "depth")):
            dist = distance(getattr(self.reference, part), getattr(d, part))
            span = self.card[i] - self.floor[i]
            out[f"geometry/{part}"] = 1.0 - (dist - self.floor[i]) / span if span > 0 else float("nan")
        out["geometry"] = min(out["geometry/silhouette"], out["geometry/depth"])
        return out
