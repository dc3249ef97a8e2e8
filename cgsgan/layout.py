"""How one training step's global batch is laid out over workers and per-worker chunks.

    global batch = workers x chunks x batch_gpu

Each worker (one GPU) takes batch_size / workers images and processes them `batch_gpu` at a time:
per chunk a forward and backward with its own minibatch-std groups and its own roll of the view
cameras, the running gradient clipped after each chunk; the workers' gradients are then averaged.
That is the reference's update (training_loop.py: `--batch-gpu`), which is therefore defined per
layout: 1 x (4 x 8) and 4 x (1 x 8) are the same method, while a chunk below the minibatch-std
group or the number of views is not: its groups would hold fewer heads than configured (one
head: minibatch discrimination off) and its rolled views would repeat poses (one head: the
multi-view loss turns single-view). `check_batch` refuses those layouts before anything runs.

The learning rates belong to the reference batch of 32 (REFERENCE_BATCH). A larger global batch
(past 8 GPUs at 4 per GPU) is a deviation from the paper, so how the rates follow it is a named
choice (`LRScaling`), not a side effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cgsgan.config import REFERENCE_BATCH, CGSGANConfig, ConfigError, LRScaling


@dataclass(frozen=True)
class BatchLayout:
    workers: int
    chunks: int  # per worker and step
    batch_gpu: int  # images per chunk

    @property
    def per_worker(self) -> int:
        return self.chunks * self.batch_gpu

    @property
    def batch_size(self) -> int:
        return self.workers * self.per_worker

    def __str__(self) -> str:
        return f"{self.workers} x ({self.chunks} x {self.batch_gpu})"


def min_chunk(cfg: CGSGANConfig) -> int:
    """The smallest chunk that keeps the method: a full minibatch-std group of distinct heads and
    as many distinct poses as views."""
    return max(cfg.model.discriminator.mbstd_group, cfg.loss.num_views)


def check_batch(cfg: CGSGANConfig, workers: int, workers_key: str = "workers") -> BatchLayout:
    """The layout of `cfg`'s batch on `workers` workers; ConfigError, in one line that names the
    keys and the nearest valid layouts, for a layout that does not divide or that would switch
    off minibatch-std or multi-view. `workers_key` is how the caller's config names the worker
    count (e.g. cluster.num_workers)."""
    t, group, views = cfg.train, cfg.model.discriminator.mbstd_group, cfg.loss.num_views
    need = min_chunk(cfg)
    keys = f"train.batch_size={t.batch_size}, train.batch_gpu={t.batch_gpu}, {workers_key}={workers}"
    if workers < 1:
        raise ConfigError(f"{workers_key}={workers}: must be >= 1")
    if t.batch_size % workers:
        raise ConfigError(f"{keys}: the batch does not divide over the workers; {_nearest(cfg, workers, workers_key)}")
    per_worker = t.batch_size // workers
    chunk = t.batch_gpu or per_worker
    if per_worker % chunk:
        raise ConfigError(f"{keys}: {per_worker} image(s) per worker do not split into chunks of {chunk}; "
                          f"{_nearest(cfg, workers, workers_key)}")
    if chunk < need or chunk % group:
        raise ConfigError(
            f"{keys}: chunks of {chunk} image(s) per worker, below max(model.discriminator.mbstd_group={group}, "
            f"loss.num_views={views}) = {need} or not a multiple of the group, which would switch off minibatch-std "
            f"or multi-view; {_nearest(cfg, workers, workers_key)}"
        )
    return BatchLayout(workers=workers, chunks=per_worker // chunk, batch_gpu=chunk)


def valid(cfg: CGSGANConfig, batch_size: int, workers: int, batch_gpu: int) -> bool:
    group, need = cfg.model.discriminator.mbstd_group, min_chunk(cfg)
    if batch_size % workers:
        return False
    per_worker = batch_size // workers
    chunk = batch_gpu or per_worker
    return per_worker % chunk == 0 and chunk >= need and chunk % group == 0


def _nearest(cfg: CGSGANConfig, workers: int, workers_key: str) -> str:
    """Valid layouts close to the asked one: the same batch on as many workers as fit (keeping the
    asked chunk where it fits), and the same workers with the smallest valid batch at least as large."""
    t, group = cfg.train, cfg.model.discriminator.mbstd_group
    layouts: list[tuple[int, int, int]] = []  # (batch_size, batch_gpu, workers)
    for bg in (t.batch_gpu, 0):
        fewer = [w for w in range(min(workers, t.batch_size), 0, -1) if valid(cfg, t.batch_size, w, bg)]
        if fewer:
            layouts.append((t.batch_size, bg or t.batch_size // fewer[0], fewer[0]))
            break
    chunk = group * math.ceil(min_chunk(cfg) / group)  # the smallest multiple of the group >= the minimum
    per_worker = max(chunk, math.ceil(t.batch_size / workers / chunk) * chunk)
    layouts.append((per_worker * workers, chunk, workers))
    unique = list(dict.fromkeys(layouts))
    return "valid: " + " or ".join(f"train.batch_size={b} train.batch_gpu={g} {workers_key}={w}" for b, g, w in unique) + \
        " (see the README's layout table)"


def scaled_lr(lr: float, batch_size: int, policy: LRScaling) -> float:
    """A learning rate given for the reference batch of 32, at `batch_size` under `policy`."""
    ratio = batch_size / REFERENCE_BATCH
    return lr * {LRScaling.none: 1.0, LRScaling.sqrt: math.sqrt(ratio), LRScaling.linear: ratio}[LRScaling(policy)]


__all__ = ["BatchLayout", "LRScaling", "check_batch", "min_chunk", "scaled_lr"]
