"""One CUDA GPU, under 8 minutes including gsplat's first build: training images per second and
peak GPU memory of the reference 512 config (batch 8 per GPU, N = 4 views, full G and D steps,
R1 at its interval of 16). Writes benchmarks/results/gpu_train.md.

Reference: ~15M images in ~3 days on 4 H100s is ~14.5 images/s per GPU; target >= 1.5x that.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe  # noqa: E402
from cgsgan import config  # noqa: E402
from cgsgan.data.synthetic import generate_synthetic  # noqa: E402
from cgsgan.training.trainer import Trainer  # noqa: E402

REFERENCE_IMG_PER_SEC = 15e6 / (3 * 86400) / 4


def main(steps: int = 48) -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_train.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic(Path(tmp) / "data", 16, 2, 512, 0)
        cfg = config.ffhq(512)
        cfg.data.source, cfg.data.path = "folder", str(data)
        cfg.train.batch_size = 8
        cfg.loss.num_views = 4
        t = Trainer(cfg, Path(tmp) / "run", device="cuda")
        t0 = time.time()
        t.run(max_steps=3)  # warm-up, includes gsplat's build
        torch.cuda.synchronize()
        warm = time.time() - t0
        torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        for _ in range(steps):  # 48 steps: 3 of them with R1
            t.train_step()
        torch.cuda.synchronize()
        sec = time.time() - t0
    ips = steps * cfg.train.batch_size / sec
    lines = [
        "# Reference 512 config on one GPU", "", describe(), "",
        f"- images/s: {ips:.1f} ({steps} steps of batch 8, N=4 views, R1 every 16 steps)",
        f"- reference pace: {REFERENCE_IMG_PER_SEC:.1f} images/s per GPU; ratio {ips / REFERENCE_IMG_PER_SEC:.2f}x (target >= 1.5x)",
        f"- peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
        f"- warm-up (3 steps incl. gsplat build): {warm:.0f} s",
    ]  # fmt: skip
    out = Path(__file__).parent / "results" / "gpu_train.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
