"""Sample images a person can look at: fixed-seed grids and turntables (white background)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cgsgan import camera
from cgsgan.generator import Generator
from cgsgan.render import render


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def render_views(G: Generator, z: torch.Tensor, labels: torch.Tensor, resolution: int, psi: float) -> torch.Tensor:
    """Each head z [B] from each camera labels [V, 25] -> images [B, V, 3, H, W].

    The Gaussians are generated once per head; in g_conditioned mode the head is conditioned on
    the frontal camera (what FID3D measures) and then seen from every view.
    """
    device = next(G.parameters()).device
    B, V = z.shape[0], labels.shape[0]
    frontal = camera.frontal_label(B).to(device)
    gaussians = G(z.to(device), frontal, psi=psi).gaussians
    cams = labels.to(device)[None].expand(B, V, -1)
    return render(gaussians, cams, resolution).image


def save_grid(G: Generator, z: torch.Tensor, resolution: int, psi: float, path: str | Path, yaws: int = 5) -> Path:
    """Rows: seeds; columns: yaw from -45 to +45 degrees."""
    labels = camera.yaw_sweep(yaws, yaw_range=math.radians(45))
    images = to_uint8(render_views(G, z, labels, resolution, psi).flatten(0, 1))  # [B * V, H, W, 3]
    B, H, W = z.shape[0], resolution, resolution
    grid = images.reshape(B, yaws, H, W, 3).transpose(0, 2, 1, 3, 4).reshape(B * H, yaws * W, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def save_turntable(
    G: Generator, z: torch.Tensor, resolution: int, psi: float, path: str | Path, frames: int = 24, yaw_deg: float = 60
) -> Path:
    """An animated GIF sweeping yaw from -yaw_deg to +yaw_deg and back for head z [1]."""
    labels = camera.yaw_sweep(frames, yaw_range=math.radians(yaw_deg))
    images = to_uint8(render_views(G, z[:1], labels, resolution, psi)[0])
    seq = [Image.fromarray(im) for im in np.concatenate([images, images[::-1][1:-1]])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seq[0].save(path, save_all=True, append_images=seq[1:], duration=80, loop=0)
    return path
