"""The paper's four ablation questions on this machine, to a verdict.

Runs `python sweeps/ablate.py sweep=paper output_dir=OUT` (what a user runs; a finished sweep in OUT
only reports again), then writes benchmarks/results/ablation.md: the machine, its load and the time;
the sweep's table (mean ± std over seeds) and each arm against the reference with its paired
bootstrap and t intervals, Holm's adjusted p and verdict; for each of the paper's claims,
reproduced / not separated / contradicted, with the seeds a paired t test would need for 80% power
at the observed difference where it is not; and, per training seed, the final samples of every arm side by side (same latents; yaw -90 to
90 degrees, the novel views 60-90 included) in benchmarks/results/ablation/.

    python benchmarks/ablation.py [--out runs/ablation-paper] [--no-run] [sweep overrides ...]

The reading (benchmarks/results/ablation/reading.md) is written by hand after looking at the
numbers and the grids; the file is appended as it is. The spreads of the paired differences go to
sweeps/spreads.json (preset "paper"), which the sweep reads to state its power before training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402
from sweeps import significance  # noqa: E402
from sweeps.ablate import SPREADS, axis_values, compared_columns, margins  # noqa: E402
from sweeps.report import Difference, Verdict, paired_differences, write_report  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SWEEP = "paper"
YAWS_DEG = [-90, -75, -60, -30, 0, 30, 60, 75, 90]  # |yaw| >= 60: the novel views of fid_synth_novel
LATENTS = [0, 1, 2, 3]  # the latent seeds of every grid (rows)
READING = RESULTS / "ablation" / "reading.md"


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, as a direction of one arm against the paper's configuration."""

    text: str
    axis: str
    arm: str
    metrics: tuple[str, ...]  # the columns that test it (keys as logged, without "metrics/")
    expected: Verdict  # the arm against the reference, if the claim holds


CLAIMS = [
    Claim("Multi-view regularisation: each head rendered from 4 views per generator step beats 1 view",
          "views", "1", ("geometry", "fid_synth", "fid_synth_novel"), Verdict.worse),
    Claim("Gradient averaging over the views (each view 1/N of the gradient) helps",
          "grad_averaging", "False", ("geometry", "fid_synth", "fid_synth_novel"), Verdict.worse),
    Claim("Without any camera information (d_none) the 3D GAN degrades",
          "camera_mode", "d_none", ("geometry", "fid_synth", "fid_synth_novel"), Verdict.worse),
    Claim("With the camera in the generator (g_conditioned) the head depends on the camera",
          "camera_mode", "g_conditioned", ("sensitivity", "psnr_cond", "fid_synth_novel"), Verdict.worse),
    Claim("A plain white background during training produces artefacts (random colours do not)",
          "background", "white", ("fid_synth_bg", "fid_synth"), Verdict.worse),
]  # fmt: skip


def judge(found: Verdict, expected: Verdict) -> str:
    if found == expected:
        return "reproduced"
    if found in (Verdict.better, Verdict.worse):
        return "contradicted"
    return found.value  # not separated / too few seeds


def spreads(differences: list[Difference]) -> dict[str, float]:
    """Per compared column, the pooled standard deviation of the paired differences of every arm
    whose differences are not all 0 (a metric equal by construction in some arms, sensitivity in
    the camera-free ones, says nothing about the spread where it varies)."""
    out = {}
    for key in dict.fromkeys(d.metric.key for d in differences):
        groups = [d.values for d in differences if d.metric.key == key and any(v != 0 for v in d.values)]
        sd = significance.pooled_sd(groups)
        if sd:
            out[key] = float(f"{sd:.4g}")
    return out


def refresh_spreads(differences: list[Difference], measured: str, path: Path = SPREADS) -> None:
    """sweeps/spreads.json's entry for this preset: the spreads the sweep plans its power with.
    Columns this sweep did not measure (its arms left out) keep their earlier spreads, said so."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    old, new = data.get(SWEEP, {}), spreads(differences)
    kept = {k: v for k, v in old.get("sd", {}).items() if k not in new}
    if kept:
        earlier = old["measured"].split("; kept from")[0]
        measured += f"; kept from an earlier run for {', '.join(sorted(kept))}: {earlier}"
    data[SWEEP] = {"measured": measured, "sd": {**kept, **new}}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def claims_table(differences: list[Difference]) -> list[str]:
    md = ["Each claim as the direction of one arm against the paper's configuration (4 views, gradient averaging, "
          "d_projection, random backgrounds), on the metrics that test it, with the sweep's verdict (Holm's adjusted "
          "p at most 0.05 over the sweep's distinct comparisons and both paired 95% intervals, bootstrap and t, "
          "excluding 0): *reproduced* where it is the claimed direction, *contradicted* where it is the other, *not "
          "separated* otherwise, with the seeds a paired t test at 0.05 / (the comparisons) would need to detect "
          "the observed difference with 80% power if it were the true one (noncentral t: "
          "sweeps/significance.py, seeds_needed). psnr_cond is exactly 100 dB for a camera-free generator by "
          "construction (its renders do not depend on the conditioning camera), so its verdict for g_conditioned "
          "says that the heads depend on the camera at all, which that arm is built to allow; the number (dB) says "
          "how much.", "",
          "| claim | arm | metric | arm − reference [bootstrap] [t] | p (Holm) | verdict | judgement | seeds for 80% power |",
          "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in CLAIMS:
        for key in c.metrics:
            d = next((d for d in differences if (d.axis, d.arm, d.metric.key) == (c.axis, c.arm, key)), None)
            if d is None:
                continue
            iv = ("-" if d.low is None else f"{d.mean:.4g} [{d.low:.4g}, {d.high:.4g}] [{d.t_low:.4g}, {d.t_high:.4g}]")
            p = "-" if d.p is None else f"{d.p:.2g} ({d.p_adjusted:.2g})"
            md.append(f"| {c.text} | {c.axis}={c.arm} | {key} ({d.metric.better.value} is better) | {iv} | {p} | "
                      f"{d.verdict.value} | {judge(d.verdict, c.expected)} | {d.seeds_needed or '-'} |")  # fmt: skip
    return md


def camera_bias(rows: list[dict]) -> list[str]:
    """The paper's FID3D test within each camera mode's trials: FID3D (conditioned on the frontal
    camera, rendered from dataset cameras) minus FID, paired by trial; 0 for a camera-free G."""
    from sweeps.report import interval, t_interval

    out = ["FID3D − FID within each camera mode's trials (the paper's test of camera bias: exactly 0 for a "
           "camera-free generator, above 0 where the head follows the conditioning camera), paired by trial:", "",
           "| camera_mode | trials | FID3D − FID per trial | mean [bootstrap] [t] | seeds for 80% power |", "|---|---|---|---|---|"]
    for mode in dict.fromkeys(r["camera_mode"] for r in rows):
        done = [r for r in rows if r["camera_mode"] == mode and not r.get("error") and r["views"] == 4
                and r["background"] == "random" and r["grad_averaging"] in (True, "True")]  # fmt: skip
        a = [r["metrics/fid3d_synth"] for r in done]
        b = [r["metrics/fid_synth"] for r in done]
        diffs = [x - y for x, y in zip(a, b)]
        if len(diffs) < 3:
            continue
        (lo, hi), (tlo, thi) = interval(a, b), t_interval(a, b)
        sd = statistics.stdev(diffs)
        need = (significance.seeds_needed(abs(statistics.fmean(diffs)) / sd, significance.ALPHA)
                if sd > 0 and not (tlo > 0 or thi < 0) else None)  # fmt: skip
        out.append(f"| {mode} | {len(diffs)} | {', '.join(f'{d:.4g}' for d in diffs)} | {statistics.fmean(diffs):.4g} "
                   f"[{lo:.4g}, {hi:.4g}] [{tlo:.4g}, {thi:.4g}] | {need or '-'} |")  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------ grids
def grids(out: Path, rows: list[dict], dest: Path) -> list[Path]:
    """Per training seed, every configuration's final EMA generator at the same latents and yaws,
    stacked with a label: dest/grid-seed<s>.png."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from cgsgan import camera
    from cgsgan.generate import latents
    from cgsgan.training.checkpoint import load_generator, open_checkpoint
    from cgsgan.training.samples import render_views, to_uint8

    yaws = torch.tensor([math.radians(y) for y in YAWS_DEG])
    labels = camera.make_label(camera.pose_from_angles(yaws, torch.zeros_like(yaws)), camera.intrinsics(batch=len(yaws)))
    dest.mkdir(parents=True, exist_ok=True)
    order = list(dict.fromkeys(r["config"] for r in rows))
    written = []
    for seed in sorted({r["seed"] for r in rows}):
        panels = []
        for config in order:
            row = next((r for r in rows if r["config"] == config and r["seed"] == seed and not r.get("error")), None)
            if row is None:
                continue
            run = next((out / "ray_results" / SWEEP).glob(f"{SWEEP}-{row['trial']}-*"))
            with open_checkpoint(str(run), say=lambda m: None) as path:
                G, cfg = load_generator(path)
            views = render_views(G, latents(LATENTS, cfg.model.generator.z_dim), labels, cfg.model.resolution, 0.8)
            B, V = views.shape[:2]
            images = to_uint8(views.flatten(0, 1))  # [B * V, H, W, 3]
            H, W = images.shape[1:3]
            images = images.reshape(B, V, H, W, 3)
            panel = images.transpose(0, 2, 1, 3, 4).reshape(B * H, V * W, 3)
            strip = Image.new("RGB", (V * W, 14), "white")
            ImageDraw.Draw(strip).text((2, 1), f"{config}  (trained with seed {seed})", fill="black")
            panels.append(np.concatenate([np.asarray(strip), panel]))
        head = Image.new("RGB", (panels[0].shape[1], 14), "white")
        draw, width = ImageDraw.Draw(head), panels[0].shape[1] // len(YAWS_DEG)
        for i, y in enumerate(YAWS_DEG):  # each column's yaw; the novel ones (|yaw| >= 60) in red
            draw.text((i * width + 2, 1), f"{y:+d}", fill="red" if abs(y) >= 60 else "black")
        path = dest / f"grid-seed{seed}.png"
        Image.fromarray(np.concatenate([np.asarray(head), *panels])).save(path)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------- report
def load_samples(path: Path) -> list[str]:
    """The load log: one 'HH:MM:SS load1 load5 load15 ...' line a minute."""
    return path.read_text().splitlines() if path.is_file() else []


def sweep_config(overrides: list[str]):
    """The sweep's config as `sweeps/ablate.py sweep=paper OVERRIDES` builds it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "sweeps" / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("ablate", overrides=[f"sweep={SWEEP}", *overrides]))


def write(out: Path, wall_s: float | None, extra: list[str]) -> Path:
    folder = out / "sweeps" / SWEEP
    rows = json.loads((folder / "comparison.json").read_text())
    # The sweep's report made again from its trials with this checkout's sweeps/report.py (the
    # sweep wrote the same files at its end, with the code it ran).
    cfg = sweep_config(extra)
    axes, columns = axis_values(cfg.sweep), compared_columns(cfg)
    write_report(rows, axes, folder, columns, margins(cfg.sweep))
    differences = paired_differences(rows, axes, columns, margins(cfg.sweep))
    table = (folder / "comparison.md").read_text()
    times = []
    for r in rows:
        run = next((out / "runs").glob(f"{SWEEP}-{r['trial']}-*"), None)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if run else []
        stamps = [x["time/unix"] for x in lines if "time/unix" in x]
        if stamps:
            times.append((min(stamps), max(stamps)))
    trained = (max(e for _, e in times) - min(s for s, _ in times)) / 60 if times else float("nan")
    started = (f"{datetime.fromtimestamp(min(s for s, _ in times), timezone.utc):%Y-%m-%d %H:%M} UTC" if times
               else "at an unknown time")  # fmt: skip
    loads = [float(x.split()[1]) for x in load_samples(out / "load.log") if len(x.split()) > 1]
    load = (f"load average (1 min) sampled every minute during the sweep: median {statistics.median(loads):.1f}, "
            f"range {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores" if loads else "load not sampled")
    md = [f"# The paper's ablations on the tiny model (CPU): {len(rows)} trials, verdicts with intervals", "",
          describe(), "",
          f"`python sweeps/ablate.py sweep=paper` ({extra and ' '.join(extra) or 'no overrides'}), trials from {started}: "
          f"the tiny model on the synthetic heads, {len({r['config'] for r in rows})} configurations x seeds "
          f"{sorted({r['seed'] for r in rows})}, {rows[0].get('kimg')} kimg each, {cfg.sweep.max_concurrent or 'as many'} "
          f"trial(s) at a time with {cfg.train.num_threads or 'the default number of'} torch thread(s) each. Trials trained from the first start to the last end in {trained:.0f} min"
          + (f"; the whole command took {wall_s / 60:.0f} min" if wall_s else "") + f"; {load}.", "",
          f"The synthetic heads' poses: yaw ~ N(0, {math.degrees(cfg.data.synthetic_yaw_std):.0f} degrees) clamped at "
          f"{math.degrees(cfg.data.synthetic_yaw_limit):.0f} (data.synthetic_yaw_std / _limit). Metrics at the end of "
          f"training from {cfg.train.metric_samples} generated images against the seed-independent reference "
          "half of the heads (floors: held-out reals of other identities), with the synthetic-heads feature network; "
          "the FID columns as ratios to their floors are what the calibration reads (tests/unit/"
          "test_metrics_calibration.py: a true 3D head within 2x). `geometry` compares silhouettes and depth "
          "profiles at yaw -90..90 with the ground truth's, no feature network: 1 = the ground truth's geometry, "
          "0 = a card (cgsgan/metrics/geometry.py). The novel views are yaw 60-90 degrees, pitch +-25, against "
          "ground-truth renders at the same poses (with a spread this wide, a part of the training poses lies there "
          "too); the background FID composites generated heads and masked reals on the same solid non-white "
          "colours.", "",
          "## The sweep's comparison (sweeps/report.py)", "", table, "", "![comparison](ablation/comparison.png)", "",
          "## The paper's claims", "", *claims_table(differences)]  # fmt: skip
    md += ["", *camera_bias(rows)]
    md += ["", "## Samples, every arm side by side", "",
           f"Rows: latent seeds {LATENTS} (truncation 0.8) of each configuration's final EMA generator, the same "
           f"latents in every panel; columns: yaw {YAWS_DEG} degrees at pitch 0 (|yaw| >= 60, in red: the novel "
           "views' band). One file per training seed:", ""]  # fmt: skip
    md += [f"- seed {s}: ![grid seed {s}](ablation/grid-seed{s}.png)" for s in sorted({r["seed"] for r in rows})]
    # The reading, written by hand after looking at the numbers and the grids, kept across reruns.
    if READING.is_file():
        md += ["", READING.read_text().rstrip()]
    path = RESULTS / "ablation.md"
    path.write_text("\n".join(md) + "\n")
    refresh_spreads(differences, f"by benchmarks/ablation.py from sweep=paper ({len(rows)} trials, "
                    f"{rows[0].get('kimg')} kimg, seeds {sorted({r['seed'] for r in rows})}; trials from {started})")
    return path


def sample_load(path: Path, stop: threading.Event) -> None:
    with open(path, "a") as f:
        while not stop.is_set():
            f.write(f"{datetime.now(timezone.utc):%H:%M:%S} {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
            f.flush()
            stop.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "ablation-paper"))
    p.add_argument("--no-run", action="store_true", help="only write the results of the sweep in --out")
    args, overrides = p.parse_known_args()
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    wall = None
    if not args.no_run:
        stop = threading.Event()
        threading.Thread(target=sample_load, args=(out / "load.log", stop), daemon=True).start()
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(ROOT / "sweeps" / "ablate.py"), f"sweep={SWEEP}",
                              f"output_dir={out}", *overrides], cwd=ROOT)  # fmt: skip
        wall = time.time() - t0
        stop.set()
        if rc != 0:
            sys.exit(f"the sweep failed (exit {rc}); its trials are in {out}: run again to resume it")
    folder = out / "sweeps" / SWEEP
    dest = RESULTS / "ablation"
    dest.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write(out, wall, overrides)}")  # remakes the sweep's report (comparison.png too)
    (dest / "comparison.png").write_bytes((folder / "comparison.png").read_bytes())
    rows = json.loads((folder / "comparison.json").read_text())
    for g in grids(out, rows, dest):
        print(f"wrote {g}")


if __name__ == "__main__":
    main()
