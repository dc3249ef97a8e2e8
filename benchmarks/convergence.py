"""Convergence of the tiny config on the built-in synthetic heads, on this machine's CPUs.

Trains `config.tiny()` (the main job's model and schedule knobs, only a longer budget) for at most
`--minutes` of wall time and records, at every snapshot, fid_synth and fid3d_synth (synthetic-heads
features, see cgsgan/metrics/extractor.py) with the real-vs-held-out floor, and the geometry score
against the synthetic heads' exact geometry (docs/metrics.md). Writes
benchmarks/results/convergence.md (the curve, the config, the machine) and, beside it, the final
sample grid and turntable in benchmarks/results/convergence/.

    python benchmarks/convergence.py [--minutes 60 --snapshot-kimg 4 --threads 0 --out runs/convergence]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402
from cgsgan import config  # noqa: E402
from cgsgan.training.trainer import Callbacks, Trainer  # noqa: E402

# Issue 27's targets for an hour on this machine: a head's geometry, and fid_synth near its floor.
TARGET_GEOMETRY = 0.95
TARGET_RATIO = 1.3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--snapshot-kimg", type=float, default=4.0)
    p.add_argument("--out", default=str(ROOT / "runs" / "convergence"))
    p.add_argument("--metric-samples", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the tiny config's)")
    args = p.parse_args()

    cfg = config.tiny()
    cfg.train.total_kimg = 10_000.0  # the wall-clock budget ends the run
    cfg.train.tick_kimg = 0.5
    cfg.train.snapshot_ticks = max(1, round(args.snapshot_kimg / cfg.train.tick_kimg))
    cfg.train.checkpoint_ticks = cfg.train.snapshot_ticks
    cfg.train.snapshot_metrics = ["fid", "fid3d", "geometry"]
    cfg.train.feature_extractor = "synthetic"
    cfg.train.metric_samples = args.metric_samples
    if args.threads:
        cfg.train.num_threads = args.threads  # e.g. 1 when something else shares the cores

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    deadline = time.time() + args.minutes * 60
    trainer = Trainer(cfg, out, callbacks=Callbacks(should_stop=lambda: time.time() > deadline))
    start = time.time()
    trainer.run()
    trainer.snapshot(final=True)  # samples, turntable and metrics where the budget ended
    minutes = (time.time() - start) / 60

    rows, t0 = [], None
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        t0 = t0 if t0 is not None else rec["time/unix"]
        if "metrics/fid_synth" in rec:
            rows.append((rec["progress/kimg"], (rec["time/unix"] - t0) / 60, rec["metrics/fid_synth"],
                         rec["metrics/fid3d_synth"], rec["metrics/fid_synth_floor"], rec["metrics/geometry"]))
    final = trainer.snapshot()  # the same numbers as the last snapshot, for the table's last row
    rows.append((trainer.cur_nimg / 1e3, minutes, final["metrics/fid_synth"], final["metrics/fid3d_synth"],
                 final["metrics/fid_synth_floor"], final["metrics/geometry"]))

    results = ROOT / "benchmarks" / "results"
    media = results / "convergence"
    media.mkdir(parents=True, exist_ok=True)
    grids = sorted((out / "samples").glob("grid-*.png"))
    shutil.copy(grids[-1], media / "grid-final.png")
    shutil.copy(out / "samples" / "turntable.gif", media / "turntable.gif")
    floor = rows[-1][4]
    lines = [
        "# Convergence: the tiny config on the synthetic heads, CPU only",
        "",
        describe(),
        "",
        f"Budget {args.minutes:g} minutes of wall time; reached {trainer.cur_nimg / 1e3:.1f} kimg in {minutes:.1f} minutes "
        f"({trainer.step} steps of batch {cfg.train.batch_size}, {cfg.loss.num_views} views per head, "
        f"{cfg.train.num_threads} torch thread(s)).",
        f"Metrics from {cfg.train.metric_samples} generated images per snapshot against the reference half of the data; "
        f"the floor is the same distance for {cfg.train.metric_samples} held-out real images "
        f"(other identities): {floor:.1f}. geometry on {cfg.train.snapshot_metric_heads} heads "
        "(1 = the ground truth's, 0 = a card).",
        f"Synthetic heads' pose spread: yaw std {cfg.data.synthetic_yaw_std:g}, limit {cfg.data.synthetic_yaw_limit:g} rad.",
        "",
        "| kimg | minutes | fid_synth | fid3d_synth | fid_synth / floor | geometry |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {k:.1f} | {m:.1f} | {f:.1f} | {f3:.1f} | {f / fl:.2f} | {g:.2f} |" for k, m, f, f3, fl, g in rows]
    ratio, geometry = rows[-1][2] / floor, rows[-1][5]
    lines += ["", f"Final fid_synth / floor: **{ratio:.2f}** (target <= {TARGET_RATIO:g}: "
              f"{'met' if ratio <= TARGET_RATIO else 'not met'}); geometry **{geometry:.2f}** (target >= "
              f"{TARGET_GEOMETRY:g}: {'met' if geometry >= TARGET_GEOMETRY else 'not met'}).", "",
              "Final samples (rows: seeds; columns: yaw -45 .. 45 degrees; truncation psi "
              f"{cfg.train.truncation_psi}): ![grid](convergence/grid-final.png); turntable: "
              "[convergence/turntable.gif](convergence/turntable.gif).", "",
              "## Config", "", "```json", json.dumps(config.to_dict(cfg), indent=1), "```"]
    (results / "convergence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(rows) + 12]))


if __name__ == "__main__":
    main()
