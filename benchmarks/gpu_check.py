"""One CUDA GPU, under 8 minutes including gsplat's first build:
1. the same random scenes rendered by gsplat and by the project's PyTorch rasterizer (on the GPU,
   same tensors): max abs difference of images, alphas and of gradients w.r.t. every parameter;
2. gsplat forward+backward time at 512x512 and 1024x1024 with 240k Gaussians, batch 8.
Prints everything and writes benchmarks/results/gpu_check.md.
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


def scene(b: int, n: int, scale: float, seed: int, device) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=g), dim=-1)
    means = d * torch.tensor([0.2, 0.26, 0.22]) * (0.8 + 0.2 * torch.rand(b, n, 1, generator=g)) + torch.tensor(camera.LOOKAT)
    return Gaussians(
        means=means.to(device),
        log_scales=(math.log(scale) + 0.3 * torch.randn(b, n, 3, generator=g)).to(device),
        quats=torch.randn(b, n, 4, generator=g).to(device),
        opacity_logits=torch.randn(b, n, generator=g).to(device),
        sh0=torch.randn(b, n, 3, generator=g).to(device),
    )


def compare(lines: list[str]) -> None:
    dev = torch.device("cuda")
    lines += ["## gsplat vs PyTorch rasterizer (same scenes, float32, on the GPU)", "",
              "| scene | size | max abs image | max abs alpha | max abs grad (means, log_scales, quats, opacity, sh0) |",
              "|---|---|---|---|---|"]
    for seed, (n, size, scale) in enumerate([(2000, 64, 0.03), (5000, 128, 0.02), (20000, 256, 0.01)]):
        g = scene(2, n, scale, seed, dev)
        labels = camera.sample_gaussian_poses(4, generator=torch.Generator().manual_seed(seed)).reshape(2, 2, 25).to(dev)
        bg = torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(seed)).to(dev)
        w = torch.rand(2, 2, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dev)
        outs, grads = {}, {}
        for backend in ("gsplat", "torch"):
            params = {k: v.detach().clone().requires_grad_(True) for k, v in g.tensors().items()}
            out = render(Gaussians(**params), labels, size, bg, backend=backend)
            (out.image * w).sum().backward()
            outs[backend] = out
            grads[backend] = {k: p.grad for k, p in params.items()}
        di = (outs["gsplat"].image - outs["torch"].image).abs().max().item()
        da = (outs["gsplat"].alpha - outs["torch"].alpha).abs().max().item()
        dg = ", ".join(f"{(grads['gsplat'][k] - grads['torch'][k]).abs().max().item():.2e}" for k in grads["torch"])
        scale_g = ", ".join(f"{grads['torch'][k].abs().max().item():.1e}" for k in grads["torch"])
        lines.append(f"| {n} Gaussians x 2 heads x 2 views | {size} | {di:.2e} | {da:.2e} | {dg} (max |grad|: {scale_g}) |")
        print(lines[-1], flush=True)


def timing(lines: list[str]) -> None:
    dev = torch.device("cuda")
    lines += ["", "## gsplat forward + backward, 240k Gaussians, batch 8", "", "| size | forward ms | backward ms |", "|---|---|---|"]
    for size in (512, 1024):
        g = scene(8, 240_128, 0.004, 0, dev)
        params = {k: v.requires_grad_(True) for k, v in g.tensors().items()}
        labels = camera.sample_gaussian_poses(8).to(dev)
        f, b = [], []
        for i in range(6):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = render(Gaussians(**params), labels, size, backend="gsplat")
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            out.image.square().mean().backward()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i:
                f.append(t1 - t0)
                b.append(t2 - t1)
        lines.append(f"| {size} | {1e3 * sorted(f)[2]:.1f} | {1e3 * sorted(b)[2]:.1f} |")
        print(lines[-1], flush=True)


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU")
    lines = ["# gsplat vs the project's rasterizer, and gsplat timing", "", describe(), ""]
    t0 = time.time()
    compare(lines)
    timing(lines)
    lines.append(f"\nTotal wall time {time.time() - t0:.0f} s (includes gsplat's first JIT build if any).")
    out = Path(__file__).parent / "results" / "gpu_check.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
