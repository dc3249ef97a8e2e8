import pickle
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import sweeps.ablate as ablate
from cgsgan.config import ConfigError
from orchestration.config import register, run_name, validate_launch
from orchestration.slurm import SlurmJob, port_block, ray_start_args

ROOT = Path(__file__).resolve().parents[2]
register()


def test_port_blocks_of_two_jobs_never_overlap():
    a, b = port_block("1234", 20000), port_block("1235", 20000)
    ra = set(a.values()) | set(range(a["min_worker"], a["max_worker"] + 1))
    rb = set(b.values()) | set(range(b["min_worker"], b["max_worker"] + 1))
    assert not ra & rb
    assert len(set(a.values())) == len(a)  # no two services share a port
    args = ray_start_args("10.0.0.1", a, 8, 4, "/tmp/x")
    assert "--node-ip-address=10.0.0.1" in args and f"--min-worker-port={a['min_worker']}" in args


def test_slurm_job_requeues_until_its_budget_is_spent():
    job = SlurmJob({"name": "x"}, requeues_left=2)
    first = job.checkpoint()
    assert first is not None and first.function.requeues_left == 1
    second = first.function.checkpoint()
    assert second.function.requeues_left == 0
    assert second.function.checkpoint() is None
    pickle.loads(pickle.dumps(job))  # submitit pickles the callable: plain values only


def load_slurm(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "orchestration" / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=["cluster=slurm", *overrides]))


def test_slurm_resources_must_fit_the_workers():
    validate_launch(load_slurm())
    with pytest.raises(ConfigError, match="slurm.gpus_per_node"):
        validate_launch(load_slurm("cluster.use_gpu=true", "cluster.num_workers=8", "slurm.gpus_per_node=4",
                                   "slurm.nodes=1", "train.batch_size=32"))
    cfg = load_slurm("cluster.use_gpu=true", "cluster.num_workers=8", "cluster.cpus_per_worker=1",
                     "slurm.gpus_per_node=4", "slurm.nodes=2", "slurm.cpus_per_task=8", "train.batch_size=32")
    validate_launch(cfg)
    assert run_name(cfg) == run_name(load_slurm("train.batch_size=32"))  # the cluster does not change the run


def load_sweep(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "sweeps" / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("ablate", overrides=list(overrides)))


def test_default_sweep_covers_views_and_camera_injection():
    cfg = load_sweep()
    keys = [ablate.trial_key(t) for t in ablate.trials(cfg.sweep)]
    assert len(keys) == 4
    assert {t["views"] for t in ablate.trials(cfg.sweep)} == {1, 4}
    assert {t["camera_mode"] for t in ablate.trials(cfg.sweep)} == {"d_projection", "g_conditioned"}
    names = {run_name(ablate.trial_config(cfg, t)) for t in ablate.trials(cfg.sweep)}
    assert len(names) == 4  # every trial its own deterministic run


def test_sweep_axes_apply_to_the_trial_config_and_subsets_are_checked():
    cfg = load_sweep("sweep.views=[2]", "sweep.grad_averaging=[false]", "sweep.camera_mode=[d_none]",
                     "sweep.background=[black]", "sweep.seeds=[3,4]")
    grid = ablate.trials(cfg.sweep)
    assert len(grid) == 2
    tc = ablate.trial_config(cfg, grid[1])
    assert (tc.loss.num_views, tc.loss.grad_averaging, tc.model.camera_mode, tc.loss.background, tc.train.seed) == (
        2, False, "d_none", "black", 4)
    sub = load_sweep(f"sweep.only=[{ablate.trial_key(grid[0])}]", "sweep.views=[2]", "sweep.grad_averaging=[false]",
                     "sweep.camera_mode=[d_none]", "sweep.background=[black]", "sweep.seeds=[3,4]")
    assert len(ablate.trials(sub.sweep)) == 1
    with pytest.raises(ConfigError, match="sweep.only"):
        ablate.trials(load_sweep("sweep.only=[nope]").sweep)
    with pytest.raises(ConfigError, match="loss.num_views"):
        ablate.trial_config(cfg, {**grid[0], "views": 0})


def test_report_writes_table_and_plot(tmp_path):
    rows = [
        {"trial": f"v{v}-avg1-{cm}-bgrandom-s{s}", "views": v, "grad_averaging": True, "camera_mode": cm,
         "background": "random", "seed": s, "kimg": 3.0, ablate.METRIC: 10.0 + v + s, "loss/G": 1.0, "loss/D": 1.0,
         "error": ""}
        for v in (1, 4) for cm in ("d_projection", "g_conditioned") for s in (0, 1)
    ]  # fmt: skip
    csv_path, md_path, png_path = ablate.write_report(rows, tmp_path)
    assert csv_path.read_text().count("\n") == 9
    assert "| v4-avg1-g_conditioned-bgrandom-s1 |" in md_path.read_text()
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
