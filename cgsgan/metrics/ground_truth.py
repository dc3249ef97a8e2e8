"""Ground truth for the metrics: the synthetic heads re-rendered at any pose, the poses the
training data never shows, and the solid colours the background metric paints on.

Only the synthetic heads (cgsgan.data.synthetic) have ground truth away from the dataset's
poses: their procedural heads are re-rendered, for any camera, by the same ray caster that made
the dataset.

    novel_poses        yaw 60-90 degrees either side, pitch +-25: outside the training poses
                       (yaw ~ N(0, 17 degrees), clamped at 69), where a flat or camera-dependent
                       head gives itself away.
    BACKGROUND_PALETTE solid, non-white colours: on them a white floater that white hides shows.
    yaw bins           per yaw bin of the dataset, distances between generated images and
                       ground-truth renders at the same poses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from cgsgan import camera
from cgsgan.metrics.features import FeatureExtractor
from cgsgan.metrics.frechet import fid_from_features
from cgsgan.metrics.kid import kid as kid_of
from cgsgan.metrics.sampling import GaussianGenerator, gaussians_of, render_labels

NOVEL_YAW_DEG = (60.0, 90.0)  # |yaw| range of the novel views
NOVEL_PITCH_DEG = 25.0  # pitch in +-this
# Solid non-white backgrounds (RGB in [0, 1]): dark, mid and saturated, none close to white.
BACKGROUND_PALETTE = torch.tensor([
    [0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.8, 0.15, 0.1], [0.1, 0.6, 0.2],
    [0.15, 0.25, 0.8], [0.85, 0.7, 0.1], [0.1, 0.65, 0.7], [0.6, 0.2, 0.6],
])  # fmt: skip


def novel_poses(num: int, seed: int = 0) -> torch.Tensor:
    """Camera labels [num, 25]: |yaw| uniform in NOVEL_YAW_DEG (either side), pitch uniform in +-NOVEL_PITCH_DEG."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (math.radians(a) for a in NOVEL_YAW_DEG)
    side = torch.randint(2, (num,), generator=g) * 2 - 1
    yaw = side * (lo + (hi - lo) * torch.rand(num, generator=g))
    pitch = (2 * torch.rand(num, generator=g) - 1) * math.radians(NOVEL_PITCH_DEG)
    return camera.make_label(camera.pose_from_angles(yaw, pitch), camera.intrinsics(batch=num))


def palette_colours(num: int) -> torch.Tensor:
    """Background colours [num, 3]: the palette repeated, so any two sides of num samples share it."""
    return BACKGROUND_PALETTE[torch.arange(num) % len(BACKGROUND_PALETTE)]


@dataclass(frozen=True)
class SyntheticTruth:
    """The heads of a synthetic-heads dataset: its seed and identity count."""

    seed: int
    num_identities: int

    @classmethod
    def of_dataset(cls, data: str | Path) -> "SyntheticTruth":
        """ValueError for a dataset that is not synthetic heads (no ground truth away from its images)."""
        from cgsgan.data import synthetic

        info = synthetic.read_info(data)
        return cls(int(info["seed"]), int(info["identities"]))

    def render(self, identities: Sequence[int], labels: torch.Tensor, resolution: int) -> torch.Tensor:
        """identities [n], labels [n, 25] -> images [n, 3, H, W] on white, in [-1, 1]."""
        from cgsgan.data import synthetic

        rgb, mask = synthetic.render_heads(self.seed, [int(i) for i in identities], labels, resolution)
        return (rgb * mask + (1 - mask)) * 2 - 1

    def render_identity(self, identity: int, labels: torch.Tensor, resolution: int) -> torch.Tensor:
        return self.render([identity] * len(labels), labels, resolution)


def synthetic_truth(data: str | Path) -> SyntheticTruth | None:
    """The ground truth of a synthetic-heads dataset; None for any other dataset."""
    try:
        return SyntheticTruth.of_dataset(data)
    except ValueError:
        return None


GroundTruthRender = Callable[[int, torch.Tensor], torch.Tensor]  # (identity, labels [V, 25]) -> [V, 3, H, W] in [-1, 1]


@dataclass
class YawBin:
    index: int
    yaw_lo_deg: float
    yaw_hi_deg: float
    n: int
    fd: float
    kid: float


@torch.no_grad()
def yaw_bin_distances(
    gen: GaussianGenerator,
    extractor: FeatureExtractor,
    labels: torch.Tensor,
    gt_render: GroundTruthRender,
    num_identities: int,
    resolution: int,
    num_bins: int = 5,
    per_bin: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    backend: str = "auto",
) -> list[YawBin]:
    """Per yaw bin: FD and KID between generated images and ground-truth renders at the same poses.

    Bins split the dataset's yaw range into equal widths (empty bins are skipped). Sample j takes
    one dataset camera from every bin; the generated side renders G(z_j, c) from it, the ground
    truth renders a random training identity from it, so both sides of a bin share poses exactly.
    Only possible on synthetic data, whose heads can be re-rendered from any pose.
    """
    rng = torch.Generator().manual_seed(seed)
    yaw, _ = camera.yaw_pitch(labels)
    edges = torch.linspace(float(yaw.min()), float(yaw.max()) + 1e-6, num_bins + 1)
    which = torch.bucketize(yaw, edges[1:-1], right=True)  # bin index per label, 0..num_bins-1
    bins = [i for i in range(num_bins) if (which == i).any()]
    members = [torch.nonzero(which == i)[:, 0] for i in bins]
    # poses [per_bin, num_bins_used, 25]: row j holds one camera of every bin
    poses = torch.stack([labels[m[torch.randint(len(m), (per_bin,), generator=rng)]] for m in members], dim=1)
    ids = torch.randint(num_identities, (per_bin,), generator=rng).tolist()
    gt = torch.stack([gt_render(ids[j], poses[j]) for j in range(per_bin)])  # [per_bin, V, 3, H, W]
    fake_feats, real_feats = [], []
    for v in range(len(bins)):
        cams = poses[:, v]
        imgs = []
        for start in range(0, per_bin, batch_size):
            c = cams[start : start + batch_size]
            z = torch.randn(len(c), gen.z_dim, generator=rng)
            imgs.append(render_labels(gaussians_of(gen(z, c)), c, resolution, backend).image.cpu())
        fake_feats.append(extractor(torch.cat(imgs)))
        real_feats.append(extractor(gt[:, v]))
    out = []
    for v, i in enumerate(bins):
        out.append(
            YawBin(
                index=i,
                yaw_lo_deg=math.degrees(float(edges[i])),
                yaw_hi_deg=math.degrees(float(edges[i + 1])),
                n=per_bin,
                fd=fid_from_features(real_feats[v], fake_feats[v]),
                kid=kid_of(real_feats[v], fake_feats[v], num_subsets=1, subset_size=per_bin, seed=seed).mean,
            )
        )
    return out
