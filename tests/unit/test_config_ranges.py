"""Every numeric key of the launch config has its range checked up front: a bad
value stops validation with a message naming the key and the value, before anything starts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import sweeps.ablate as ablate
from cgsgan.config import ConfigError
from orchestration.config import LaunchConfig, register, validate_launch

ROOT = Path(__file__).resolve().parents[2]
register()

# One out-of-range value for every numeric key (Hydra override syntax).
BAD = {
    "model.resolution": "48",
    "model.generator.z_dim": "0",
    "model.generator.w_dim": "0",
    "model.generator.mapping_layers": "-1",
    "model.generator.mapping_lr_mult": "0",
    "model.generator.w_avg_beta": "1.0",
    "model.generator.num_points": "0",
    "model.generator.point_radius": "-0.1",
    "model.generator.width": "0",
    "model.generator.heads": "0",
    "model.generator.base_blocks": "0",
    "model.generator.num_levels": "0",
    "model.generator.pe_res": "0",
    "model.generator.min_channels": "0",
    "model.discriminator.channel_base": "0",
    "model.discriminator.channel_max": "0",
    "model.discriminator.mbstd_group": "0",
    "model.discriminator.mbstd_channels": "0",
    "model.discriminator.cmap_dim": "0",
    "model.discriminator.camera_mapping_layers": "-1",
    "model.discriminator.num_fp16_res": "-1",
    "data.synthetic_identities": "0",
    "data.synthetic_views": "0",
    "data.synthetic_seed": "-1",
    "data.synthetic_yaw_std": "0",
    "data.synthetic_yaw_limit": "1.6",
    "loss.num_views": "0",
    "loss.r1_gamma": "-1",
    "loss.r1_interval": "0",
    "loss.knn_k": "0",
    "loss.knn_weight": "-1",
    "loss.center_weight": "-1",
    "loss.blur_sigma": "-1",
    "loss.blur_fade_kimg": "-1",
    "loss.g_clip": "-1",
    "loss.d_clip": "-1",
    "train.batch_size": "0",
    "train.batch_gpu": "-1",
    "train.g_lr": "0",
    "train.d_lr": "-0.002",
    "train.beta1": "1.0",
    "train.beta2": "-0.1",
    "train.ema_kimg": "-1",
    "train.ema_rampup": "-0.05",
    "train.total_kimg": "0",
    "train.tick_kimg": "0",
    "train.snapshot_ticks": "0",
    "train.checkpoint_ticks": "0",
    "train.seed": "-1",
    "train.truncation_psi": "1.5",
    "train.metric_samples": "0",
    "train.snapshot_metric_heads": "0",
    "train.num_threads": "-1",
    "cluster.num_workers": "0",
    "cluster.gpus_per_worker": "-1",
    "cluster.cpus_per_worker": "0",
    "cluster.max_failures": "-1",
    "storage.num_to_keep": "0",
    "storage.outage_s": "0",
    "tracking.system_metrics_interval_s": "-1",
    "slurm.nodes": "0",
    "slurm.gpus_per_node": "-1",
    "slurm.cpus_per_task": "0",
    "slurm.mem_gb": "-1",
    "slurm.time_min": "0",
    "slurm.max_requeues": "-1",
    "slurm.port_base": "65000",
    "slurm.signal_delay_s": "-1",
}
# NaN and Inf are out of range too (Hydra parses them as floats).
NOT_FINITE = {"train.g_lr": "inf", "loss.r1_gamma": "nan", "train.ema_kimg": "nan", "loss.blur_sigma": "inf",
              "cluster.cpus_per_worker": "inf", "train.truncation_psi": "nan"}


def load(*overrides: str) -> LaunchConfig:
    with initialize_config_dir(config_dir=str(ROOT / "orchestration" / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


def numeric_keys(cls, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += numeric_keys(t, f"{prefix}{f.name}.")
        elif t in (int, float):
            keys.append(f"{prefix}{f.name}")
    return keys


def test_the_table_covers_every_numeric_key():
    assert sorted(numeric_keys(LaunchConfig)) == sorted(BAD)


@pytest.mark.parametrize("key", sorted(BAD))
def test_an_out_of_range_value_names_the_key_and_the_value(key):
    cfg = load(f"{key}={BAD[key]}")
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    with pytest.raises(ConfigError) as info:
        validate_launch(cfg)
    assert f"{key}={value!r}" in str(info.value)


@pytest.mark.parametrize("key", sorted(NOT_FINITE))
def test_nan_and_inf_are_out_of_range(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_launch(load(f"{key}={NOT_FINITE[key]}"))


def test_zero_ema_and_blur_are_allowed():
    validate_launch(load("train.ema_kimg=0", "loss.blur_sigma=0", "loss.blur_fade_kimg=0", "loss.r1_gamma=0",
                         "train.truncation_psi=1.0", "train.num_threads=0"))


def test_snapshot_metric_names_are_checked_up_front():
    with pytest.raises(ConfigError, match="train.snapshot_metrics"):
        validate_launch(load("train.snapshot_metrics=[fid,bogus]"))


def test_sweep_max_concurrent():
    with pytest.raises(ConfigError, match=r"sweep\.max_concurrent=-1"):
        ablate.trials(dataclasses.replace(ablate.SweepAxes(), max_concurrent=-1))


def test_launch_stops_on_snapshot_ticks_zero_before_ray():
    """train.snapshot_ticks=0 used to pass and crash after a tick inside Ray (ZeroDivisionError)."""
    out = subprocess.run(
        [sys.executable, "orchestration/launch.py", "train.snapshot_ticks=0", "output_dir=/tmp/cgsgan-badcfg"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "train.snapshot_ticks=0: must be > 0" in out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr
