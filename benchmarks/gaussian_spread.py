"""How deep a generator's heads are, read off its Gaussians (no rendering): the front-to-back
spread of the visible Gaussians over their left-to-right spread, per checkpoint, beside the same
ratio for the ground-truth synthetic heads (their visible surface as Gaussians,
tests/unit/metric_heads.py) and for a flat card (0 by construction).

    python -m benchmarks.gaussian_spread <checkpoint.pt> [...] [--heads 16]

Spread: the opacity-weighted standard deviation of the Gaussians' centres (opacity > 0.5) along
world z (towards the frontal camera) and x (the head's width), per head, then the mean over
heads. A slab has a small ratio however its picture looks from the front.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cgsgan.gaussians import Gaussians
from cgsgan.training.checkpoint import checkpoint_nimg, load_generator


def depth_over_width(g: Gaussians, min_opacity: float = 0.5) -> torch.Tensor:
    """Per head [B]: the opacity-weighted std of the centres along z over that along x."""
    w = torch.sigmoid(g.opacity_logits)  # [B, N]
    w = w * (w > min_opacity)
    w = w / w.sum(1, keepdim=True).clamp_min(1e-8)
    mean = (w[..., None] * g.means).sum(1, keepdim=True)  # [B, 1, 3]
    var = (w[..., None] * (g.means - mean) ** 2).sum(1)  # [B, 3]
    return (var[:, 2] / var[:, 0].clamp_min(1e-12)).sqrt()


def ground_truth_ratio(heads: int, seed: int = 0) -> float:
    from tests.unit.metric_heads import SurfaceHeads

    gen = SurfaceHeads(seed=seed, num_identities=256)
    z = torch.randn(heads, gen.z_dim, generator=torch.Generator().manual_seed(1))
    return float(depth_over_width(gen(z, torch.zeros(heads, 25))).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--heads", type=int, default=16)
    args = p.parse_args(argv)
    print("| checkpoint | kimg | depth / width of the Gaussians |")
    print("|---|---|---|")
    for path in args.checkpoints:
        G, cfg = load_generator(path)
        z = torch.randn(args.heads, cfg.model.generator.z_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ratio = depth_over_width(G(z).gaussians)
        named = Path(path) if Path(path).stem.startswith("checkpoint-") else Path(path).parent  # a Ray folder's file
        print(f"| {path} | {checkpoint_nimg(named) / 1000:g} | {float(ratio.mean()):.3f} +- {float(ratio.std()):.3f} |")
    print(f"| ground truth (the synthetic heads' visible surface) | | {ground_truth_ratio(args.heads):.3f} |")
    print("| a flat card | | 0 |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
