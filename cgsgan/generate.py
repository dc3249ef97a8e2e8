"""Samples from a checkpoint: `python -m cgsgan.generate --checkpoint CKPT --seeds 0-7 --out DIR
[--truncation 0.8] [--ply] [--turntable]`.

CKPT: a checkpoint file, a checkpoint folder (what launch.py prints), or a run folder (its newest
checkpoint that loads), local or s3://...; or a logged MLflow model, runs:/<run_id>/generator or
models:/cgsgan-<preset>/<version> (with the orchestration extra installed, which resolves those
URIs for the core: cgsgan itself does not import MLflow).

Writes grid.png (rows: seeds, columns: yaw -45..45 degrees), turntable-seedN.gif (yaw sweep of
+-60 degrees) and seedN.ply (standard 3DGS .ply, opens in the usual splat viewers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cgsgan import camera
from cgsgan.training.checkpoint import CHECKPOINT_HELP, open_checkpoint
from cgsgan.training.samples import save_grid, save_turntable
from cgsgan.training.checkpoint import load_generator


def parse_seeds(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"--seeds {text!r}: no seeds")
    return seeds


def latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--seeds", default="0-7")
    p.add_argument("--out", required=True)
    p.add_argument("--truncation", type=float, default=0.8)
    p.add_argument("--ply", action="store_true")
    p.add_argument("--turntable", action="store_true")
    args = p.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        with open_checkpoint(args.checkpoint, say=lambda msg: print(msg, file=sys.stderr)) as path:
            G, cfg = load_generator(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    res, psi = cfg.model.resolution, args.truncation
    z = latents(seeds, cfg.model.generator.z_dim)
    print(f"grid: {save_grid(G, z, res, psi, out / 'grid.png')}")
    for s, zi in zip(seeds, z):
        if args.turntable:
            print(f"turntable: {save_turntable(G, zi[None], res, psi, out / f'turntable-seed{s}.gif')}")
        if args.ply:
            with torch.no_grad():
                G(zi[None], camera.frontal_label(1), psi=psi).gaussians.save_ply(out / f"seed{s}.ply")
            print(f"ply: {out / f'seed{s}.ply'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
