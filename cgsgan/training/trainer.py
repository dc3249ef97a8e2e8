"""The CGS-GAN training loop: plain PyTorch, one process or one rank of torch.distributed.

Reads top to bottom: build (data, G, D, G_ema, optimisers) -> loop { G step (multi-view),
D step (+ lazy R1), EMA } -> ticks (log), snapshots (samples, distance), checkpoints (full
state). Orchestration hooks in through `Callbacks`; this module imports no Ray/MLflow/S3.

All randomness comes from one explicit torch.Generator per rank whose state is checkpointed,
so a resumed run continues bit-identically.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from cgsgan import camera
from cgsgan.config import CGSGANConfig, from_dict, to_dict, validate
from cgsgan.data.backgrounds import sample_backgrounds
from cgsgan.data.dataset import ImageDataset
from cgsgan.data.synthetic import generate_synthetic
from cgsgan.discriminator import Discriminator
from cgsgan.generator import Generator
from cgsgan.losses import (
    blur,
    blur_sigma,
    check_group_size,
    discriminator_loss,
    multiview_generator_loss,
    r1_penalty,
    view_cameras,
)
from cgsgan.metrics.frechet import RandomFeatures, frechet_distance, gaussian_stats
from cgsgan.render import render
from cgsgan.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from cgsgan.training.samples import save_grid, save_turntable


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is left untouched."""


@dataclass
class Callbacks:
    """Hooks for the orchestration layer; each receives plain values.

    Per tick, on every rank and in this order: on_checkpoint(path, stats) on checkpoint ticks
    (path on the rank that wrote it, rank 0; None elsewhere), then on_tick(stats). Every rank
    calls them the same number of times, so a hook may synchronise ranks (e.g. ray.train.report).
    on_snapshot(info) runs on rank 0 only, with paths of sample images and the metrics.
    """

    on_tick: Callable[[dict], None] | None = None
    on_snapshot: Callable[[dict], None] | None = None
    on_checkpoint: Callable[[Path | None, dict], None] | None = None
    should_stop: Callable[[], bool] | None = None


def synthetic_data_dir(cfg: CGSGANConfig) -> Path:
    d = cfg.data
    root = Path(os.environ.get("CGSGAN_DATA_CACHE", Path.home() / ".cache" / "cgsgan"))
    name = f"synthetic-{cfg.model.resolution}px-{d.synthetic_identities}x{d.synthetic_views}-seed{d.synthetic_seed}"
    return root / name


def prepare_data(cfg: CGSGANConfig) -> Path:
    """The dataset folder: the user's, or the built-in synthetic heads (generated once)."""
    if cfg.data.source == "folder":
        return Path(cfg.data.path)
    out = Path(cfg.data.path) if cfg.data.path else synthetic_data_dir(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Several workers on one node may get here at once: one generates, the others wait.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        d = cfg.data
        generate_synthetic(out, d.synthetic_identities, d.synthetic_views, cfg.model.resolution, d.synthetic_seed)
    return out


class Trainer:
    def __init__(
        self,
        cfg: CGSGANConfig,
        run_dir: str | Path,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        callbacks: Callbacks | None = None,
    ) -> None:
        self.cfg = validate(cfg)
        self.run_dir = Path(run_dir)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.callbacks = callbacks or Callbacks()
        self.extra_state: dict = {}  # owned by the orchestration layer (e.g. the MLflow run id)
        m, t = cfg.model, cfg.train
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        if t.batch_size % world_size:
            raise ValueError(f"train.batch_size={t.batch_size} is not divisible by {world_size} workers")
        self.local_batch = t.batch_size // world_size
        check_group_size(self.local_batch, m.discriminator.mbstd_group)

        # Reals are pasted onto the same background scheme as the renders; the dataset un-mixes
        # the colour they were stored on from the soft mask edges first (no tell-tale fringe).
        data_path = prepare_data(cfg)
        self.dataset = ImageDataset(data_path, resolution=m.resolution, index_list=cfg.data.index_list or None,
                                    xflip=cfg.data.xflip, background=cfg.loss.background, seed=t.seed)
        self._data_path = data_path
        self.all_labels = self.dataset.labels.to(self.device)  # pose distribution for generated views

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.G = Generator(m.generator, m.resolution, camera_conditioned=m.camera_mode == "g_conditioned").to(self.device)
        self.D = Discriminator(m.discriminator, m.resolution, use_camera=m.camera_mode != "d_none").to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=t.g_lr, betas=(t.beta1, t.beta2), eps=1e-8)
        # Lazy R1: D's optimiser is rescaled as in StyleGAN2 so the regulariser's interval
        # does not change the effective learning rate.
        c = cfg.loss.r1_interval / (cfg.loss.r1_interval + 1)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=t.d_lr * c, betas=(t.beta1**c, t.beta2**c), eps=1e-8)

        self.rng = torch.Generator().manual_seed(t.seed * 1000 + rank)
        self.step = 0
        self.cur_nimg = 0
        self.tick = 0
        self.epoch, self.epoch_pos = 0, 0
        self.fixed_z = torch.randn(8, m.generator.z_dim, generator=torch.Generator().manual_seed(123))
        self._tick_stats: dict[str, list[float]] = {}
        self._tick_start = time.time()
        self._tick_start_nimg = 0
        self._maintenance_sec = 0.0  # the previous tick's snapshot, checkpoint and callbacks
        self._real_features: tuple | None = None
        self._metric_cache: dict = {}

    # ---------------------------------------------------------------- data
    def _indices_at(self, epoch: int, pos: int) -> tuple[torch.Tensor, int, int]:
        """This rank's next batch from (epoch, position) in its shard of a per-epoch permutation
        shared by all ranks (same seed), and the (epoch, position) after it."""
        n, out = len(self.dataset), []
        while len(out) < self.local_batch:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.train.seed * 7919 + epoch))
            shard = perm[self.rank :: self.world_size]
            take = shard[pos : pos + self.local_batch - len(out)]
            out.extend(take.tolist())
            pos += len(take)
            if pos >= len(shard):
                epoch, pos = epoch + 1, 0
        return torch.tensor(out), epoch, pos

    def _next_indices(self) -> torch.Tensor:
        indices, self.epoch, self.epoch_pos = self._indices_at(self.epoch, self.epoch_pos)
        return indices

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Reals [b, 3, H, W] on the background scheme (colours fixed per epoch and image), labels [b, 25]."""
        indices = self._next_indices()
        self.dataset.set_epoch(self.epoch)
        items = [self.dataset[int(i)] for i in indices]
        if self.dataset.reads_on_demand:
            # Decode the next batch's files in the background while this step trains.
            upcoming, _, _ = self._indices_at(self.epoch, self.epoch_pos)
            self.dataset.prefetch(upcoming.tolist())
        reals = torch.stack([it["image"] for it in items])
        labels = torch.stack([it["label"] for it in items])
        return reals.to(self.device), labels.to(self.device)

    def _gen_labels(self, n: int) -> torch.Tensor:
        return self.all_labels[torch.randint(len(self.all_labels), (n,), generator=self.rng)]

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.model.generator.z_dim, generator=self.rng).to(self.device)

    # ---------------------------------------------------------------- one step
    def train_step(self) -> None:
        cfg, lc = self.cfg, self.cfg.loss
        b, V, res = self.local_batch, lc.num_views, cfg.model.resolution
        backend = cfg.train.render_backend
        blur_px = blur_sigma(self.cur_nimg, lc.blur_sigma, lc.blur_fade_kimg)
        reals, real_labels = self._real_batch()

        # Generator step: each head generated once, rendered from V cameras of the data's poses.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        cams = view_cameras(self._gen_labels(b), V)  # [b, V, 25]
        bg = sample_backgrounds(lc.background, b * V, self.rng).reshape(b, V, 3).to(self.device)
        g = multiview_generator_loss(
            self.G, self.D, self._z(b), cams, bg, grad_averaging=lc.grad_averaging, resolution=res, blur_px=blur_px,
            knn_k=lc.knn_k, knn_weight=lc.knn_weight, centre_weight=lc.center_weight, backend=backend,
            update_w_avg=True,
        )
        self._check_finite({"G": g.loss, "G_adversarial": g.adversarial, "knn": g.knn, "centre": g.centre})
        self.opt_G.zero_grad(set_to_none=True)
        g.loss.backward()
        self._reduce_and_clip(self.G, lc.g_clip)
        self.opt_G.step()

        # Discriminator step: one view per generated head, reals on the same background scheme.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake_labels = self._gen_labels(b)
            fake_bg = sample_backgrounds(lc.background, b, self.rng).to(self.device)
            gaussians = self.G(self._z(b), fake_labels).gaussians
            fakes = render(gaussians, fake_labels, res, fake_bg, backend=backend).image
        logits_fake = self.D(blur(fakes, blur_px), fake_labels)
        do_r1 = lc.r1_gamma > 0 and self.step % lc.r1_interval == 0
        if do_r1:
            logits_real, r1 = r1_penalty(self.D, blur(reals, blur_px), real_labels)
            r1_term = r1.mean() * (lc.r1_gamma / 2) * lc.r1_interval
        else:
            logits_real = self.D(blur(reals, blur_px), real_labels)
            r1 = r1_term = torch.zeros((), device=self.device)
        d_adv = discriminator_loss(logits_real, logits_fake)
        d_loss = d_adv + r1_term
        self._check_finite({"D": d_loss, "R1": r1_term})
        self.opt_D.zero_grad(set_to_none=True)
        d_loss.backward()
        self._reduce_and_clip(self.D, lc.d_clip)
        self.opt_D.step()

        self._update_ema()
        self.step += 1
        self.cur_nimg += cfg.train.batch_size
        stats = {
            "loss/G": g.loss.item(), "loss/G_adversarial": g.adversarial.item(), "loss/knn": g.knn.item(),
            "loss/centre": g.centre.item(), "loss/D": d_adv.item(), "scores/real": logits_real.mean().item(),
            "scores/fake": logits_fake.mean().item(),
        }  # fmt: skip
        if do_r1:
            stats["loss/R1"] = r1.mean().item()
        for k, v in stats.items():
            self._tick_stats.setdefault(k, []).append(v)

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            if not torch.isfinite(value).all():
                raise TrainingDiverged(
                    f"loss {name} is {value.item()} at step {self.step} ({self.cur_nimg / 1e3:.3f} kimg); "
                    "stopping without writing a checkpoint (the last good one is kept)"
                )

    def _reduce_and_clip(self, model: torch.nn.Module, max_norm: float) -> None:
        """Average gradients over ranks (one flat all-reduce), then clip their norm."""
        params = [p for p in model.parameters() if p.grad is not None]
        if self.world_size > 1 and dist.is_initialized():
            flat = torch.cat([p.grad.flatten() for p in params])
            dist.all_reduce(flat)
            flat /= self.world_size
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad.copy_(g.view_as(p))
        for p in params:  # a NaN gradient would poison the weights silently
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    @torch.no_grad()
    def _update_ema(self) -> None:
        t = self.cfg.train
        ema_nimg = t.ema_kimg * 1000
        if t.ema_rampup > 0:
            ema_nimg = min(ema_nimg, self.cur_nimg * t.ema_rampup)
        beta = 0.5 ** (t.batch_size / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # ---------------------------------------------------------------- loop
    def run(self, max_steps: int | None = None) -> dict:
        """Train until total_kimg (or max_steps more steps, or should_stop()). Returns the last tick stats."""
        t = self.cfg.train
        total_nimg = int(t.total_kimg * 1000)
        tick_nimg = max(1, int(t.tick_kimg * 1000))
        steps_done, last = 0, {}
        if self.cur_nimg == 0 and self.rank == 0:
            # The starting point of the curves: samples and distance of the untrained generator.
            self._append_metrics({"progress/kimg": 0.0, "progress/tick": 0, "time/unix": time.time(), **self.snapshot()})
        self._tick_start = time.time()  # the first tick times training, not set-up or loading
        while self.cur_nimg < total_nimg and (max_steps is None or steps_done < max_steps):
            self.train_step()
            steps_done += 1
            done = self.cur_nimg >= total_nimg
            if self.cur_nimg >= (self.tick + 1) * tick_nimg or done:
                last = self._end_tick(done)
            if self.callbacks.should_stop and self.callbacks.should_stop():
                break
        return last

    def _end_tick(self, done: bool) -> dict:
        t = self.cfg.train
        self.tick += 1
        elapsed = time.time() - self._tick_start
        nimg = self.cur_nimg - self._tick_start_nimg
        stats = {k: sum(v) / len(v) for k, v in self._tick_stats.items()}
        stats.update(
            {
                "progress/kimg": self.cur_nimg / 1e3,
                "progress/tick": self.tick,
                "progress/step": self.step,
                # Training steps only; the housekeeping after a tick is timed on its own (as
                # StyleGAN's "maintenance"), so sec/kimg compares across trackers and clusters.
                "timing/sec_per_kimg": elapsed / max(nimg / 1e3, 1e-9),
                "timing/img_per_sec": nimg / max(elapsed, 1e-9),
                "timing/maintenance_sec": self._maintenance_sec,
                "memory/peak_gb": _peak_memory_gb(self.device),
                "time/unix": time.time(),
            }
        )
        self._tick_stats, self._tick_start_nimg = {}, self.cur_nimg
        housekeeping_start = time.time()
        if self.rank == 0:
            parts = [f"tick {self.tick}", f"kimg {stats['progress/kimg']:.2f}", f"sec/kimg {stats['timing/sec_per_kimg']:.1f}",
                     f"img/s {stats['timing/img_per_sec']:.1f}", f"G {stats.get('loss/G', 0):.3f}",
                     f"D {stats.get('loss/D', 0):.3f}", f"R1 {stats.get('loss/R1', float('nan')):.4f}",
                     f"mem {stats['memory/peak_gb']:.2f}GB"]  # fmt: skip
            print(" | ".join(parts), flush=True)
        snapshot = done or self.tick % t.snapshot_ticks == 0
        if snapshot and self.rank == 0:
            stats.update(self.snapshot(final=done))
        if self.rank == 0:
            self._append_metrics(stats)
        if done or self.tick % t.checkpoint_ticks == 0:
            path = self.save(self.checkpoint_path()) if self.rank == 0 else None
            if self.world_size > 1 and dist.is_initialized():
                dist.barrier()
            if self.callbacks.on_checkpoint:
                self.callbacks.on_checkpoint(path, stats)
        if self.callbacks.on_tick:
            self.callbacks.on_tick(stats)
        self._tick_start = time.time()
        self._maintenance_sec = self._tick_start - housekeeping_start
        return stats

    def _append_metrics(self, stats: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(stats) + "\n")

    # ---------------------------------------------------------------- snapshots
    @torch.no_grad()
    def snapshot(self, final: bool = False) -> dict:
        """Fixed-seed sample grid (and a turntable at the end) from G_ema; the FD-rand distance."""
        res, psi = self.cfg.model.resolution, self.cfg.train.truncation_psi
        folder = self.run_dir / "samples"
        kimg = self.cur_nimg / 1e3
        grid = save_grid(self.G_ema, self.fixed_z, res, psi, folder / f"grid-{kimg:08.3f}kimg.png")
        out = {"metrics/fd_rand": self.distance(), "artifacts/grid": str(grid), "progress/kimg": kimg,
               "progress/step": self.step}
        if self.cfg.train.snapshot_metrics:
            from cgsgan.metrics.evaluation import evaluate_generator

            extra = evaluate_generator(
                self.G_ema, self.dataset, self.cfg.train.snapshot_metrics, num=self.cfg.train.metric_samples,
                num_3d=self.cfg.train.snapshot_metric_heads, backend=self.cfg.train.render_backend,
                resolution=res, cache=self._metric_cache,
            )
            out.update({f"metrics/{k}": v for k, v in extra.items()})
        if final:
            out["artifacts/turntable"] = str(save_turntable(self.G_ema, self.fixed_z[:1], res, psi, folder / "turntable.gif"))
            ply = folder / "sample-seed0.ply"
            self.G_ema(self.fixed_z[:1].to(self.device), camera.frontal_label(1).to(self.device), psi=psi).gaussians.save_ply(ply)
            out["artifacts/ply"] = str(ply)
        if self.callbacks.on_snapshot:
            self.callbacks.on_snapshot(dict(out))
        return {k: v for k, v in out.items() if k.startswith("metrics/")}

    @torch.no_grad()
    def distance(self) -> float:
        """FD-rand between real and generated images (white backgrounds): cheap, CPU, offline."""
        n, res = self.cfg.train.metric_samples, self.cfg.model.resolution
        extractor = RandomFeatures(size=min(64, res))
        g = torch.Generator().manual_seed(99)  # same images and cameras at every snapshot
        if self._real_features is None:
            white = ImageDataset(self._data_path, resolution=res, index_list=self.cfg.data.index_list or None,
                                 background="white")
            idx = torch.randperm(len(white), generator=g)[:n]
            reals = torch.stack([white[int(i)]["image"] for i in idx])
            self._real_features = gaussian_stats(extractor(reals))
        feats = []
        for start in range(0, n, 32):
            m = min(32, n - start)
            z = torch.randn(m, self.cfg.model.generator.z_dim, generator=g).to(self.device)
            labels = self.all_labels[torch.randint(len(self.all_labels), (m,), generator=g)]
            gaussians = self.G_ema(z, labels).gaussians
            feats.append(extractor(render(gaussians, labels, res, backend=self.cfg.train.render_backend).image))
        return frechet_distance(*self._real_features, *gaussian_stats(torch.cat(feats)))

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / f"checkpoint-{self.cur_nimg:010d}.pt"

    def state_dict(self) -> dict:
        return {
            "config": to_dict(self.cfg),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "counters": {"step": self.step, "cur_nimg": self.cur_nimg, "tick": self.tick, "epoch": self.epoch,
                         "epoch_pos": self.epoch_pos},  # fmt: skip
            # One generator per rank; checkpoints are written by rank 0 and every rank restores
            # its own stream by reseeding from (seed, rank, step) when the states are missing.
            "rng": {"trainer": self.rng.get_state(), "torch": torch.get_rng_state()},
            "world_size": self.world_size,
            "extra": dict(self.extra_state),
        }

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        state = load_checkpoint(path)
        saved = from_dict(state["config"])
        if to_dict(saved.model) != to_dict(self.cfg.model):
            raise ValueError(f"{path}: checkpoint of another model shape (its model config differs from this run's)")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        c = state["counters"]
        self.step, self.cur_nimg, self.tick = c["step"], c["cur_nimg"], c["tick"]
        self.epoch, self.epoch_pos = c["epoch"], c["epoch_pos"]
        if self.rank == 0 or state.get("world_size", 1) == 1:
            self.rng.set_state(state["rng"]["trainer"])
        else:
            # Only rank 0's stream is saved: other ranks continue on a stream derived from the step.
            self.rng.manual_seed(self.cfg.train.seed * 1000 + self.rank + 7 * self.step)
        torch.set_rng_state(state["rng"]["torch"])
        self.extra_state = dict(state.get("extra", {}))
        self._tick_start_nimg = self.cur_nimg

    def resume_latest(self) -> Path | None:
        """Load the newest local checkpoint of this run, if any."""
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is not None:
            self.load(path)
        return path


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def load_generator(path: str | Path, ema: bool = True) -> tuple[Generator, CGSGANConfig]:
    """The (EMA) generator and config of a checkpoint, for generation and evaluation."""
    state = load_checkpoint(path)
    cfg = from_dict(state["config"])
    m = cfg.model
    G = Generator(m.generator, m.resolution, camera_conditioned=m.camera_mode == "g_conditioned")
    try:
        G.load_state_dict(state["G_ema" if ema else "G"])
    except RuntimeError as e:
        raise ValueError(f"{path}: generator weights do not fit the model in its config: {e}") from e
    return G.eval().requires_grad_(False), cfg


__all__ = ["Callbacks", "Trainer", "TrainingDiverged", "load_generator", "prepare_data"]
