import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cgsgan import config
from cgsgan.config import to_dict
from orchestration.config import (
    NOT_IN_RUN_NAME,
    LaunchConfig,
    core_config,
    presets,
    register,
    resolve,
    resolve_paths,
    run_name,
    validate_launch,
)
from tests.unit.fakes import gsplat_without_kernels

CONF = str(Path(__file__).resolve().parents[2] / "orchestration" / "conf")
ROOT = Path(__file__).resolve().parents[2]
register()


def load(*overrides: str) -> LaunchConfig:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


def test_default_is_exactly_the_core_tiny_preset():
    cfg = load()
    assert to_dict(core_config(cfg)) == to_dict(config.tiny())  # model, data, loss and train
    assert cfg.cluster.kind == "local" and cfg.storage.kind == "local" and cfg.storage.path == ""
    validate_launch(cfg)


def test_an_edit_of_the_core_preset_is_what_launches(monkeypatch):
    """The model group is registered from cgsgan.config.tiny(): no YAML copy to keep in step."""
    def edited():
        cfg = original()
        cfg.train.g_lr, cfg.loss.blur_fade_kimg, cfg.data.synthetic_identities = 0.0123, 7.0, 96
        cfg.model.generator.num_points = 96
        return cfg

    original = config.tiny
    monkeypatch.setattr(config, "tiny", edited)
    try:
        register()
        cfg = load()
        assert to_dict(core_config(cfg)) == to_dict(edited())
        # the command line (and the data group) still win over the preset
        cfg = load("train.g_lr=0.5", "data.synthetic_identities=8")
        assert (cfg.train.g_lr, cfg.data.synthetic_identities, cfg.loss.blur_fade_kimg) == (0.5, 8, 7.0)
        assert load("data=ffhqc", "data.path=/x").data.source == "folder"
    finally:
        monkeypatch.undo()
        register()
    assert load().train.g_lr == config.tiny().train.g_lr


@pytest.mark.parametrize("res", [256, 512, 1024, 2048])
def test_reference_model_groups_are_the_core_presets(res):
    cfg = load(f"model=ffhq{res}", "data=ffhqc", "data.path=/data/FFHQC")
    ref = config.ffhq(res)
    ref.data.path = "/data/FFHQC"
    assert to_dict(core_config(cfg)) == to_dict(ref)


def test_no_model_preset_is_kept_in_yaml():
    assert not (ROOT / "orchestration" / "conf" / "model").exists()
    assert set(presets()) == {"tiny", "ffhq256", "ffhq512", "ffhq1024", "ffhq2048"}


@pytest.mark.parametrize("override", ["cluster.kind=slurmm", "storage.kind=s4", "model.camera_mode=sideways",
                                      "loss.background=plaid", "train.render_backend=opengl", "data.source=web"])
def test_a_mode_typo_fails_when_hydra_builds_the_config(override):
    with pytest.raises(Exception, match=re.escape(override.split("=")[0].split(".")[-1])):
        load(override)


def test_storage_path_must_agree_with_the_storage_kind():
    with pytest.raises(config.ConfigError, match=r"storage\.path='s3://b/x'.*storage=s3"):
        validate_launch(load("storage.path=s3://b/x"))
    with pytest.raises(config.ConfigError, match=r"storage\.kind=s3 needs s3://bucket"):
        validate_launch(load("storage=s3", "storage.path=s3:/b/x"))
    assert validate_launch(load("storage=s3", "storage.path=s3://b/x")).storage.kind == "s3"


@pytest.mark.parametrize("overrides, kind, server, artifacts", [
    ((), "local", False, "outputs/mlartifacts"),
    (("storage=s3", "storage.path=s3://b/x", "tracking=server", "tracking.uri=http://mlflow:5000"), "s3", True, None),
    # A store on disk named by the user is still a store on disk: its artifacts go beside the run's
    # outputs, not into ./mlruns of whatever folder a worker runs in.
    (("tracking.uri=sqlite:///elsewhere/mlflow.db",), "local", False, "outputs/mlartifacts"),
])
def test_the_plan_decides_storage_and_tracking_kinds_once(overrides, kind, server, artifacts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = resolve(validate_launch(load(*overrides)))
    assert (plan.storage_kind, plan.tracking_server) == (kind, server)
    assert plan.artifact_root == (artifacts and (tmp_path / artifacts).as_uri())
    assert plan.run_dir == tmp_path / "outputs" / "runs" / plan.name


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


def test_a_layout_or_reporting_setting_keeps_the_run_and_every_exception_is_a_train_key():
    a = load()
    assert run_name(load("train.batch_gpu=4", "train.num_threads=1")) == run_name(a)  # layouts, like num_workers
    assert run_name(load("train.metrics_at=end", "train.metric_samples=64", "train.snapshot_metrics=[fid]")) == run_name(a)
    assert set(NOT_IN_RUN_NAME) <= set(to_dict(a.train)) and all(NOT_IN_RUN_NAME.values())


def test_a_dataset_named_relatively_or_absolutely_is_one_run_with_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "heads").mkdir()
    (tmp_path / "list.json").write_text("[0]")
    monkeypatch.chdir(tmp_path)
    relative = resolve_paths(load("data=custom", "data.path=heads", "data.index_list=list.json", "output_dir=out"))
    absolute = resolve_paths(load("data=custom", f"data.path={tmp_path / 'heads'}",
                                  f"data.index_list={tmp_path / 'list.json'}", f"output_dir={tmp_path / 'out'}"))
    assert (relative.data.path, relative.data.index_list) == (str(tmp_path / "heads"), str(tmp_path / "list.json"))
    assert relative.output_dir == str(tmp_path / "out")
    assert run_name(relative) == run_name(absolute)
    monkeypatch.chdir(ROOT)  # elsewhere, as a Ray worker is: the resolved config still names the same files
    assert resolve(relative).name == run_name(absolute) and resolve(relative).output_dir == str(tmp_path / "out")


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["cluster.num_workers=3"], "cluster.num_workers"),
        (["train.batch_size=12", "cluster.num_workers=2", "model.discriminator.mbstd_group=4"], "mbstd_group"),
        (["loss.num_views=0"], "loss.num_views"),
        (["data=ffhqc", "data.path=/nonexistent/ffhqc"], "data.path"),
        (["data=ffhqc"], "data.path"),
        # a worker trains on whole GPUs: a fraction would put two ranks on one GPU (or an invalid ordinal)
        (["cluster.use_gpu=true", "cluster.gpus_per_worker=0.5"], "cluster.gpus_per_worker"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        validate_launch(load(*overrides))


def test_wrong_type_fails_at_composition():
    with pytest.raises(Exception, match="num_workers"):
        load("cluster.num_workers=many")


def test_launch_rejects_bad_config_before_starting_ray():
    # A mode that is not one of its values: Hydra rejects it while building the config (its
    # message names the key, the value and the allowed values; exit 1).
    out = subprocess.run(
        [sys.executable, "orchestration/launch.py", "model.camera_mode=sideways", "output_dir=/tmp/cgsgan-badcfg"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1
    assert "model.camera_mode" in out.stderr and "'sideways'" in out.stderr and "d_projection" in out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr
    # A value out of range: the launcher's own check, one line naming key and value (exit 2).
    out = subprocess.run(
        [sys.executable, "orchestration/launch.py", "loss.num_views=0", "output_dir=/tmp/cgsgan-badcfg"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and out.stderr.startswith("error: loss.num_views=0")
    assert "Started a local Ray instance" not in out.stdout + out.stderr


def test_launch_requires_data_path_for_ffhqc():
    out = subprocess.run(
        [sys.executable, "orchestration/launch.py", "data=ffhqc", "output_dir=/tmp/cgsgan-badcfg"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "data.path" in out.stderr


@pytest.mark.parametrize("metric", ["fid_novel", "yaw_bins"])
def test_ground_truth_metrics_need_the_synthetic_heads(tmp_path, metric):
    # Novel views and yaw bins compare with the synthetic heads rendered at other poses: a folder
    # dataset has no such ground truth, said before anything starts.
    with pytest.raises(config.ConfigError, match=rf"train\.snapshot_metrics=.*{metric}.*ground truth"):
        validate_launch(load("data=ffhqc", f"data.path={tmp_path}", f"train.snapshot_metrics=[fid,{metric}]"))
    validate_launch(load(f"train.snapshot_metrics=[fid,{metric}]"))  # data=synthetic: accepted


def launch_until_ray(monkeypatch, capsys, *overrides: str) -> tuple[int | None, str]:
    """`cluster.launch` of these overrides up to the point where it would start Ray: its exit code
    (None where it got there) and what it said on stderr."""
    from orchestration import cluster

    class ReachedRay(Exception):
        pass

    def connect_ray(*args, **kwargs):
        raise ReachedRay

    monkeypatch.setattr(cluster, "connect_ray", connect_ray)
    monkeypatch.setattr(cluster, "make_local_data", lambda cfg: None)  # the synthetic heads: not what is tested
    try:
        rc = cluster.launch(load(*overrides))
    except ReachedRay:
        rc = None
    return rc, capsys.readouterr().err


def test_a_gpu_launch_without_gsplat_kernels_stops_before_ray_in_one_line(monkeypatch, capsys, tmp_path):
    gsplat_without_kernels(monkeypatch)
    rc, err = launch_until_ray(monkeypatch, capsys, "cluster.use_gpu=true", f"output_dir={tmp_path}")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: cluster.use_gpu=true renders with gsplat"), err
    assert "nvcc" in err and "infra/docker/Dockerfile" in err
    # The CPU path never needs gsplat.
    rc, err = launch_until_ray(monkeypatch, capsys, f"output_dir={tmp_path}")
    assert rc is None, err


def test_a_local_launch_on_a_gpu_machine_with_use_gpu_false_says_so(monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    rc, err = launch_until_ray(monkeypatch, capsys, f"output_dir={tmp_path}")
    lines = [line for line in err.splitlines() if "cluster.use_gpu" in line]
    assert rc is None and lines == [
        "note: this machine has 2 CUDA GPU(s) but cluster.use_gpu=false: training on the CPU "
        "(cluster.use_gpu=true trains on the GPUs)"], err


def test_the_documented_two_gpu_smoke_composes_and_validates():
    """docs/gpu.md's first multi-GPU run: two workers, one GPU each, a few steps of the tiny model."""
    import shlex

    text = (ROOT / "docs" / "gpu.md").read_text()
    command = re.search(r"# two-GPU smoke\n\s*(python orchestration/launch\.py .*)", text).group(1)
    overrides = shlex.split(command)[2:]
    assert {"cluster=local", "cluster.use_gpu=true", "cluster.num_workers=2"} <= set(overrides)
    cfg = validate_launch(load(*overrides))
    assert cfg.cluster.gpus_per_worker == 1 and cfg.cluster.num_workers * cfg.cluster.gpus_per_worker == 2
    steps = cfg.train.total_kimg * 1000 / cfg.train.batch_size
    assert 2 <= steps <= 8, steps  # a few steps, several ticks
