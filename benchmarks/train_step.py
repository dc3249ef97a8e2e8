"""Training-step cost of the tiny config at N = 1, 2 and 4 views, in one run: seconds per full
training step (G step with N views + D step, R1 included at its interval) and peak memory;
plus Gaussian and parameter counts of the reference configs. Writes
benchmarks/results/train_step.md.

The generator runs once per head whatever N is, so step(N=4) / step(N=1) should stay well below 4
(target <= 2.5).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe  # noqa: E402
from cgsgan import config  # noqa: E402
from cgsgan.data.synthetic import generate_synthetic  # noqa: E402
from cgsgan.generator import Generator  # noqa: E402
from cgsgan.training.trainer import Trainer  # noqa: E402


def step_time(cfg: config.CGSGANConfig, run_dir: Path, steps: int = 8) -> float:
    t = Trainer(cfg, run_dir)
    t.run(max_steps=2)  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        t.train_step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    tiny = config.tiny()
    lines = [f"# Training step, tiny config (64x64, 2,688 Gaussians, batch {tiny.train.batch_size})", "", describe(),
             f"Load average before the run: {open('/proc/loadavg').read().split()[0]} (2 cores; other jobs may share them).", ""]
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic(Path(tmp) / "data", 64, 2, 64, 0)
        rows = []
        for views in (1, 2, 4):
            cfg = config.tiny()
            cfg.data.source, cfg.data.path = "folder", str(data)
            cfg.loss.num_views = views
            cfg.loss.r1_interval = 4
            sec = step_time(cfg, Path(tmp) / f"run{views}")
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            rows.append((views, sec, rss))
            print(f"N={views}: {sec:.3f} s/step, peak RSS so far {rss:.2f} GiB", flush=True)
    base = rows[0][1]
    lines += ["| views N | s / step | ratio to N=1 | peak RSS of the process so far (GiB) |", "|---|---|---|---|"]
    lines += [f"| {v} | {s:.3f} | {s / base:.2f} | {r:.2f} |" for v, s, r in rows]
    lines += ["", "Peak memory is the process's maximum RSS, cumulative over the runs above (CPU has no per-step peak counter).",
              "", "## Reference configs", "", "| resolution | levels | Gaussians | generator parameters |", "|---|---|---|---|"]
    for res in (256, 512, 1024, 2048):
        cfg = config.ffhq(res)
        with torch.device("meta"):
            G = Generator(cfg.model.generator, res)
        n = sum(p.numel() for p in G.parameters())
        lines.append(f"| {res} | {cfg.model.generator.num_levels} | {config.num_gaussians(cfg.model.generator):,} | {n / 1e6:.1f}M |")
    out = Path(__file__).parent / "results" / "train_step.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
