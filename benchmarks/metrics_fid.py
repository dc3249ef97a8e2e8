"""What the snapshot metrics cost on CPU, per metric, at the main job's settings and at the sweep's:
the tiny generator (config.tiny()) on the tiny config's synthetic heads, with the synthetic-heads
extractor, through the trainer's own SnapshotMetrics. Writes benchmarks/results/metrics.md with
the machine it ran on.

    python benchmarks/metrics_fid.py [--samples 256 1024] [--heads 16]

For each sample count: the one-off cost when the run's first snapshot builds the real side (split,
real features, ground-truth renders at the novel poses, floors), then the cost of every later
snapshot, metric by metric (generate + render + features + distance). The generator is
untrained (weights perturbed away from the init so heads differ): the values mean nothing, the
seconds are the point. The extractor is the one the trainer caches (trained on first use).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe  # noqa: E402
from cgsgan import config  # noqa: E402
from cgsgan.generator import Generator  # noqa: E402
from cgsgan.metrics.evaluation import evaluate  # noqa: E402
from cgsgan.metrics.sampling import as_generator  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "metrics.md"
# In the order measured: kid after fid (it reuses fid's generated features), fid3d after fid (the
# camera-free generator's fid3d images are fid's).
METRICS = ["fid", "kid", "fid3d", "fid_novel", "kid_novel", "fid_bg", "kid_bg", "sensitivity", "psnr_cond"]
MAIN_JOB = ["fid", "fid3d", "sensitivity", "psnr_cond"]  # config.TrainConfig.snapshot_metrics


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    cfg = config.tiny()
    G = Generator(cfg.model.generator, cfg.model.resolution).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return G


def measure(samples: int, heads: int, data: Path, G: Generator) -> tuple[float, dict[str, float], dict[str, float],
                                                                          dict[str, float]]:
    """Build seconds, per-metric seconds at the first snapshot and at a later one, and the values."""
    from cgsgan.training.snapshot_metrics import SnapshotMetrics

    cfg = config.tiny()
    cfg.train.metric_samples, cfg.train.snapshot_metric_heads = samples, heads
    cfg.train.snapshot_metrics = METRICS
    t = time.time()
    sm = SnapshotMetrics(cfg, data)
    build = time.time() - t
    first: dict[str, float] = {}
    later: dict[str, float] = {}
    values: dict[str, float] = {}
    for seconds in (first, later):
        ctx = sm.context.for_generator(as_generator(G))  # a fresh generator side, as at each snapshot
        for name in METRICS:
            t = time.time()
            values.update(evaluate(ctx, [name]))
            seconds[name] = time.time() - t
    return build, first, later, values


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--heads", type=int, default=16, help="train.snapshot_metric_heads (the 3D metrics)")
    args = p.parse_args()

    from cgsgan.data.prepare import prepare_data

    cfg = config.tiny()
    data = prepare_data(cfg)  # the tiny config's synthetic heads at 64x64 (generated once, cached)
    G = tiny_generator()
    torch.set_grad_enabled(False)
    load_before = os.getloadavg()
    t0 = time.time()
    runs = {n: measure(n, args.heads, data, G) for n in args.samples}
    wall = time.time() - t0
    load_after = os.getloadavg()

    head = "| metric | " + " | ".join(f"first snapshot, {n} | later snapshot, {n}" for n in args.samples) + " |"
    lines = [
        "# Snapshot metrics on CPU: cost per metric (tiny generator, synthetic heads)",
        "",
        describe(),
        "",
        f"config.tiny() generator ({G.cfg.num_points} points, "
        f"{sum(u.ratio * G.cfg.num_points for u in G.upsample)} Gaussians, 64x64), the tiny config's synthetic heads "
        f"({cfg.data.synthetic_identities} identities x {cfg.data.synthetic_views} views, x-flipped), the cached "
        f"synthetic-heads extractor, render backend {cfg.train.render_backend.value}; "
        f"{args.heads} heads for the 3D metrics. Seconds of wall time, measured through the trainer's "
        "SnapshotMetrics; 'first snapshot' includes what a run computes once (real features, ground-truth renders "
        "at the novel poses, the floors), 'later snapshot' is what every further snapshot costs.",
        "",
        head,
        "|---|" + "---|---|" * len(args.samples),
    ]
    for name in METRICS:
        cells = [f"{runs[n][1][name]:.1f} | {runs[n][2][name]:.1f}" for n in args.samples]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, names in (("main job's metrics (" + ", ".join(MAIN_JOB) + ")", MAIN_JOB), ("all of the above", METRICS)):
        cells = [f"{sum(runs[n][1][m] for m in names):.1f} | {sum(runs[n][2][m] for m in names):.1f}" for n in args.samples]
        lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Building SnapshotMetrics (datasets, split, extractor load; the extractor's one-off training, when it is "
        "not cached yet, included): "
        + ", ".join(f"{runs[n][0]:.1f} s at {n}" for n in args.samples) + ".",
        "",
        f"Load average (1/5/15 min) of the shared machine: {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after ({os.cpu_count()} cores; other jobs ran alongside); "
        f"{wall:.0f} s in all.",
        "",
        "Values at the largest sample count (an untrained generator: not a quality figure; `*_synth` numbers are "
        "never comparable with published FID): "
        + ", ".join(f"{k} {v:.4g}" for k, v in runs[args.samples[-1]][3].items() if "/" not in k) + ".",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
