"""Overfit check: can the generator and the renderer represent one head at all?

One fixed latent, the generator's weights trained by a photometric loss (MSE on white) to match
a few views of one synthetic head; the PSNR is measured on other, held-out views of the same head
(rendered from the synthetic ground truth). No discriminator is involved: a failure here is a
representation or rendering problem, not a GAN one.

    python -m cgsgan.training.overfit [--steps 600 --resolution 64 --views 4]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch

from cgsgan import camera, config
from cgsgan.data import synthetic
from cgsgan.metrics.consistency import psnr
from cgsgan.models import build_generator
from cgsgan.render import render


@dataclass
class OverfitResult:
    train_psnr: float  # dB on the training views
    held_out_psnr: float  # dB on views the generator never saw
    steps: int
    seconds: float


def on_white(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ground truth rgb [N, 3, H, W] and mask [N, 1, H, W] in [0, 1] -> on white, in [-1, 1]."""
    return (rgb * mask + (1 - mask)) * 2 - 1


def overfit_one_head(
    cfg: config.CGSGANConfig | None = None,
    identity: int = 0,
    seed: int = 0,
    views: int = 4,
    held_out: int = 8,
    steps: int = 600,
    lr: float = 0.01,
    log_every: int = 0,
) -> OverfitResult:
    """Fit G (fixed z) to `views` views of synthetic head `identity`; PSNR on `held_out` other views."""
    cfg = cfg or config.tiny()
    res = cfg.model.resolution
    torch.manual_seed(seed)
    G = build_generator(cfg.model)
    g = torch.Generator().manual_seed(seed)
    # Views drawn from the data's pose spread; held-out views are other poses of the same head.
    labels = camera.sample_gaussian_poses(views + held_out, generator=g)
    target = on_white(*synthetic.render_identity(seed, identity, labels, res))
    train_labels, test_labels = labels[:views], labels[views:]
    z = torch.randn(1, cfg.model.generator.z_dim, generator=g)
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.9, 0.99))
    t0 = time.time()
    for step in range(steps):
        image = render(G(z).gaussians, train_labels[None], res, backend="torch").image[0]  # [V, 3, H, W]
        loss = (image - target[:views]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d} | mse {loss.item():.5f} | psnr {10 * math.log10(4 / loss.item()):.2f} dB", flush=True)
    with torch.no_grad():
        gaussians = G(z).gaussians
        train = render(gaussians, train_labels[None], res, backend="torch").image[0]
        test = render(gaussians, test_labels[None], res, backend="torch").image[0]
    return OverfitResult(psnr(train, target[:views]), psnr(test, target[views:]), steps, time.time() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--identity", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    args = p.parse_args(argv)
    r = overfit_one_head(identity=args.identity, views=args.views, steps=args.steps, lr=args.lr,
                         log_every=max(1, args.steps // 10))
    print(f"PSNR: {r.train_psnr:.2f} dB on the {args.views} training views, {r.held_out_psnr:.2f} dB on held-out "
          f"views ({r.steps} steps, {r.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
