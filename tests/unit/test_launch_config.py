import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cgsgan import config
from orchestration.config import LaunchConfig, register, resolve, run_name, validate_launch

CONF = str(Path(__file__).resolve().parents[2] / "orchestration" / "conf")
ROOT = Path(__file__).resolve().parents[2]
register()


def load(*overrides: str) -> LaunchConfig:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


def test_default_is_the_tiny_model_and_matches_the_core_preset():
    cfg = load()
    tiny = config.tiny()
    assert dataclasses.asdict(cfg.model) == dataclasses.asdict(tiny.model)
    assert dataclasses.asdict(cfg.loss) == dataclasses.asdict(tiny.loss)
    assert dataclasses.asdict(cfg.train) == dataclasses.asdict(tiny.train)
    assert cfg.cluster.kind == "local" and cfg.storage.path == "" and cfg.data.path == ""
    validate_launch(cfg)


@pytest.mark.parametrize("res", [256, 512, 1024, 2048])
def test_reference_model_groups_match_the_core_presets(res):
    cfg = load(f"model=ffhq{res}")
    assert dataclasses.asdict(cfg.model) == dataclasses.asdict(config.ffhq(res).model)


def test_run_name_is_deterministic_and_ignores_cluster_settings():
    a, b = load(), load("cluster.num_workers=2", "tracking.uri=http://x:5000")
    assert run_name(a) == run_name(b)
    assert run_name(load("loss.num_views=2")) != run_name(a)
    assert run_name(load("name=mytag")).startswith("mytag-")


def test_a_longer_budget_continues_the_same_run():
    a = load()
    assert run_name(load("train.total_kimg=50", "train.snapshot_ticks=7")) == run_name(a)
    assert run_name(load("train.g_lr=0.001")) != run_name(a)
    assert run_name(load("train.seed=1")) != run_name(a)
    plan = resolve(a)
    assert plan.tracking_uri.startswith("sqlite:///") and plan.storage_path.endswith("ray_results")


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.camera_mode=sideways"], "model.camera_mode"),
        (["loss.background=plaid"], "loss.background"),
        (["cluster.num_workers=3"], "cluster.num_workers"),
        (["train.batch_size=12", "cluster.num_workers=2", "model.discriminator.mbstd_group=4"], "mbstd_group"),
        (["loss.num_views=0"], "loss.num_views"),
        (["data=ffhqc", "data.path=/nonexistent/ffhqc"], "data.path"),
        (["data=ffhqc"], "data.path"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        validate_launch(load(*overrides))


def test_wrong_type_fails_at_composition():
    with pytest.raises(Exception, match="num_workers"):
        load("cluster.num_workers=many")


def test_launch_rejects_bad_config_before_starting_ray():
    out = subprocess.run(
        [sys.executable, "orchestration/launch.py", "model.camera_mode=sideways", "output_dir=/tmp/cgsgan-badcfg"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "model.camera_mode='sideways'" in out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr


def test_launch_requires_data_path_for_ffhqc():
    out = subprocess.run(
        [sys.executable, "orchestration/launch.py", "data=ffhqc", "output_dir=/tmp/cgsgan-badcfg"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "data.path" in out.stderr
