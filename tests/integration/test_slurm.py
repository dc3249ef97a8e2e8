"""Against a real single-node SLURM (slurm-wlm + munge, started here as root): submit a tiny
training with `launch.py cluster=slurm`, see it finish with checkpoints and an MLflow run; then
interrupt one mid-run (submitit's preemption signal) and see the requeued job resume; and run a
one-trial sweep with `sweeps/ablate.py cluster=slurm` on the allocation.

These tests must not be skipped in CI: if SLURM cannot start, they fail with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from mlflow.tracking import MlflowClient

from infra.slurm import local_cluster
from tests.integration.launching import TINY_RUN

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    *TINY_RUN,
    "loss.num_views=2",
    "train.total_kimg=0.096", "train.snapshot_ticks=3", "train.checkpoint_ticks=2",
    "slurm.time_min=30",
]  # fmt: skip
SUBMITTED: list[str] = []  # job ids, cancelled at the end if still there
KEY_LINES = re.compile(r"Starting with JobEnvironment|Bypassing|Caught signal|requeue|resumed from|CANCELLED|tick \d+ \|")


@pytest.fixture(scope="module")
def slurm():
    subprocess.run(["bash", str(ROOT / "infra/slurm/install_local.sh")], check=True, timeout=600)
    cluster = local_cluster.up(ROOT / ".tmp" / "slurm-test")
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env())  # submitit's own scancel/sacct calls read it too
    yield cluster
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if SUBMITTED:  # the jobs these tests submitted, not every job of the user
        subprocess.run(["scancel", *SUBMITTED], env={**os.environ, **cluster.env()}, capture_output=True)
    local_cluster.down(ROOT / ".tmp" / "slurm-test")


def submit(slurm, tmp_path, name, tracking_uri, *extra):
    env = {**os.environ, **slurm.env(), "PYTHONUNBUFFERED": "1",
           "CGSGAN_DATA_CACHE": os.environ.get("CGSGAN_DATA_CACHE", str(tmp_path / "cache"))}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "orchestration/launch.py", "cluster=slurm", *SHORT, f"output_dir={tmp_path / 'out'}",
         f"tracking.uri={tracking_uri}", f"name={name}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    job_id = next(line.split()[3] for line in out.stdout.splitlines() if line.startswith("submitted SLURM job"))
    SUBMITTED.append(job_id)
    run = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("run "))
    folder = tmp_path / "out" / "slurm"
    return submitit.SlurmJob(folder=folder, job_id=job_id), run, env


def wait_gone(job_id: str, env: dict, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        q = subprocess.run(["squeue", "-h", "-j", job_id], env=env, capture_output=True, text=True)
        if q.returncode == 0 and not q.stdout.strip():
            return
        time.sleep(3)
    raise AssertionError(f"SLURM job {job_id} still queued/running after {timeout:.0f} s")


def log_of(job: submitit.SlurmJob) -> str:
    return "\n".join(p.read_text() for p in (job.paths.stdout, job.paths.stderr) if p.exists())


def test_slurm_job_trains_with_checkpoints_and_mlflow(slurm, tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job, run, env = submit(slurm, tmp_path, "slurmrun", tracking)
    wait_gone(job.job_id, env, 900)
    log = log_of(job)
    assert job.result() == 0, log[-4000:]
    ckpts = sorted((tmp_path / "out" / "ray_results" / run).glob("checkpoint-*/checkpoint.pt"))
    assert ckpts, log[-4000:]
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("cgsgan").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["progress.kimg"] == pytest.approx(0.096)


def test_interrupted_slurm_job_requeues_and_resumes(slurm, tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job, run, env = submit(slurm, tmp_path, "slurmpreempt", tracking, "slurm.max_requeues=2")
    ckpt_dir = tmp_path / "out" / "ray_results" / run
    deadline = time.time() + 900
    while not list(ckpt_dir.glob("checkpoint-*/checkpoint.pt")):
        assert time.time() < deadline, "no checkpoint before the interrupt: " + log_of(job)[-3000:]
        time.sleep(2)
    job._interrupt()  # the preemption signal: submitit calls SlurmJob.checkpoint and requeues
    wait_gone(job.job_id, env, 1200)
    log = log_of(job)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "slurm_requeue.log").write_text(log)
    print("\n".join(line for line in log.splitlines() if KEY_LINES.search(line)))
    # submitit's Python handler saw SLURM's SIGTERM (Ray's abort-on-SIGTERM handler was replaced).
    assert "Bypassing signal SIGTERM" in log, log[-4000:]
    assert "requeueing (1 requeue(s) left" in log
    assert "resumed from" in log
    assert job.result() == 0
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("cgsgan").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["progress.kimg"] == pytest.approx(0.096)


def test_a_sweep_with_cluster_slurm_runs_on_the_allocation(slurm, tmp_path):
    """cluster=slurm with a sweep: one SLURM job starts Ray on the allocation and runs the sweep
    there (nothing of Ray on the submitting side); the report and the MLflow runs are its output."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, **slurm.env(), "PYTHONUNBUFFERED": "1",
           "CGSGAN_DATA_CACHE": os.environ.get("CGSGAN_DATA_CACHE", str(tmp_path / "cache"))}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "sweeps/ablate.py", "cluster=slurm", "data.synthetic_identities=32", "data.synthetic_views=2",
         "train.batch_size=8", "train.total_kimg=0.032", "train.tick_kimg=0.016", "train.snapshot_ticks=2",
         "train.checkpoint_ticks=2", "train.metric_samples=16", "slurm.time_min=30", "sweep.views=[2]",
         "sweep.camera_mode=[d_projection]", "sweep.seeds=[0]", "sweep.name=onslurm", f"output_dir={tmp_path / 'out'}",
         f"tracking.uri={tracking}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "as one SLURM job" in out.stdout and "Started a local Ray instance" not in out.stdout + out.stderr
    job_id = next(line.split()[3] for line in out.stdout.splitlines() if line.startswith("submitted SLURM job"))
    SUBMITTED.append(job_id)
    job = submitit.SlurmJob(folder=tmp_path / "out" / "slurm", job_id=job_id)
    wait_gone(job_id, env, 900)
    log = log_of(job)
    assert job.result() == 0, log[-4000:]
    assert "Ray at " in log  # the job's own Ray, on its port block
    table = (tmp_path / "out" / "sweeps" / "onslurm" / "comparison.md").read_text()
    assert "| v2-avg1-d_projection-bgrandom | 1 |" in table, table
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("cgsgan").experiment_id
    (parent,) = client.search_runs([exp], filter_string="tags.`cgsgan.sweep` = 'onslurm'")
    (child,) = client.search_runs([exp], filter_string="tags.sweep = 'onslurm'")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    assert child.data.metrics["progress.kimg"] == pytest.approx(0.032) and "metrics.fid_synth" in child.data.metrics
