"""The CGS-GAN training loop: plain PyTorch, one process or one rank of torch.distributed.

One step, in the reference's order (training_loop.py + loss.py). The worker's part of the global
batch is processed in chunks of train.batch_gpu images (cgsgan.layout); each phase runs over all
chunks, each chunk's loss (its mean) back-propagated into the running gradient, which is clipped
after every chunk, then averaged over the workers (one flat all-reduce) for one optimiser step:

    G      each chunk's heads generated once and rendered from V cameras (the chunk's labels
           rolled), random backgrounds; non-saturating loss with each view weighted 1/V, + kNN
           and centre terms on the level-0 anchors; backward, clip
    D      per chunk new heads, one render each: softplus(D(fake)) backward, clip;
           softplus(-D(real)) backward, clip; the mapping's w average tracks each chunk's w
    R1     every r1_interval steps its own D phase: gamma/2 ||dD/dx||^2 x interval, clip per chunk
    EMA    G_ema <- lerp(G, G_ema, 0.5^(batch / half-life))

Minibatch-std groups and view rolls therefore never span chunks or workers: a chunk is what one
of the reference's GPUs sees at a time. Ticks log (cgsgan.training.ticks), snapshots write
samples and metrics, checkpoints hold the full state. Orchestration hooks in through `Callbacks`;
this module imports no Ray/MLflow/S3.

Several workers (torch.distributed, one rank per process): one global sample order
(cgsgan.data.order), of which rank r takes every W-th sample of each global batch; rank r's
random stream in step s (latents, cameras, backgrounds) is a torch.Generator seeded from
SeedSequence([train.seed, r, s]) at the step's first draw: a function of (seed, rank, step)
alone, so no rank's stream state needs saving. The step's draws are made for the worker's whole
part before it is split into chunks, so they do not depend on batch_gpu.

Checkpoints are written by rank 0 and hold everything the ranks share (weights, optimiser
states, counters, the global data position). Resuming, with the same or another layout (the
global batch must stay valid for it), continues the same global sample order from the saved
position, and every rank draws the stream of (seed, its rank, step): the same resume always
gives bit-identical weights, and a resume with as many workers as before continues exactly as
the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from cgsgan import camera
from cgsgan.config import REFERENCE_BATCH, CGSGANConfig, MetricsAt, from_dict, to_dict, validate
from cgsgan.data.backgrounds import sample_backgrounds
from cgsgan.data.dataset import BatchLoader, ImageDataset
from cgsgan.data.order import DATA_ORDER, SampleOrder
from cgsgan.data.prepare import prepare_data
from cgsgan.layout import check_batch, scaled_lr
from cgsgan.losses import (
    blur_sigma,
    discriminator_fake_loss,
    discriminator_real_loss,
    generator_loss,
    r1_loss,
    view_cameras,
)
from cgsgan.models import build_models
from cgsgan.render import render
from cgsgan.training.checkpoint import checkpoint_name, load_checkpoint, save_checkpoint
from cgsgan.training.samples import save_grid, save_turntable
from cgsgan.training.ticks import TickClock, TrainingDiverged, metric_key, metric_stats, snapshot_line, tick_line


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


@dataclass
class StepInputs:
    """One worker's draws for one step (b images: its part of the global batch, or one chunk)."""

    reals: torch.Tensor  # [b, 3, H, W] on the background scheme
    real_labels: torch.Tensor  # [b, 25]
    g_labels: torch.Tensor  # [b, 25] the G phase's poses; each head's V cameras roll them (view_cameras)
    g_z: torch.Tensor  # [b, z_dim]
    g_backgrounds: torch.Tensor  # [b, V, 3]
    d_labels: torch.Tensor  # [b, 25] the D phase's fakes
    d_z: torch.Tensor  # [b, z_dim]
    d_backgrounds: torch.Tensor  # [b, 3]

    def chunks(self, size: int) -> list[StepInputs]:
        """Consecutive chunks of `size` images (the reference splits each phase's batch so)."""
        parts = {f.name: getattr(self, f.name).split(size) for f in fields(self)}
        return [StepInputs(**{k: v[i] for k, v in parts.items()}) for i in range(len(parts["reals"]))]


class Trainer:
    def __init__(
        self,
        cfg: CGSGANConfig,
        run_dir: str | Path,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        callbacks: Callbacks | None = None,
        data_checked: bool = False,  # the launcher ran check_dataset on cfg.data.path: headers not re-read
    ) -> None:
        self.cfg = validate(cfg)
        self.layout = check_batch(cfg, world_size)  # workers x chunks x batch_gpu, or ConfigError
        self.run_dir = Path(run_dir)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.callbacks = callbacks or Callbacks()
        self.extra_state: dict = {}  # owned by the orchestration layer (e.g. the MLflow run id)
        m, t, lc = cfg.model, cfg.train, cfg.loss
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        # The reference turns TF32 off for accuracy; these are process-wide, as training is.
        torch.backends.cuda.matmul.allow_tf32 = t.allow_tf32
        torch.backends.cudnn.allow_tf32 = t.allow_tf32
        # As the reference: cuDNN picks its fastest convolution algorithms for the (fixed) shapes.
        torch.backends.cudnn.benchmark = True

        # Reals are pasted onto the same background scheme as the renders; the dataset un-mixes
        # the colour they were stored on from the soft mask edges first (no tell-tale fringe).
        self.data_path = prepare_data(cfg)
        self.dataset = ImageDataset(self.data_path, resolution=m.resolution, index_list=cfg.data.index_list or None,
                                    xflip=cfg.data.xflip, background=lc.background, seed=t.seed,
                                    headers_checked=data_checked)
        self.loader = BatchLoader(self.dataset, pin=self.device.type == "cuda")
        self.all_labels = self.dataset.labels.to(self.device)  # the pose distribution of generated views
        self.order = SampleOrder(len(self.dataset), t.seed, rank, world_size, self.layout.per_worker)

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        G, D = build_models(m)
        self.G, self.D = G.to(self.device), D.to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        g_lr, d_lr = (scaled_lr(lr, t.batch_size, t.lr_scaling) for lr in (t.g_lr, t.d_lr))
        # fused: one kernel for all parameters (on CPU torch otherwise loops over them in Python).
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=g_lr, betas=(t.beta1, t.beta2), eps=1e-8, fused=True)
        # Lazy R1 (StyleGAN2): D's optimiser is rescaled so the extra steps do not change its
        # effective learning rate and momentum.
        c = lc.r1_interval / (lc.r1_interval + 1)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=d_lr * c, betas=(t.beta1**c, t.beta2**c), eps=1e-8,
                                      fused=True)

        # This rank's random stream, reseeded from (seed, rank, step) at each step's first draw (`rng`).
        self._rng = torch.Generator()
        self._rng_step: int | None = None
        self.step = 0
        self.cur_nimg = 0
        self.tick = 0
        self.fixed_z = torch.randn(8, m.generator.z_dim, generator=torch.Generator().manual_seed(123))
        self.clock = TickClock(self.device)
        self._metrics = None  # SnapshotMetrics, built at the first snapshot
        if t.autocast_bf16:
            if self.device.type == "cuda":
                _autocast_blocks_bf16(self.G)  # G only: G_ema (samples, metrics) stays float32
            else:
                warnings.warn(f"train.autocast_bf16 applies on CUDA only; {self.device} trains in float32", stacklevel=2)

    @property
    def local_batch(self) -> int:
        """Images per worker and step (all its chunks)."""
        return self.layout.per_worker

    @property
    def rng(self) -> torch.Generator:
        """This rank's random stream of the current step: seeded from (seed, rank, step) at the
        step's first draw, so it depends on nothing but those three (see the module docstring)."""
        if self._rng_step != self.step:
            self._rng.manual_seed(stream_seed(self.cfg.train.seed, self.rank, self.step))
            self._rng_step = self.step
        return self._rng

    # ---------------------------------------------------------------- data
    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This worker's reals [b, 3, H, W] on the background scheme (colours fixed per epoch and image), labels [b, 25]."""
        indices = self.order.next()
        self.dataset.set_epoch(self.order.epoch)
        raw = self.loader.get(indices)
        # The next batch is read (decoded where not in memory) and pinned while this step trains;
        # the images cross to the device as stored (uint8) and are finished there.
        self.loader.read_ahead(self.order.peek())
        reals = self.dataset.finish(raw.to(self.device), indices.tolist())
        return reals, self.dataset.labels[indices].to(self.device)

    def _gen_labels(self, n: int) -> torch.Tensor:
        return self.all_labels[torch.randint(len(self.all_labels), (n,), generator=self.rng).to(self.device)]

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.model.generator.z_dim, generator=self.rng).to(self.device)

    def _backgrounds(self, n: int) -> torch.Tensor:
        return sample_backgrounds(self.cfg.loss.background, n, self.rng).to(self.device)

    def draw_step(self) -> StepInputs:
        """This worker's reals and random draws for the current step, for all its chunks at once."""
        b, V = self.local_batch, self.cfg.loss.num_views
        reals, real_labels = self._real_batch()
        g_labels, g_z, g_bg = self._gen_labels(b), self._z(b), self._backgrounds(b * V).reshape(b, V, 3)
        d_labels, d_z, d_bg = self._gen_labels(b), self._z(b), self._backgrounds(b)
        return StepInputs(reals, real_labels, g_labels, g_z, g_bg, d_labels, d_z, d_bg)

    # ---------------------------------------------------------------- one step
    def train_step(self) -> None:
        cfg, lc = self.cfg, self.cfg.loss
        V, res, backend = lc.num_views, cfg.model.resolution, cfg.train.render_backend
        blur_px = blur_sigma(self.cur_nimg, lc, cfg.train.batch_size)
        chunks = self.draw_step().chunks(self.layout.batch_gpu)

        # G: every head generated once and rendered from V cameras of the data's poses.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        for c in chunks:
            g = generator_loss(self.G, self.D, c.g_z, view_cameras(c.g_labels, V), c.g_backgrounds, lc,
                               resolution=res, blur_px=blur_px, backend=backend)
            g.total.backward()
            self._clip(self.G, lc.g_clip)  # the running gradient, after each chunk (the reference)
            self.clock.add({"loss/G": g.total, "loss/G_adversarial": g.adversarial, "loss/knn": g.knn,
                            "loss/centre": g.centre})
        self._reduce_and_step(self.G, self.opt_G)

        # D: new heads, one render each; the fake and the real halves are clipped one after the other.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        for c in chunks:
            with torch.no_grad():
                ws = self.G.map(c.d_z, c.d_labels)
                self._track_w_avg(ws)
                fakes = render(self.G.synthesize(ws).gaussians, c.d_labels, res, c.d_backgrounds, backend=backend).image
            loss_fake, logits_fake = discriminator_fake_loss(self.D, fakes, c.d_labels, blur_px)
            loss_fake.backward()
            self._clip(self.D, lc.d_clip)
            loss_real, logits_real = discriminator_real_loss(self.D, c.reals, c.real_labels, blur_px)
            loss_real.backward()
            self._clip(self.D, lc.d_clip)
            self.clock.add({"loss/D": loss_fake + loss_real, "scores/fake": logits_fake.mean(),
                            "scores/real": logits_real.mean()})
        self._reduce_and_step(self.D, self.opt_D)

        # R1: its own D phase on the same reals, as D sees them.
        if lc.r1_gamma > 0 and self.step % lc.r1_interval == 0:
            self.opt_D.zero_grad(set_to_none=True)
            for c in chunks:
                loss_r1, penalty = r1_loss(self.D, c.reals, c.real_labels, lc, blur_px)
                loss_r1.backward()
                self._clip(self.D, lc.d_clip)
                self.clock.add({"loss/R1_penalty": penalty.mean()})
            self._reduce_and_step(self.D, self.opt_D)
        self.D.requires_grad_(False)

        self._update_ema()
        self.step += 1
        self.cur_nimg += cfg.train.batch_size

    def _clip(self, model: torch.nn.Module, max_norm: float) -> None:
        """Clip this rank's accumulated gradient norm (the reference clips per GPU and chunk, before the all-reduce)."""
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm, foreach=True)

    def _reduce_and_step(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Average gradients over ranks (one flat all-reduce), zero NaN/Inf as the reference does, step."""
        params = [p for p in model.parameters() if p.grad is not None]
        if params:
            flat = torch.cat([p.grad.flatten() for p in params])
            if self.world_size > 1 and dist.is_initialized():
                dist.all_reduce(flat)
                flat /= self.world_size
            torch.nan_to_num_(flat, nan=0.0, posinf=1e5, neginf=-1e5)
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad = g.view_as(p)
        opt.step()

    @torch.no_grad()
    def _track_w_avg(self, ws: torch.Tensor) -> None:
        """The mapping's w average moves per chunk (as the reference's), to the chunk's mean w
        averaged over ranks, so that every rank holds the same."""
        mean = ws.mean(0)
        if self.world_size > 1 and dist.is_initialized():
            dist.all_reduce(mean)
            mean /= self.world_size
        self.G.mapping.track_w_avg(mean)

    @torch.no_grad()
    def _update_ema(self) -> None:
        t = self.cfg.train
        ema_nimg = t.ema_kimg * 1000 * t.batch_size / REFERENCE_BATCH  # the reference scales the half-life so
        if t.ema_rampup > 0:
            ema_nimg = min(ema_nimg, self.cur_nimg * t.ema_rampup)
        beta = 0.5 ** (t.batch_size / max(ema_nimg, 1e-8))
        # p_ema <- p + beta (p_ema - p), for all parameters in one call
        torch._foreach_lerp_(list(self.G_ema.parameters()), [p.detach() for p in self.G.parameters()], 1.0 - beta)
        torch._foreach_copy_(list(self.G_ema.buffers()), list(self.G.buffers()))

    # ---------------------------------------------------------------- loop
    @property
    def total_nimg(self) -> int:
        """The images the run trains on in all (train.total_kimg)."""
        return int(self.cfg.train.total_kimg * 1000)

    def run(self, max_steps: int | None = None) -> dict:
        """Train until total_kimg (or max_steps more steps, or should_stop()). Returns the last tick stats."""
        t = self.cfg.train
        total_nimg = self.total_nimg
        tick_nimg = max(1, int(t.tick_kimg * 1000))
        steps_done, last = 0, {}
        if self.cur_nimg == 0 and self.rank == 0:
            # The starting point of the curves: samples (and metrics) of the untrained generator.
            self._append_metrics({"progress/kimg": 0.0, "progress/tick": 0, "time/unix": time.time(),
                                  **self.snapshot(with_metrics=t.metrics_at == MetricsAt.every_snapshot)})
        self.clock.start_run(self.cur_nimg)
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
        stats = self.clock.end_tick(self.tick + 1, self.step, self.cur_nimg, t.total_kimg)
        self.tick += 1
        if self.rank == 0:
            print(tick_line(stats, t.total_kimg), flush=True)
        if (done or self.tick % t.snapshot_ticks == 0) and self.rank == 0:
            stats.update(self.snapshot(final=done, with_metrics=done or t.metrics_at == MetricsAt.every_snapshot))
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
        self.clock.end_housekeeping()
        return stats

    def _append_metrics(self, stats: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(stats) + "\n")

    # ---------------------------------------------------------------- snapshots
    @torch.no_grad()
    def snapshot(self, final: bool = False, with_metrics: bool = True) -> dict:
        """Fixed-seed sample grid (and a turntable and a .ply at the end) from G_ema, and the snapshot metrics."""
        from cgsgan.training.snapshot_metrics import SnapshotMetrics

        res, psi = self.cfg.model.resolution, self.cfg.train.truncation_psi
        folder = self.run_dir / "samples"
        kimg = self.cur_nimg / 1e3
        grid = save_grid(self.G_ema, self.fixed_z, res, psi, folder / f"grid-{kimg:08.3f}kimg.png")
        out: dict = {"artifacts/grid": str(grid), "progress/kimg": kimg, "progress/step": self.step}
        if self.cfg.train.snapshot_metrics and with_metrics:
            if self._metrics is None:
                self._metrics = SnapshotMetrics(self.cfg, self.data_path, self.device)
            out.update({metric_key(k): v for k, v in self._metrics(self.G_ema).items()})
        if final:
            out["artifacts/turntable"] = str(save_turntable(self.G_ema, self.fixed_z[:1], res, psi, folder / "turntable.gif"))
            ply = folder / "sample-seed0.ply"
            z0 = self.fixed_z[:1].to(self.device)
            self.G_ema(z0, camera.frontal_label(1).to(self.device), psi=psi).gaussians.save_ply(ply)
            out["artifacts/ply"] = str(ply)
        if self.callbacks.on_snapshot:
            self.callbacks.on_snapshot(dict(out))
        metrics = metric_stats(out)
        if line := snapshot_line({"progress/kimg": kimg, **metrics}):
            print(line, flush=True)
        return metrics

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / f"{checkpoint_name(self.cur_nimg)}.pt"

    def state_dict(self) -> dict:
        return {
            "config": to_dict(self.cfg),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "counters": {"step": self.step, "cur_nimg": self.cur_nimg, "tick": self.tick, "epoch": self.order.epoch,
                         "epoch_pos": self.order.pos},  # fmt: skip
            # Every rank's stream is a function of (seed, rank, step) (see `rng`): nothing to save
            # but torch's global generator (used only to initialise weights).
            "rng": {"torch": torch.get_rng_state(), "streams": STREAMS},
            "data_order": DATA_ORDER,  # counters.epoch_pos is the global position in the epoch
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
        self.order.epoch, self.order.pos = c["epoch"], c["epoch_pos"]
        if state.get("data_order") != DATA_ORDER:
            # Written before the global order: epoch_pos was rank 0's position in its shard
            # (every W-th sample), i.e. W x epoch_pos samples of the epoch were consumed.
            self.order.pos = c["epoch_pos"] * state.get("world_size", 1)
        # The random streams need no state: each rank's is seeded from (seed, rank, step) at the
        # next step's first draw, whatever the number of workers that wrote the checkpoint.
        self._rng_step = None
        torch.set_rng_state(state["rng"]["torch"])
        self.extra_state = dict(state.get("extra", {}))


STREAMS = "SeedSequence([seed, rank, step])"


def stream_seed(seed: int, rank: int, step: int) -> int:
    """The seed of rank `rank`'s random stream in step `step` (a 64-bit integer)."""
    words = np.random.SeedSequence([seed, rank, step]).generate_state(2)
    return int(words[0]) << 32 | int(words[1])


def _autocast_blocks_bf16(G: torch.nn.Module) -> None:
    """Run G's transformer blocks under bf16 autocast (train.autocast_bf16, CUDA).

    Only the blocks: their matmuls are most of G's arithmetic. The residual stream stays float32
    (float32 + bf16 is float32), and the upsampling, the attribute heads and the Gaussian
    hierarchy stay float32: in bf16 (8 significant bits) absolute positions in [-0.5, 0.5] would
    be rounded to about 0.002, over a pixel at 512. Parameters and state_dict are unchanged.
    """
    for block in G.blocks:
        block.autocast_dtype = torch.bfloat16


__all__ = ["Callbacks", "Trainer", "TrainingDiverged"]
