"""CPU renderer speed: forward+backward of the tiled rasterizer at 64x64 and 128x128 with 2k, 5k
and 20k Gaussians, and of the dense oracle at the small sizes, in one run. Writes
benchmarks/results/render_cpu.md with the machine it ran on.

Scene: a head-like shell (Gaussians on an ellipsoid of radii 0.2/0.26/0.22 around the look-at
point, scales ~0.03, opacities U(0.3, 1)) seen by the frontal camera at radius 2.7, plus the
harder uniform-cube scene (random positions filling [-0.3, 0.3]^3, many semi-transparent
layers).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe  # noqa: E402
from cgsgan import camera  # noqa: E402
from cgsgan.gaussians import Gaussians  # noqa: E402
from cgsgan.render import render  # noqa: E402


def head_scene(n: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(1, n, 3, generator=g), dim=-1)
    means = d * torch.tensor([0.2, 0.26, 0.22]) + torch.tensor(camera.LOOKAT)
    return Gaussians(
        means=means,
        log_scales=math.log(0.03) + 0.2 * torch.randn(1, n, 3, generator=g),
        quats=torch.randn(1, n, 4, generator=g),
        opacity_logits=torch.logit(0.3 + 0.7 * torch.rand(1, n, generator=g)),
        sh0=torch.randn(1, n, 3, generator=g),
    )


def cube_scene(n: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=(torch.rand(1, n, 3, generator=g) - 0.5) * 0.6,
        log_scales=math.log(0.03) + 0.3 * torch.randn(1, n, 3, generator=g),
        quats=torch.randn(1, n, 4, generator=g),
        opacity_logits=torch.randn(1, n, generator=g),
        sh0=torch.randn(1, n, 3, generator=g),
    )


def time_fwd_bwd(scene: Gaussians, size: int, backend: str, repeats: int = 7, warmup: int = 2) -> tuple[float, float]:
    for t in scene.tensors().values():
        t.requires_grad_(True)
    label = camera.frontal_label(1)
    fwd, bwd = [], []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        out = render(scene, label, size, backend=backend)
        t1 = time.perf_counter()
        out.image.square().mean().backward()
        t2 = time.perf_counter()
        if i >= warmup:  # the first runs warm up the allocator
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return sorted(fwd)[len(fwd) // 2] * 1e3, sorted(bwd)[len(bwd) // 2] * 1e3


def main() -> None:
    rows = []
    for scene_name, make in [("head shell", head_scene), ("uniform cube", cube_scene)]:
        for size in (64, 128):
            for n in (2000, 5000, 20000):
                f, b = time_fwd_bwd(make(n), size, "torch")
                rows.append((scene_name, "tiled", size, n, f, b))
                print(rows[-1], flush=True)
        for size, n in [(64, 2000), (64, 5000)]:
            f, b = time_fwd_bwd(make(n), size, "dense", repeats=2, warmup=1)
            rows.append((scene_name, "dense oracle", size, n, f, b))
            print(rows[-1], flush=True)
    lines = ["# CPU renderer: forward + backward per image", "", describe(), "",
             "| scene | backend | size | Gaussians | forward ms | backward ms | total ms |", "|---|---|---|---|---|---|---|"]
    for s, be, size, n, f, b in rows:
        lines.append(f"| {s} | {be} | {size}x{size} | {n} | {f:.1f} | {b:.1f} | {f + b:.1f} |")
    speed = {}
    for s in ("head shell", "uniform cube"):
        tiled = next(f + b for sc, be, size, n, f, b in rows if sc == s and be == "tiled" and size == 64 and n == 5000)
        dense = next(f + b for sc, be, size, n, f, b in rows if sc == s and be == "dense oracle" and size == 64 and n == 5000)
        speed[s] = dense / tiled
    lines += ["", "Speed-up of the tiled rasterizer over the dense oracle at 64x64, 5k Gaussians: "
              + ", ".join(f"{s} {v:.0f}x" for s, v in speed.items()), ""]
    out = Path(__file__).parent / "results" / "render_cpu.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
