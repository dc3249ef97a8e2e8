"""The timing half of benchmarks/gpu.sh (one CUDA GPU): training images per second and peak GPU
memory of the reference 512 config at one GPU's share (batch 8, N = 4 views, full G and D steps,
R1 every 16 steps, gsplat), as it trains, with TF32 matmuls, and with bf16 autocast; then
benchmarks/results/gpu.md with the machine, the CUDA tests' outcomes and measured tolerances
(from their JUnit XML), and these figures.

    python benchmarks/gpu.py --junit gpu-tests.xml [--steps 32] [--data DIR] [--phase "what took how long" ...]

The report is rewritten after each variant, so a run stopped by benchmarks/gpu.sh's time limit
still leaves what it measured.

Reference pace: about 15M images in about 3 days on 4 H100s, i.e. about 14.5 images/s per GPU;
the target is at least 1.5 times that per GPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402
from cgsgan import config  # noqa: E402
from cgsgan.data.synthetic import generate_synthetic  # noqa: E402
from cgsgan.training.trainer import Trainer  # noqa: E402

REFERENCE_IMG_PER_SEC = 15e6 / (3 * 86400) / 4  # ~14.5 per H100
TARGET = 1.5
WARMUP = 4  # steps before timing (step 0 builds gsplat's kernels if needed and runs R1)


def config_512(data: Path, autocast_bf16: bool) -> config.CGSGANConfig:
    """The reference 512 config, one GPU's share: batch 8, 4 views, rendered by gsplat (also what
    tests/gpu trains)."""
    cfg = config.ffhq(512)
    cfg.data.path, cfg.data.index_list = str(data), ""
    cfg.train.batch_size = 8
    cfg.loss.num_views = 4
    cfg.train.render_backend = "gsplat"
    cfg.train.autocast_bf16 = autocast_bf16
    cfg.train.snapshot_metrics = []
    return cfg


def time_variant(data: Path, steps: int, autocast_bf16: bool, tf32: bool) -> dict:
    cfg = config_512(data, autocast_bf16)
    cfg.train.allow_tf32 = tf32  # the Trainer sets torch's TF32 switches from it
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, tmp, device="cuda")
        for _ in range(WARMUP):
            t.train_step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):  # R1 at its interval: steps % 16 == 0 of them
            t.train_step()
        torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        stats = t.clock.end_tick(1, t.step, t.cur_nimg, cfg.train.total_kimg)  # raises TrainingDiverged on a non-finite loss
        peak = torch.cuda.max_memory_allocated() / 2**30
        del t
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.cuda.empty_cache()
    return {"sec_per_step": sec / steps, "img_per_sec": steps * 8 / sec, "peak_gib": peak,
            "loss_G": stats["loss/G"], "loss_D": stats["loss/D"]}


def test_report(junit: Path | None) -> list[str]:
    if junit is None or not junit.is_file():
        return ["No CUDA test results (the JUnit XML is missing).", ""]
    root = ET.parse(junit).getroot()
    lines = ["| test | outcome | seconds | measured |", "|---|---|---|---|"]
    counts: dict[str, int] = {}
    for case in root.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
        counts[outcome] = counts.get(outcome, 0) + 1
        props = ", ".join(f"{p.get('name')} {p.get('value')}" for p in case.iter("property"))
        lines.append(f"| {case.get('name')} | {outcome} | {float(case.get('time', 0)):.1f} | {props} |")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return [f"CUDA tests (`tests/gpu`): {summary}.", ""] + lines + [""]


def machine() -> str:
    parts = [describe()]
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        parts.append(f"nvidia-smi: {smi}; CUDA (torch) {torch.version.cuda}.")
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        import gsplat

        parts.append(f"gsplat {gsplat.__version__}.")
    except ImportError as e:
        parts.append(f"gsplat not importable: {e}.")
    return " ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--junit", type=Path)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--data", type=Path, help="synthetic heads at 512 (made there if missing)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.md")
    p.add_argument("--phase", action="append", default=[], help="a line on an earlier phase (kernel build, tests)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU")
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic(args.data or Path(tmp) / "heads", identities=4, views=2, resolution=512, seed=0)
        variants = {"float32 (as trained)": (False, False), "float32, TF32 matmuls": (False, True),
                    "bf16 autocast of G's blocks": (True, False)}
        results: dict = {}
        write_report(args, results, start, len(variants))  # the tests' outcomes, even if no timing finishes
        for name, (ac, tf32) in variants.items():
            results[name] = r = time_variant(data, args.steps, ac, tf32)
            print(f"{name}: {r['img_per_sec']:.1f} img/s, {r['sec_per_step']:.3f} s/step, peak {r['peak_gib']:.1f} GiB",
                  flush=True)
            write_report(args, results, start, len(variants))
    print((args.out).read_text())


def write_report(args: argparse.Namespace, results: dict, start: float, variants: int) -> None:
    lines = ["# The GPU path: CUDA tests and the 512 config on one GPU", "", machine(), "",
             "Made by `bash benchmarks/gpu.sh`.", ""]
    lines += [f"- {phase}" for phase in args.phase] + ([""] if args.phase else [])
    lines += ["## CUDA tests", ""] + test_report(args.junit)
    lines += ["## Training throughput, 512 config, one GPU", "",
              f"Batch 8 per GPU, N = 4 views, full G and D steps, R1 every 16 steps, gsplat; {args.steps} timed steps "
              f"after {WARMUP} warm-up steps. Reference pace {REFERENCE_IMG_PER_SEC:.1f} images/s per H100 "
              f"(about 15M images in 3 days on 4); target {TARGET}x = {TARGET * REFERENCE_IMG_PER_SEC:.1f}.", "",
              "| variant | s / step | images / s | x reference | peak GPU memory (GiB) | mean loss G / D |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        lines.append(f"| {name} | {r['sec_per_step']:.3f} | {r['img_per_sec']:.1f} | "
                     f"{r['img_per_sec'] / REFERENCE_IMG_PER_SEC:.2f} | {r['peak_gib']:.1f} | "
                     f"{r['loss_G']:.3f} / {r['loss_D']:.3f} |")
    done = "" if len(results) == variants else f" ({len(results)} of {variants} variants timed so far)"
    lines += ["", f"Timing wall time {time.time() - start:.0f} s{done}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
