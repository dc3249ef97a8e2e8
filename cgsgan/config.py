"""Typed configuration of the model core: what the generator, discriminator, losses, data and
training loop take. Plain dataclasses (Hydra registers them in orchestration/), validated up
front by `validate`, convertible to and from plain dicts for crossing process boundaries.

`tiny()` is the CPU configuration; `ffhq(resolution)` the reference one from the method.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

CAMERA_MODES = ("d_projection", "d_none", "g_conditioned")
BACKGROUNDS = ("random", "white", "black")

# Sub-pixel upsampling: step factor per level and cumulative factor (method.md).
UPSAMPLE_STEPS = (1, 4, 4, 4, 2, 2, 2, 2)
MAX_LEVELS = len(UPSAMPLE_STEPS)
LEVELS_FOR_RESOLUTION = {256: 5, 512: 6, 1024: 7, 2048: 8}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclass
class GeneratorConfig:
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2
    mapping_lr_mult: float = 0.01
    w_avg_beta: float = 0.998
    num_points: int = 512
    point_radius: float = 0.3
    width: int = 512
    heads: int = 8
    base_blocks: int = 6
    num_levels: int = 6
    pe_res: int = 512  # length of the learned per-axis positional lookup table
    min_channels: int = 16


@dataclass
class DiscriminatorConfig:
    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group: int = 4
    mbstd_channels: int = 1
    cmap_dim: int = 512
    camera_mapping_layers: int = 8


@dataclass
class ModelConfig:
    resolution: int = 512
    camera_mode: str = "d_projection"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic: built-in heads; folder: a folder or zip in the FFHQC layout
    path: str = ""  # the folder or zip (source=folder); for synthetic, where to write ("" = cache)
    index_list: str = ""  # optional JSON array of image indices (filter + rebalance)
    xflip: bool = True
    # Built-in synthetic heads, generated into `path` (or a cache folder) when missing.
    synthetic_identities: int = 512
    synthetic_views: int = 4
    synthetic_seed: int = 0


@dataclass
class LossConfig:
    num_views: int = 4
    grad_averaging: bool = True
    background: str = "random"
    r1_gamma: float = 1.0
    r1_interval: int = 16
    knn_k: int = 64
    knn_weight: float = 20.0
    center_weight: float = 1.0
    blur_sigma: float = 10.0
    blur_fade_kimg: float = 200.0
    g_clip: float = 20.0
    d_clip: float = 5.0


@dataclass
class TrainConfig:
    batch_size: int = 32  # global, over all workers
    g_lr: float = 0.0025
    d_lr: float = 0.002
    beta1: float = 0.0  # Adam betas (StyleGAN: no momentum)
    beta2: float = 0.99
    ema_kimg: float = 10.0  # half-life of the generator EMA in thousands of images
    ema_rampup: float = 0.05
    total_kimg: float = 15000.0
    tick_kimg: float = 4.0
    snapshot_ticks: int = 50
    checkpoint_ticks: int = 50
    seed: int = 0
    truncation_psi: float = 0.8  # for samples
    metric_samples: int = 256  # images per side for the tick-time distribution distance
    # Extra metrics at snapshots, through cgsgan.metrics.evaluation (names as in `cgsgan.evaluate`);
    # the 3D ones are cheap on CPU and show camera dependence during ablations.
    snapshot_metrics: list[str] = field(default_factory=lambda: ["sensitivity", "psnr_cond"])
    snapshot_metric_heads: int = 16
    render_backend: str = "auto"
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch default


@dataclass
class CGSGANConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def level_channels(g: GeneratorConfig, level: int) -> int:
    return max(g.min_channels, g.width // 2**level) if level < 7 else max(g.min_channels // 2, 8)


def cumulative_upsampling(level: int) -> int:
    return math.prod(UPSAMPLE_STEPS[: level + 1])


def num_gaussians(g: GeneratorConfig) -> int:
    """Rendered Gaussians: every level's tokens, upsampled, concatenated."""
    return sum(g.num_points * cumulative_upsampling(i) for i in range(g.num_levels))


def ffhq(resolution: int = 512) -> CGSGANConfig:
    """The reference configuration of method.md at 256/512/1024/2048."""
    if resolution not in LEVELS_FOR_RESOLUTION:
        raise ConfigError(f"model.resolution={resolution}: reference configs exist for {sorted(LEVELS_FOR_RESOLUTION)}")
    cfg = CGSGANConfig()
    cfg.model.resolution = resolution
    cfg.model.generator.num_levels = LEVELS_FOR_RESOLUTION[resolution]
    return cfg


def tiny() -> CGSGANConfig:
    """A CPU-sized model from the same code: 64x64, 128 points, 3 levels (2,688 Gaussians), batch 8
    with 4 views, 2 kimg (~1.7 s per step on 2 cores: about 7 minutes)."""
    cfg = CGSGANConfig()
    cfg.model = ModelConfig(
        resolution=64,
        generator=GeneratorConfig(
            z_dim=64, w_dim=64, num_points=128, width=64, heads=4, base_blocks=2, num_levels=3, pe_res=64, min_channels=8
        ),
        discriminator=DiscriminatorConfig(channel_base=2048, channel_max=64, cmap_dim=64, camera_mapping_layers=2),
    )
    cfg.data = DataConfig(synthetic_identities=256, synthetic_views=4)
    cfg.loss = LossConfig(num_views=4, r1_gamma=0.1, knn_k=8, blur_sigma=2.0, blur_fade_kimg=4.0)
    cfg.train = TrainConfig(
        batch_size=8,
        g_lr=0.0025,
        d_lr=0.002,
        ema_kimg=0.5,
        total_kimg=2.0,
        tick_kimg=0.1,
        snapshot_ticks=5,
        checkpoint_ticks=5,
        metric_samples=256,
        num_threads=0,
    )
    return cfg


def validate(cfg: CGSGANConfig) -> CGSGANConfig:
    """Check values that would otherwise fail late (or silently). Raises ConfigError naming the key."""
    m, g, d, loss, t = cfg.model, cfg.model.generator, cfg.model.discriminator, cfg.loss, cfg.train

    def need(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r}: {why}")

    need(m.resolution >= 16 and m.resolution & (m.resolution - 1) == 0, "model.resolution", m.resolution,
         "must be a power of two >= 16")
    need(m.camera_mode in CAMERA_MODES, "model.camera_mode", m.camera_mode, f"expected one of {CAMERA_MODES}")
    need(1 <= g.num_levels <= MAX_LEVELS, "model.generator.num_levels", g.num_levels, f"must be in 1..{MAX_LEVELS}")
    need(g.heads >= 1, "model.generator.heads", g.heads, "must be >= 1")  # before the modulo below
    need(g.width % g.heads == 0, "model.generator.heads", g.heads, f"must divide width {g.width}")
    need(g.width % 2 == 0, "model.generator.width", g.width, "must be even (two halves of positional encoding)")
    need(g.base_blocks >= 1, "model.generator.base_blocks", g.base_blocks, "must be >= 1")
    need(g.num_points >= 1, "model.generator.num_points", g.num_points, "must be >= 1")
    need(d.mbstd_group >= 1, "model.discriminator.mbstd_group", d.mbstd_group, "must be >= 1")
    need(loss.num_views >= 1, "loss.num_views", loss.num_views, "must be >= 1")
    need(loss.background in BACKGROUNDS, "loss.background", loss.background, f"expected one of {BACKGROUNDS}")
    need(loss.r1_interval >= 1, "loss.r1_interval", loss.r1_interval, "must be >= 1")
    need(0 < loss.knn_k < g.num_points, "loss.knn_k", loss.knn_k, f"must be in 1..{g.num_points - 1} (num_points)")
    need(cfg.data.source in ("synthetic", "folder"), "data.source", cfg.data.source, "expected synthetic or folder")
    need(cfg.data.source != "folder" or bool(cfg.data.path), "data.path", cfg.data.path,
         "data.source=folder needs the dataset folder or zip (e.g. data.path=/data/FFHQC/512)")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    need(t.g_lr > 0, "train.g_lr", t.g_lr, "must be > 0")
    need(t.d_lr > 0, "train.d_lr", t.d_lr, "must be > 0")
    need(t.total_kimg > 0, "train.total_kimg", t.total_kimg, "must be > 0")
    need(t.tick_kimg > 0, "train.tick_kimg", t.tick_kimg, "must be > 0")
    need(t.render_backend in ("auto", "gsplat", "torch"), "train.render_backend", t.render_backend,
         "expected auto, gsplat or torch")

    # The range of every other numeric key, so that a bad value stops here and not after a tick
    # inside a worker (e.g. snapshot_ticks=0 was a ZeroDivisionError). NaN and Inf fail too.
    def at_least(key: str, value: Any, lo: float) -> None:
        need(math.isfinite(value) and value >= lo, key, value, f"must be >= {lo}")

    def above(key: str, value: Any, lo: float) -> None:
        need(math.isfinite(value) and value > lo, key, value, f"must be > {lo}")

    def within(key: str, value: Any, lo: float, hi: float, hi_open: bool = False) -> None:
        ok = math.isfinite(value) and lo <= value and (value < hi if hi_open else value <= hi)
        need(ok, key, value, f"must be in [{lo}, {hi}{')' if hi_open else ']'}")

    for key, value in (("z_dim", g.z_dim), ("w_dim", g.w_dim), ("mapping_layers", g.mapping_layers),
                       ("pe_res", g.pe_res), ("min_channels", g.min_channels), ("width", g.width)):
        at_least(f"model.generator.{key}", value, 1)
    above("model.generator.mapping_lr_mult", g.mapping_lr_mult, 0)
    within("model.generator.w_avg_beta", g.w_avg_beta, 0, 1, hi_open=True)
    above("model.generator.point_radius", g.point_radius, 0)
    for key, value in (("channel_base", d.channel_base), ("channel_max", d.channel_max),
                       ("mbstd_channels", d.mbstd_channels), ("cmap_dim", d.cmap_dim)):
        at_least(f"model.discriminator.{key}", value, 1)
    at_least("model.discriminator.camera_mapping_layers", d.camera_mapping_layers, 0)
    at_least("data.synthetic_identities", cfg.data.synthetic_identities, 1)
    at_least("data.synthetic_views", cfg.data.synthetic_views, 1)
    at_least("data.synthetic_seed", cfg.data.synthetic_seed, 0)
    for key, value in (("r1_gamma", loss.r1_gamma), ("knn_weight", loss.knn_weight),
                       ("center_weight", loss.center_weight), ("blur_sigma", loss.blur_sigma),
                       ("blur_fade_kimg", loss.blur_fade_kimg), ("g_clip", loss.g_clip), ("d_clip", loss.d_clip)):
        at_least(f"loss.{key}", value, 0)
    above("train.g_lr", t.g_lr, 0)
    above("train.d_lr", t.d_lr, 0)
    within("train.beta1", t.beta1, 0, 1, hi_open=True)
    within("train.beta2", t.beta2, 0, 1, hi_open=True)
    at_least("train.ema_kimg", t.ema_kimg, 0)
    at_least("train.ema_rampup", t.ema_rampup, 0)
    above("train.total_kimg", t.total_kimg, 0)
    above("train.tick_kimg", t.tick_kimg, 0)
    at_least("train.snapshot_ticks", t.snapshot_ticks, 1)
    at_least("train.checkpoint_ticks", t.checkpoint_ticks, 1)
    at_least("train.seed", t.seed, 0)
    within("train.truncation_psi", t.truncation_psi, 0, 1)
    at_least("train.metric_samples", t.metric_samples, 2)  # a covariance needs two samples
    at_least("train.snapshot_metric_heads", t.snapshot_metric_heads, 1)
    at_least("train.num_threads", t.num_threads, 0)
    return cfg


def to_dict(cfg: CGSGANConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> CGSGANConfig:
    """Rebuild the typed config from plain values (e.g. after crossing into a Ray worker)."""

    def build(cls, values: dict, prefix: str):
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown config keys under {prefix or 'root'}: {sorted(unknown)}")
        kwargs = {}
        for name, value in values.items():
            f = known[name]
            sub = f.default_factory if dataclasses.is_dataclass(f.default_factory) else None  # type: ignore[arg-type]
            if sub is not None and isinstance(value, dict):
                kwargs[name] = build(sub, value, f"{prefix}{name}.")
            elif isinstance(value, list):
                kwargs[name] = tuple(value)
            else:
                kwargs[name] = value
        return cls(**kwargs)

    return build(CGSGANConfig, d, "")
