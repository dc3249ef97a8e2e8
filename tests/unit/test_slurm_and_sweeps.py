import dataclasses
import os
import pickle
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import orchestration.slurm as slurm
import sweeps.ablate as ablate
import sweeps.report as report
from cgsgan.config import ConfigError
from orchestration import cluster
from orchestration.config import LaunchConfig, register, resolve, run_name, to_typed, validate_launch
from orchestration.ray_nodes import port_block, ray_start_args
from orchestration.slurm import SlurmJob

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
    job = SlurmJob({"name": "x"}, requeues_left=2, entry=cluster.launch)
    first = job.checkpoint()
    assert first is not None and first.function.requeues_left == 1
    second = first.function.checkpoint()
    assert second.function.requeues_left == 0 and second.function.entry is cluster.launch
    assert second.function.checkpoint() is None
    # submitit pickles the callable: plain values, and the entry and schema by reference
    assert pickle.loads(pickle.dumps(job)) == job


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


def test_the_submitit_job_asks_srun_for_the_node_cpus(tmp_path, monkeypatch):
    """Since Slurm 22.05 srun does not inherit --cpus-per-task from sbatch: the line submitit writes
    must ask for it, or the Ray node and all its workers share one core where cores are bound."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\n")  # submitit only checks that srun is on PATH
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    cfg = load_slurm("slurm.nodes=4", "slurm.gpus_per_node=8", "slurm.cpus_per_task=64")
    executor = slurm.make_executor(cfg.slurm, tmp_path / "jobs", "cgsgan", cluster="slurm")
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")
    assert "#SBATCH --cpus-per-task=64" in script
    sruns = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(sruns) == 1 and "--cpus-per-task=64" in sruns[0].split(), sruns


def test_a_slurm_node_cannot_hold_more_workers_than_its_ports():
    with pytest.raises(ConfigError, match=r"cluster.num_workers=64 on slurm.nodes=1: .*worker ports"):
        validate_launch(load_slurm("cluster.num_workers=64", "slurm.nodes=1", "slurm.cpus_per_task=128",
                                   "cluster.cpus_per_worker=1", "train.batch_size=64", "train.batch_gpu=1"))


def load_sweep(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "sweeps" / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("ablate", overrides=list(overrides)))


def test_default_sweep_asks_one_question_over_three_paired_seeds_and_says_so():
    cfg = load_sweep()
    trials = ablate.trials(cfg.sweep)
    assert len(trials) == 6
    assert {(t["camera_mode"], t["seed"]) for t in trials} == {
        (m, s) for m in ("d_projection", "g_conditioned") for s in (0, 1, 2)}
    assert {(t["views"], t["grad_averaging"], t["background"]) for t in trials} == {(4, True, "random")}
    names = {run_name(ablate.trial_config(cfg, t)) for t in trials}
    assert len(names) == 6  # every trial its own deterministic run
    lines = ablate.opening(cfg, trials, ablate.compared_columns(cfg), concurrent=1)
    assert lines[0].startswith("sweep camera: camera_mode=g_conditioned against camera_mode=d_projection (where")
    assert "6 trials" in lines[1] and "seeds [0, 1, 2]" in lines[1] and "fid_synth_novel" in lines[1]
    assert f"about {6 * cfg.sweep.minutes_per_trial:.0f} min" in lines[2]
    # the minutes were measured with the tiny model: for another the time is not guessed
    big = load_sweep("model=ffhq512")
    line = ablate.opening(big, ablate.trials(big.sweep), ablate.compared_columns(big), concurrent=1)[2]
    assert line.startswith("  expected time: unknown for this model"), line


def test_a_sweep_name_holding_another_question_is_refused_in_one_line_naming_the_differences(tmp_path):
    from sweeps.question import check_question, record_question

    folder = tmp_path / "sweeps" / "camera"
    first = load_sweep(f"output_dir={tmp_path}")
    record_question(first, folder)
    check_question(load_sweep(f"output_dir={tmp_path}", "sweep.max_concurrent=3", "train.batch_gpu=4"), folder)  # how it runs
    other = load_sweep(f"output_dir={tmp_path}", "sweep.views=[4,1,2]", "sweep.grad_averaging=[true,false]")
    with pytest.raises(ConfigError) as e:
        check_question(other, folder)
    message = str(e.value)
    assert "\n" not in message and "sweep.name=<name>" in message
    assert "sweep.views: [4] -> [4, 1, 2]" in message and "sweep.grad_averaging: [True] -> [True, False]" in message
    with pytest.raises(ConfigError, match="train.total_kimg: 2.0 -> 5.0"):
        check_question(load_sweep(f"output_dir={tmp_path}", "train.total_kimg=5"), folder)


def test_paper_sweep_asks_the_four_questions_one_at_a_time_against_the_paper_configuration():
    cfg = load_sweep("sweep=paper")
    trials = ablate.trials(cfg.sweep)
    reference = {"views": 4, "grad_averaging": True, "camera_mode": "d_projection", "background": "random"}
    configs = {tuple(sorted({k: v for k, v in t.items() if k != "seed"}.items())) for t in trials}
    arms = [{"views": 1}, {"grad_averaging": False}, {"camera_mode": "d_none"}, {"camera_mode": "g_conditioned"},
            {"background": "white"}]  # fmt: skip
    assert configs == {tuple(sorted({**reference, **arm}.items())) for arm in [{}, *arms]}
    assert len(trials) == 6 * 3 and {t["seed"] for t in trials} == {0, 1, 2}
    assert [t["seed"] for t in trials[:6]] == [0] * 6  # seed by seed: the first pairs complete early
    # every arm has a partner of the same seed in the reference, so the report can pair them
    rows = [{**t, "config": ablate.config_key(t), "trial": ablate.trial_key(t), "metrics/fid_synth": 1.0 + t["seed"],
             "error": ""} for t in trials]  # fmt: skip
    columns = ablate.compared_columns(cfg)[:1]
    assert {(d.axis, d.arm, d.pairs) for d in report.paired_differences(rows, ablate.axis_values(cfg.sweep), columns)} == {
        ("views", "1", 3), ("grad_averaging", "False", 3), ("camera_mode", "d_none", 3),
        ("camera_mode", "g_conditioned", 3), ("background", "white", 3)}  # fmt: skip
    tc = ablate.trial_config(cfg, trials[0])
    assert (tc.train.total_kimg, tc.train.metric_samples, tc.cluster.cpus_per_worker) == (5.0, 1024, 1)


def test_progress_says_n_of_total_and_the_time_left_from_trials_that_trained():
    from sweeps.progress import Progress

    now = [0.0]
    p = Progress("s", total=5, concurrent=2, clock=lambda: now[0])
    assert p.start("a") == "sweep s: trial 1/5 started: a"
    assert p.start("b") == "sweep s: trial 2/5 started: b"
    now[0] = 600.0
    assert p.end("a") == "sweep s: 1/5 done (a finished after 10.0 min); 4 left, about 20.0 min (10.0 min a trial, 2 at a time)"
    p.start("c")
    now[0] = 605.0
    line = p.end("c", replayed=True)  # replaying a finished run takes seconds: not a trial's time
    assert line.endswith("3 left, about 20.0 min (10.0 min a trial, 2 at a time)"), line
    now[0] = 1200.0
    assert "b failed after 20.0 min" in p.end("b", failed=True)
    assert p.start("d") == "sweep s: trial 4/5 started: d"
    p.start("e")
    p.end("d"), p.end("e")
    assert p.left() == "all trials done"


def test_a_trial_writes_where_the_driver_resolved_its_paths(tmp_path, monkeypatch):
    """A trial runs in a working directory Ray Tune makes for it: its output_dir (its MLflow store,
    metrics, samples) is the driver's, absolute, and resolves the same from anywhere."""
    monkeypatch.chdir(tmp_path)
    cfg = load_sweep("output_dir=outputs")
    tc = ablate.trial_config(cfg, ablate.trials(cfg.sweep)[0])
    assert tc.output_dir == str(tmp_path / "outputs")
    monkeypatch.chdir(ROOT)  # elsewhere, as a trial is
    assert resolve(tc).tracking_uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert ablate.trial_params(ablate.trials(cfg.sweep)[0]) == {
        "views": "4", "grad_averaging": "True", "camera_mode": "d_projection", "background": "random", "seed": "0"}


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


def test_sweep_axis_typos_fail_when_hydra_builds_the_config():
    with pytest.raises(Exception, match="camera_mode"):
        load_sweep("sweep.camera_mode=[d_nonee]")
    with pytest.raises(Exception, match="background"):
        load_sweep("sweep.background=[plaid]")


class Submitted:
    def __init__(self):
        self.calls = []

    def __call__(self, cfg, job_name, entry, driver_cpus=0, cluster=None):
        self.calls.append((cfg, job_name, entry, driver_cpus))
        job = SlurmJob(to_dict_of(cfg), cfg.slurm.max_requeues, entry, type(cfg), driver_cpus)
        pickle.loads(pickle.dumps(job))  # what submitit would pickle
        return type("Job", (), {"job_id": "42", "paths": type("P", (), {"stdout": "/x/42.out"})()})()


def to_dict_of(cfg):
    from cgsgan.config import to_dict

    return to_dict(cfg)


def test_a_sweep_with_cluster_slurm_runs_as_one_slurm_job(monkeypatch, tmp_path, capsys):
    """cluster=slurm: the sweep is checked here and submitted as one job that runs run_sweep on the
    allocation; no Ray and no MLflow run start on the submitting machine."""
    import ray

    submitted = Submitted()
    monkeypatch.setattr(slurm, "submit", submitted)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("a local Ray was started"))
    cfg = load_sweep("cluster=slurm", f"output_dir={tmp_path}", "sweep.name=onjob")
    assert ablate.run_sweep(cfg) == 0
    ((sent, job_name, entry, driver_cpus),) = submitted.calls
    assert entry is ablate.run_sweep and job_name == "sweep-onjob" and driver_cpus == 1
    assert "as one SLURM job" in capsys.readouterr().out and not (tmp_path / "mlflow.db").exists()
    # the job rebuilds the sweep's own config class from the plain values it was given
    rebuilt = to_typed(to_dict_of(sent), ablate.SweepConfig)
    assert isinstance(rebuilt, ablate.SweepConfig) and rebuilt.sweep.name == "onjob" and rebuilt.cluster.kind == "slurm"
    # a bad sweep stops before anything is submitted, naming the key
    assert ablate.run_sweep(load_sweep("cluster=slurm", f"output_dir={tmp_path}", "sweep.only=[nope]")) == 2
    assert len(submitted.calls) == 1 and "sweep.only" in capsys.readouterr().err


def test_a_launch_with_cluster_slurm_submits_the_launch(monkeypatch, tmp_path):
    import ray

    submitted = Submitted()
    monkeypatch.setattr(slurm, "submit", submitted)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("a local Ray was started"))
    cfg = load_slurm(f"output_dir={tmp_path}")
    assert cluster.launch(cfg) == 0
    ((sent, job_name, entry, _),) = submitted.calls
    assert entry is cluster.launch and job_name == run_name(cfg) and type(sent) is LaunchConfig


def test_the_sweep_script_stops_on_a_bad_value_before_anything_starts(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "sweeps" / "ablate.py"), "sweep.only=[nope]", "cluster=slurm",
                          f"output_dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and out.stderr.startswith("error: sweep.only: no such trials ['nope']"), out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr and "submitted" not in out.stdout


def test_every_axis_is_a_sweep_list_that_sets_one_config_key():
    settings = {f.name for f in dataclasses.fields(ablate.SweepSettings)}
    lists = {f.name for f in dataclasses.fields(ablate.SweepAxes) if f.name not in settings}
    assert lists == set(ablate.AXES)
    cfg = load_sweep()
    for axis in ablate.AXIS_TABLE:
        assert OmegaConf.select(OmegaConf.structured(cfg), axis.key) is not None, axis
    tc = ablate.trial_config(cfg, {"views": 2, "grad_averaging": False, "camera_mode": "d_none",
                                   "background": "white", "seed": 7})  # fmt: skip
    assert [OmegaConf.select(OmegaConf.structured(tc), axis.key) for axis in ablate.AXIS_TABLE] == [
        2, False, "d_none", "white"]
    assert tc.train.seed == 7 and tc.name == "camera-v2-avg0-d_none-bgwhite-s7"
    # Every run logs the axes and the seed as params of the same names: a trial is searched by them.
    from orchestration.config import core_config
    from orchestration.run_params import run_params

    params = run_params(core_config(tc), tc.name)
    assert {a: params[a] for a in [*ablate.AXES, "seed"]} == {
        "views": "2", "grad_averaging": "False", "camera_mode": "d_none", "background": "white", "seed": "7"}
    with pytest.raises(ConfigError, match="camera_mode"):  # a value is typed as on the command line
        ablate.trial_config(cfg, {"views": 2, "grad_averaging": False, "camera_mode": "sideways",
                                  "background": "white", "seed": 7})  # fmt: skip
