"""Typed configuration of the model core: what the generator, discriminator, losses, data and
training loop take. Plain dataclasses (Hydra registers them in orchestration/), validated up
front by `validate`, convertible to and from plain dicts for crossing process boundaries.

Modes are `StrEnum`s: one list of allowed values each, which Hydra checks when it builds the
config, and members that compare equal to their plain string values.

`ffhq(resolution)` is the reference configuration (the authors' train.py defaults); `tiny()` a
CPU-sized model from the same code and formulas.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class CameraMode(StrEnum):
    d_projection = "d_projection"  # the reference: camera only in D (projection); G camera-free
    d_none = "d_none"  # no camera anywhere: the collapse baseline
    g_conditioned = "g_conditioned"  # camera into G's mapping (GSGAN/GGHead/EG3D), and into D


class Background(StrEnum):
    random = "random"  # a random uniform colour per rendered and per real image (the reference)
    white = "white"
    black = "black"


class MetricsAt(StrEnum):
    every_snapshot = "every_snapshot"
    end = "end"


class RenderBackend(StrEnum):
    auto = "auto"  # gsplat for CUDA tensors; on CPU native where it builds, torch otherwise
    gsplat = "gsplat"
    native = "native"  # the project's rasterizer with its compiled CPU compositor (built on first use)
    torch = "torch"  # the project's rasterizer in plain PyTorch (any device; the reference for native)


class DataSource(StrEnum):
    synthetic = "synthetic"  # the built-in synthetic heads, generated once into a cache
    folder = "folder"  # a folder or zip in the FFHQC layout


class LRScaling(StrEnum):
    """How the learning rates follow a global batch other than the reference's 32 (cgsgan.layout)."""

    none = "none"  # the reference: the rates as configured, whatever the batch
    sqrt = "sqrt"  # rates x sqrt(batch / 32)
    linear = "linear"  # rates x batch / 32


class TableLookup(StrEnum):
    reference = "reference"  # the reference's table read: a learned constant scaled by (1 - |p| / 2)
    positional = "positional"  # a true lookup of the table at each coordinate (ablation)


# Sub-pixel upsampling: step factor per level (cumulative 1, 4, 16, 64, 128, 256, 512, 1024).
UPSAMPLE_STEPS = (1, 4, 4, 4, 2, 2, 2, 2)
MAX_LEVELS = len(UPSAMPLE_STEPS)
LEVELS_FOR_RESOLUTION = {256: 5, 512: 6, 1024: 7, 2048: 8}
REFERENCE_BATCH = 32  # the reference scales its EMA half-life and blur fade by batch / 32


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
    point_radius: float = 0.3  # initial points: unit RMS over x, y, z, times this (before tanh)
    width: int = 512
    heads: int = 8
    base_blocks: int = 6  # transformer blocks before level 0; then one per further level
    num_levels: int = 6
    pe_res: int = 512  # length of the learned per-axis table
    pe_lookup: TableLookup = TableLookup.reference
    min_channels: int = 16


@dataclass
class DiscriminatorConfig:
    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group: int = 4
    mbstd_channels: int = 1
    cmap_dim: int = 512
    camera_mapping_layers: int = 8
    num_fp16_res: int = 4  # blocks (highest resolutions first) in half precision, conv outputs clamped to 256


@dataclass
class ModelConfig:
    resolution: int = 512
    camera_mode: CameraMode = CameraMode.d_projection
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass
class DataConfig:
    source: DataSource = DataSource.synthetic
    path: str = ""  # the folder or zip (source=folder); for synthetic, where to write ("" = cache)
    # JSON array of image FILE NUMBERS (17 = 00017.png); repeats rebalance; "auto" = the authors'
    # smile_pose_rebalancing.json beside the dataset (none if absent); "" = every image once.
    index_list: str = ""
    xflip: bool = True
    # Built-in synthetic heads, generated into `path` (or a cache folder) when missing.
    synthetic_identities: int = 512
    synthetic_views: int = 4
    synthetic_seed: int = 0
    # Their pose spread, radians: yaw ~ N(0, std) clamped at +-limit. 0.3 / 1.2 (17 / 69 degrees)
    # is FFHQ-like; a wider spread (the tiny preset's 0.8 / 1.5) gives every identity side views
    # (docs/configuration.md).
    synthetic_yaw_std: float = 0.3
    synthetic_yaw_limit: float = 1.2


@dataclass
class LossConfig:
    num_views: int = 4  # renders per generated head in the G step
    grad_averaging: bool = True  # weight each view's adversarial loss 1 / num_views (else 1)
    background: Background = Background.random
    r1_gamma: float = 1.0
    r1_interval: int = 16  # lazy R1: its own D step every this many steps, loss x interval
    knn_k: int = 64
    knn_weight: float = 20.0
    center_weight: float = 1.0
    blur_sigma: float = 10.0  # px; the kernel's standard deviation is 0.85 of it
    blur_fade_kimg: float = 200.0  # at a total batch of 32; scaled by batch / 32 as the reference does
    g_clip: float = 20.0  # gradient-norm clip, per worker before the all-reduce
    d_clip: float = 5.0


@dataclass
class TrainConfig:
    batch_size: int = 32  # global, over all workers
    # Images per worker processed at a time (the reference's --batch-gpu); 0 = the whole per-worker
    # batch in one chunk. The layout workers x chunks x batch_gpu is checked by cgsgan.layout.
    batch_gpu: int = 0
    lr_scaling: LRScaling = LRScaling.none  # the rates are the reference batch's (32); see cgsgan.layout
    allow_tf32: bool = False  # TF32 matmuls/convolutions on CUDA; off as in the reference
    g_lr: float = 0.0025
    d_lr: float = 0.002
    beta1: float = 0.0  # Adam betas (StyleGAN: no momentum)
    beta2: float = 0.99
    ema_kimg: float = 10.0  # G_ema half-life at a total batch of 32; scaled by batch / 32 as the reference does
    ema_rampup: float = 0.05  # half-life at most this fraction of the images seen; 0 = off
    total_kimg: float = 15000.0
    tick_kimg: float = 4.0
    snapshot_ticks: int = 50
    checkpoint_ticks: int = 50
    seed: int = 0
    truncation_psi: float = 0.8  # for sample grids and turntables
    # Snapshot metrics (names as in `cgsgan.evaluate`): distribution metrics use `feature_extractor`:
    # "synthetic" (a feature network trained once per machine on held-out synthetic heads and
    # cached; numbers named *_synth), "random" (fixed random features, *_rand), or the path of
    # local Inception weights (FID proper).
    snapshot_metrics: list[str] = field(default_factory=lambda: ["fid", "fid3d", "sensitivity", "psnr_cond"])
    feature_extractor: str = "synthetic"
    metric_samples: int = 1024  # generated images per distribution metric
    # Which snapshots compute the metrics: every one (from kimg 0, the curves' starting point), or
    # the last only (a sweep compares the end of training; about 40 s a snapshot at 1024 samples
    # on CPU). Sample grids are saved at every snapshot either way.
    metrics_at: MetricsAt = MetricsAt.every_snapshot
    snapshot_metric_heads: int = 16  # heads for the 3D metrics
    render_backend: RenderBackend = RenderBackend.auto
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch default
    # bf16 autocast of the generator's transformer blocks (CUDA only; the heads, the Gaussian
    # hierarchy and the rendering stay float32). Off until measured to keep samples unchanged.
    autocast_bf16: bool = False


@dataclass
class CGSGANConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def level_channels(g: GeneratorConfig, level: int) -> int:
    """Feature channels of level i: max(min_channels, width / 2^i); level 7 has 8 (reference)."""
    return max(g.min_channels, g.width // 2**level) if level < 7 else max(g.min_channels // 2, 8)


def cumulative_upsampling(level: int) -> int:
    return math.prod(UPSAMPLE_STEPS[: level + 1])


def num_gaussians(g: GeneratorConfig) -> int:
    """Rendered Gaussians: every level's tokens, upsampled, concatenated."""
    return sum(g.num_points * cumulative_upsampling(i) for i in range(g.num_levels))


def ffhq(resolution: int = 512) -> CGSGANConfig:
    """The reference configuration (the authors' train.py defaults) at 256/512/1024/2048."""
    if resolution not in LEVELS_FOR_RESOLUTION:
        raise ConfigError(f"model.resolution={resolution}: reference configs exist for {sorted(LEVELS_FOR_RESOLUTION)}")
    cfg = CGSGANConfig()
    cfg.model.resolution = resolution
    cfg.model.generator.num_levels = LEVELS_FOR_RESOLUTION[resolution]
    cfg.data.source = DataSource.folder
    cfg.data.index_list = "auto"  # the reference trains FFHQC on its smile/pose rebalancing list
    cfg.train.batch_gpu = 8  # the reference's --batch-gpu: batch 32 is 4 chunks of 8 on one GPU, 1 of 8 on four
    cfg.train.feature_extractor = "random"  # FID proper needs local Inception weights: train.feature_extractor=FILE
    return cfg


TESTBED_YAW_STD, TESTBED_YAW_LIMIT = 0.8, 1.5  # radians: the tiny preset's synthetic pose spread


def tiny() -> CGSGANConfig:
    """A CPU-sized model from the same code and formulas: 64x64, 128 points, 3 levels (2,688
    Gaussians), batch 8 with 4 views; 6 kimg (its measured duration: README.md, "What the main
    job leaves behind"), snapshots (grid, fid_synth, geometry) every kimg. See
    benchmarks/results/convergence.md for longer runs."""
    cfg = CGSGANConfig()
    cfg.model = ModelConfig(
        resolution=64,
        generator=GeneratorConfig(
            z_dim=64, w_dim=64, num_points=128, width=64, heads=4, base_blocks=2, num_levels=3, pe_res=64, min_channels=8
        ),
        discriminator=DiscriminatorConfig(channel_base=2048, channel_max=64, cmap_dim=64, camera_mapping_layers=2),
    )
    # The testbed's pose spread (yaw 46 degrees, up to 86): every identity is seen from the side, so
    # the heads grow depth within minutes; the FFHQ-like 0.3 / 1.2 stays the DataConfig default
    # (measured in benchmarks/results/depth.md).
    cfg.data = DataConfig(synthetic_identities=256, synthetic_views=4, synthetic_yaw_std=TESTBED_YAW_STD,
                          synthetic_yaw_limit=TESTBED_YAW_LIMIT)
    cfg.loss = LossConfig(num_views=4, r1_gamma=0.1, knn_k=8, blur_sigma=2.0, blur_fade_kimg=16.0)
    cfg.train = TrainConfig(
        batch_size=8,
        g_lr=0.0025,
        d_lr=0.002,
        ema_kimg=2.0,
        total_kimg=6.0,
        tick_kimg=0.25,
        snapshot_ticks=4,
        checkpoint_ticks=4,
        metric_samples=256,
        num_threads=0,
    )
    # The synthetic heads have exact geometry: the geometry score joins the snapshot metrics.
    cfg.train.snapshot_metrics = [*cfg.train.snapshot_metrics, "geometry"]
    return cfg


def validate(cfg: CGSGANConfig) -> CGSGANConfig:
    """Check every value that would otherwise fail late (or silently). Raises ConfigError naming the key."""
    m, g, d, loss, t = cfg.model, cfg.model.generator, cfg.model.discriminator, cfg.loss, cfg.train

    def need(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r}: {why}")

    def positive(section: str, obj: Any, *names: str) -> None:
        for name in names:
            v = getattr(obj, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{section}.{name}", v, "must be > 0")

    def non_negative(section: str, obj: Any, *names: str) -> None:
        for name in names:
            v = getattr(obj, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, f"{section}.{name}", v, "must be >= 0")

    def one_of(key: str, value: Any, enum: type[StrEnum]) -> None:
        need(value in {e.value for e in enum}, key, value, f"expected one of {[e.value for e in enum]}")

    need(m.resolution >= 32 and m.resolution & (m.resolution - 1) == 0, "model.resolution", m.resolution,
         "must be a power of two >= 32 (the scale hierarchy splits log2(resolution) - 4 times)")
    one_of("model.camera_mode", m.camera_mode, CameraMode)
    need(2 <= g.num_levels <= MAX_LEVELS, "model.generator.num_levels", g.num_levels, f"must be in 2..{MAX_LEVELS}")
    positive("model.generator", g, "z_dim", "w_dim", "num_points", "width", "heads", "base_blocks", "pe_res",
             "min_channels", "mapping_lr_mult", "point_radius")
    non_negative("model.generator", g, "mapping_layers")
    need(0 <= g.w_avg_beta < 1, "model.generator.w_avg_beta", g.w_avg_beta, "must be in [0, 1)")
    need(g.width % g.heads == 0, "model.generator.heads", g.heads, f"must divide width {g.width}")
    need(g.width % 2 == 0, "model.generator.width", g.width, "must be even (Fourier features + table)")
    one_of("model.generator.pe_lookup", g.pe_lookup, TableLookup)
    positive("model.discriminator", d, "channel_base", "channel_max", "mbstd_group", "mbstd_channels", "cmap_dim")
    non_negative("model.discriminator", d, "camera_mapping_layers", "num_fp16_res")
    need(min(d.channel_base // 4, d.channel_max) % d.mbstd_channels == 0, "model.discriminator.mbstd_channels",
         d.mbstd_channels, "must divide the channels at 4x4")

    one_of("data.source", cfg.data.source, DataSource)
    need(cfg.data.source != DataSource.folder or bool(cfg.data.path), "data.path", cfg.data.path,
         "data.source=folder needs the dataset folder or zip (e.g. data.path=/data/FFHQC/512)")
    positive("data", cfg.data, "synthetic_identities", "synthetic_views", "synthetic_yaw_std", "synthetic_yaw_limit")
    non_negative("data", cfg.data, "synthetic_seed")
    need(cfg.data.synthetic_yaw_limit <= math.pi / 2, "data.synthetic_yaw_limit", cfg.data.synthetic_yaw_limit,
         "must be <= 1.5708 (pi / 2, a profile: beyond it the camera sees the back of the head)")

    positive("loss", loss, "num_views", "r1_interval")
    non_negative("loss", loss, "r1_gamma", "knn_weight", "center_weight", "blur_sigma", "blur_fade_kimg", "g_clip",
                 "d_clip")
    one_of("loss.background", loss.background, Background)
    need(0 < loss.knn_k < g.num_points, "loss.knn_k", loss.knn_k, f"must be in 1..{g.num_points - 1} (num_points - 1)")

    positive("train", t, "batch_size", "g_lr", "d_lr", "total_kimg", "tick_kimg", "snapshot_ticks",
             "checkpoint_ticks", "snapshot_metric_heads")
    need(isinstance(t.metric_samples, int) and t.metric_samples >= 2, "train.metric_samples", t.metric_samples,
         "must be >= 2 (a covariance needs two samples)")
    non_negative("train", t, "ema_kimg", "ema_rampup", "seed", "num_threads", "batch_gpu")
    need(0 <= t.beta1 < 1, "train.beta1", t.beta1, "must be in [0, 1)")
    need(0 <= t.beta2 < 1, "train.beta2", t.beta2, "must be in [0, 1)")
    need(0 <= t.truncation_psi <= 1, "train.truncation_psi", t.truncation_psi, "must be in [0, 1]")
    one_of("train.render_backend", t.render_backend, RenderBackend)
    one_of("train.lr_scaling", t.lr_scaling, LRScaling)
    need(bool(t.feature_extractor), "train.feature_extractor", t.feature_extractor,
         "expected synthetic, random or the path of local Inception weights")
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain values only (modes as strings): safe to pickle, JSON-encode or hand to Ray."""

    def plain(v: Any) -> Any:
        if isinstance(v, StrEnum):
            return v.value
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def from_dict(d: dict, cls: type = CGSGANConfig) -> Any:
    """Rebuild a typed config from plain values (e.g. after crossing into a Ray worker).

    Unknown keys and invalid mode values raise ConfigError naming the key.
    """

    def build(cls, values: dict, prefix: str):
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown config keys under {prefix or 'root'}: {sorted(unknown)}")
        hints = _field_types(cls)
        kwargs = {}
        for name, value in values.items():
            kind = hints[name]
            if dataclasses.is_dataclass(kind) and isinstance(value, dict):
                kwargs[name] = build(kind, value, f"{prefix}{name}.")
            elif isinstance(kind, type) and issubclass(kind, StrEnum):
                try:
                    kwargs[name] = kind(value)
                except ValueError:
                    raise ConfigError(f"{prefix}{name}={value!r}: expected one of {[e.value for e in kind]}") from None
            elif isinstance(value, tuple):
                kwargs[name] = list(value)
            else:
                kwargs[name] = value
        return cls(**kwargs)

    return build(cls, d, "")


def _field_types(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)
