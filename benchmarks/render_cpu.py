"""CPU renderer speed: forward+backward of the rasterizer in plain PyTorch ("torch") and compiled
("native") at 64x64 and 128x128 with 2k, 5k and 20k Gaussians, of the dense oracle at the small
sizes, and of a tiny-config training batch (8 heads x 4 views, 2,688 Gaussians per head), in one
run. Writes benchmarks/results/render_cpu.md with the machine it ran on.

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


def time_fwd_bwd(scene: Gaussians, size: int, backend: str, repeats: int = 7, warmup: int = 2,
                 labels: torch.Tensor | None = None) -> tuple[float, float]:
    for t in scene.tensors().values():
        t.requires_grad_(True)
    label = camera.frontal_label(1) if labels is None else labels
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


def training_batch() -> tuple[Gaussians, torch.Tensor]:
    """8 head shells of 2,688 Gaussians (scales ~0.01, as the tiny generator's), 4 views each."""
    heads = [head_scene(2688, seed=b) for b in range(8)]
    g = Gaussians(*(torch.cat([getattr(h, k) for h in heads]) for k in
                    ("means", "log_scales", "quats", "opacity_logits", "sh0")))
    g = g.replace(log_scales=g.log_scales + math.log(0.01 / 0.03))
    labels = camera.sample_gaussian_poses(32, generator=torch.Generator().manual_seed(0)).reshape(8, 4, 25)
    return g, labels


def main() -> None:
    rows = []
    for scene_name, make in [("head shell", head_scene), ("uniform cube", cube_scene)]:
        for size in (64, 128):
            for n in (2000, 5000, 20000):
                for backend in ("torch", "native"):
                    f, b = time_fwd_bwd(make(n), size, backend)
                    rows.append((scene_name, backend, size, n, f, b))
                    print(rows[-1], flush=True)
        for size, n in [(64, 2000), (64, 5000)]:
            f, b = time_fwd_bwd(make(n), size, "dense", repeats=2, warmup=1)
            rows.append((scene_name, "dense oracle", size, n, f, b))
            print(rows[-1], flush=True)
    for backend in ("torch", "native"):
        g, labels = training_batch()
        f, b = time_fwd_bwd(g, 64, backend, labels=labels)
        rows.append(("tiny training batch, 8 heads x 4 views", backend, 64, 2688, f, b))
        print(rows[-1], flush=True)
    lines = ["# CPU renderer: forward + backward per render call", "", describe(), "",
             "| scene | backend | size | Gaussians (per head) | forward ms | backward ms | total ms |",
             "|---|---|---|---|---|---|---|"]
    for s, be, size, n, f, b in rows:
        lines.append(f"| {s} | {be} | {size}x{size} | {n} | {f:.1f} | {b:.1f} | {f + b:.1f} |")

    def total(scene: str, backend: str, size: int, n: int) -> float:
        return next(f + b for sc, be, sz, nn, f, b in rows if (sc, be, sz, nn) == (scene, backend, size, n))

    lines += ["", "Speed-ups (forward + backward, same run):", ""]
    for s in ("head shell", "uniform cube"):
        lines.append(f"- {s}, 64x64, 5k Gaussians: torch over the dense oracle "
                     f"{total(s, 'dense oracle', 64, 5000) / total(s, 'torch', 64, 5000):.0f}x; "
                     f"native over torch {total(s, 'torch', 64, 5000) / total(s, 'native', 64, 5000):.1f}x "
                     f"(at 128x128, 20k: {total(s, 'torch', 128, 20000) / total(s, 'native', 128, 20000):.1f}x)")
    batch = "tiny training batch, 8 heads x 4 views"
    lines.append(f"- {batch}: native over torch "
                 f"{total(batch, 'torch', 64, 2688) / total(batch, 'native', 64, 2688):.1f}x")
    out = Path(__file__).parent / "results" / "render_cpu.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
