"""Tick accounting: what one tick of training reports, and the console lines.

Per-step statistics stay on the device, summed over the tick, and are read once at its end (a
read is a device sync). Speed covers the tick's training steps only; the housekeeping after a
tick (snapshot, checkpoint, callbacks) is timed on its own, as StyleGAN's "maintenance", so
sec/kimg compares across trackers and clusters. The ETA extrapolates this process's pace.
"""

from __future__ import annotations

import math
import resource
import time

import torch


# The prefix of a snapshot's metrics among the stats a run reports ("metrics/fid_synth"): the
# tracker, the sweep's table and the console read them by it.
METRIC_PREFIX = "metrics/"


def metric_key(name: str) -> str:
    """The key a metric of the registry is reported under."""
    return METRIC_PREFIX + name


def metric_stats(stats: dict) -> dict:
    """The metrics among reported stats, keys as reported."""
    return {k: v for k, v in stats.items() if k.startswith(METRIC_PREFIX)}


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is left untouched."""


class TickClock:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._tick_start, self._tick_start_nimg = time.time(), 0
        self._run_start = (self._tick_start, 0)  # (time, images) when this process started training
        self._maintenance_sec = 0.0  # the previous tick's housekeeping

    def start_run(self, cur_nimg: int) -> None:
        """Training starts (or resumes) at cur_nimg: the first tick times training, not set-up."""
        self._tick_start, self._tick_start_nimg = time.time(), cur_nimg
        self._run_start = (self._tick_start, cur_nimg)

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        """One step's (or chunk's) statistics, kept on the device."""
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0) + v.detach()
            self._counts[k] = self._counts.get(k, 0) + 1

    def end_tick(self, tick: int, step: int, cur_nimg: int, total_kimg: float) -> dict[str, float]:
        """The ended tick's report: the mean of every statistic (one read from the device),
        progress, speed, memory and ETA. Raises TrainingDiverged, before anything is saved,
        if a statistic is not finite."""
        names = list(self._sums)
        values = torch.stack([self._sums[k] / self._counts[k] for k in names]).tolist() if names else []
        self._sums, self._counts = {}, {}
        stats = dict(zip(names, values))
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(
                f"loss {bad[0].split('/')[-1]} is {stats[bad[0]]} in tick {tick} (up to step {step}, "
                f"{cur_nimg / 1e3:.3f} kimg); stopping without writing a checkpoint (the last good one is kept)"
            )
        now = time.time()
        elapsed, nimg = now - self._tick_start, cur_nimg - self._tick_start_nimg
        run_sec, run_nimg = now - self._run_start[0], cur_nimg - self._run_start[1]
        # Never negative: the last step may overshoot total_kimg by part of a batch.
        eta = max(0.0, total_kimg * 1000 - cur_nimg) * run_sec / max(run_nimg, 1)
        stats.update({
            "progress/kimg": cur_nimg / 1e3,
            "progress/tick": tick,
            "progress/step": step,
            "timing/sec_per_kimg": elapsed / max(nimg / 1e3, 1e-9),
            "timing/img_per_sec": nimg / max(elapsed, 1e-9),
            "timing/maintenance_sec": self._maintenance_sec,
            "timing/eta_sec": eta,
            "memory/peak_gb": peak_memory_gb(self.device),
            "time/unix": now,
        })  # fmt: skip
        self._tick_start_nimg = cur_nimg
        self._housekeeping_start = now
        return stats

    def end_housekeeping(self) -> None:
        """The tick's snapshot, checkpoint and callbacks are done: the next tick starts now."""
        self._tick_start = time.time()
        self._maintenance_sec = self._tick_start - self._housekeeping_start


def kimg_text(kimg: float) -> str:
    """kimg with every digit an image count has, and at least two decimals (0.004, 0.25, 6.00, 1234.567)."""
    text = f"{kimg:.3f}"
    return text[:-1] if text.endswith("0") else text


def tick_line(stats: dict, total_kimg: float) -> str:
    """One console line per tick: progress, speed, losses (R1 only in ticks that ran it), memory, ETA."""
    eta = max(0, int(stats["timing/eta_sec"]))
    parts = [f"tick {stats['progress/tick']}", f"kimg {kimg_text(stats['progress/kimg'])}/{total_kimg:g}",
             f"sec/kimg {stats['timing/sec_per_kimg']:.1f}", f"img/s {stats['timing/img_per_sec']:.1f}",
             f"G {stats.get('loss/G', 0):.3f}", f"D {stats.get('loss/D', 0):.3f}"]  # fmt: skip
    if "loss/R1_penalty" in stats:
        parts.append(f"R1 {stats['loss/R1_penalty']:.4f}")
    parts += [f"mem {stats['memory/peak_gb']:.2f}GB", f"eta {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"]
    return " | ".join(parts)


def snapshot_line(stats: dict) -> str | None:
    """The snapshot's metrics on one console line, each distance with its multiple of the floor
    (the real-vs-held-out distance); None when the snapshot computed no metric."""
    metrics = {k.removeprefix(METRIC_PREFIX): v for k, v in metric_stats(stats).items()}
    # Each distance once (its floor, ratio and spread beside it), no per-attribute breakdowns.
    shown = {k: v for k, v in metrics.items() if not k.endswith(("_floor", "_ratio", "_std")) and "/" not in k}
    if not shown:
        return None
    parts = [f"snapshot kimg {kimg_text(stats['progress/kimg'])}"]
    for name, value in shown.items():
        ratio, std = metrics.get(f"{name}_ratio"), metrics.get(f"{name}_std")
        parts.append(f"{name} {value:.4g}" + (f" ± {std:.2g}" if std is not None else "")
                     + (f" ({ratio:.2f}x floor)" if ratio is not None else ""))
    return " | ".join(parts)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


__all__ = ["TickClock", "TrainingDiverged", "kimg_text", "peak_memory_gb", "snapshot_line", "tick_line"]
