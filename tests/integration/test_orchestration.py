"""launch.py with real processes: Ray (local and `ray start --head` + `ray job submit`), the local
S3 endpoint (moto server) and an `mlflow server`, all on 127.0.0.1.

Each test trains the tiny model for a few steps on small synthetic data; the failure tests kill
a Ray Train worker, the driver, or the S3 endpoint mid-run. Each test's Ray lives in its own temp
dir (RAY_TMPDIR / --temp-dir) and only processes the test started are stopped (tests/integration/procs.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cgsgan.training.checkpoint import load_checkpoint
from infra.local.stack import free_port, s3_client
from tests.integration.procs import cmdline, descendants, kill_tree, ray_tmpdir, stop_ray
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.launching import TINY_RUN

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TOTAL_KIMG = 0.096  # 12 steps of batch 8
SHORT = [
    *TINY_RUN,
    "loss.num_views=2",
    f"train.total_kimg={TOTAL_KIMG}", "train.snapshot_ticks=3", "train.checkpoint_ticks=2",
    "cluster.max_failures=2",
    "train.feature_extractor=random",  # the synthetic-heads extractor is trained and tested in unit tests
]  # fmt: skip


@pytest.fixture
def ray_tmp():
    """This test's Ray temp dir; whatever Ray of it is left at the end is stopped (and only that)."""
    path = ray_tmpdir()
    yield path
    stop_ray(path)
    shutil.rmtree(path, ignore_errors=True)


def launch_env(s3_env: dict, tmp: Path, ray_tmp: Path) -> dict:
    env = {**os.environ, **s3_env, "RAY_TMPDIR": str(ray_tmp)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["CGSGAN_DATA_CACHE"] = os.environ.get("CGSGAN_DATA_CACHE", str(tmp / "data-cache"))
    env.pop("RAY_ADDRESS", None)  # a local Ray unless a test says otherwise
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch_args(bucket: str, tracking_uri: str, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "orchestration/launch.py", *SHORT, "storage=s3", f"storage.path=s3://{bucket}/runs",
        f"tracking.uri={tracking_uri}", f"output_dir={out}", f"name={name}", *extra,
    ]  # fmt: skip


def run_name_of(stdout: str) -> str:
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("run "))


def checkpoints_in_s3(s3_env: dict, bucket: str, run: str) -> list[str]:
    client = s3_client(s3_env["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"runs/{run}/").get("Contents", [])]
    return sorted(k for k in keys if k.endswith("/checkpoint.pt"))


def mlflow_runs(tracking_uri: str, run: str):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("cgsgan")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`cgsgan.run_name` = '{run}'")


def assert_continuous_steps(tracking_uri: str, run_id: str) -> None:
    """The kimg metric is logged once per tick at step = images seen: the steps must cover every
    tick from the first to the end, without a gap and without restarting from zero."""
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "progress.kimg")
    steps = sorted({m.step for m in history})
    tick_images = 16  # train.tick_kimg=0.016
    assert steps == list(range(tick_images, int(TOTAL_KIMG * 1000) + 1, tick_images)), steps


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) while waiting for {what}")
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ray_job_submit_finishes_a_short_run(s3_server, mlflow_server, tmp_path, ray_tmp):
    env = launch_env(s3_server.env(), tmp_path, ray_tmp)
    # Ray (>= 2.59) protects a `ray start` cluster with a token: give the cluster and the
    # submitting client the same one.
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    port, dash = free_port(), free_port()
    subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", f"--temp-dir={ray_tmp}",
         "--disable-usage-stats"],
        check=True, env=env, cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        excludes = '{"excludes": [".venv", ".git", "outputs", ".tmp", "**/__pycache__", "*.pt"]}'
        out = subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "job", "submit", f"--address=http://127.0.0.1:{dash}",
             "--working-dir", ".", f"--runtime-env-json={excludes}", "--",
             *[a if a != sys.executable else "python" for a in
               launch_args(s3_server.bucket, mlflow_server.tracking_uri, tmp_path / "out", "jobsubmit", "cluster=ray",
                           "cluster.use_gpu=false", "cluster.num_workers=1", "cluster.cpus_per_worker=2")]],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        assert "succeeded" in out.stdout.lower()
        run = run_name_of(out.stdout)
        assert checkpoints_in_s3(s3_server.env(), s3_server.bucket, run)
        runs = mlflow_runs(mlflow_server.tracking_uri, run)
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert runs[0].data.metrics["progress.kimg"] == pytest.approx(TOTAL_KIMG)
    finally:
        stop_ray(ray_tmp)  # this test's cluster only (`ray stop` would stop every Ray on the machine)


def test_killed_worker_restarts_from_checkpoint_and_mlflow_stays_continuous(s3_server, mlflow_server, tmp_path,
                                                                           ray_tmp):
    env = launch_env(s3_server.env(), tmp_path, ray_tmp)
    proc = subprocess.Popen(launch_args(s3_server.bucket, mlflow_server.tracking_uri, tmp_path / "out", "killworker"),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    lines: list[str] = []
    try:
        # Wait for the first checkpoint in S3, then SIGKILL the Ray Train worker process.
        def first_checkpoint() -> bool:
            while proc.stdout and (line := proc.stdout.readline()):
                lines.append(line)
                if "tick 2 " in line or line.startswith("tick 2 |"):
                    return True
            return False

        wait_for(first_checkpoint, 600, "the first checkpoint", proc)
        time.sleep(3)
        # This launch's worker: a descendant of the driver we started (its local Ray's raylet
        # started it), never the first RayTrainWorker on the machine, which may be someone else's.
        workers = [p for p in descendants(proc.pid) if "RayTrainWorker" in " ".join(cmdline(p))]
        assert len(workers) == 1, f"expected this launch's one Ray Train worker, found {workers}"
        os.kill(workers[0], signal.SIGKILL)
        rest, _ = proc.communicate(timeout=900)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    output = "".join(lines)
    assert proc.returncode == 0, output[-5000:]
    assert "resumed from" in output
    run = run_name_of(output)
    runs = mlflow_runs(mlflow_server.tracking_uri, run)
    assert len(runs) == 1
    assert runs[0].data.metrics["progress.kimg"] == pytest.approx(TOTAL_KIMG)
    assert_continuous_steps(mlflow_server.tracking_uri, runs[0].info.run_id)


def wait_for_s3_checkpoint(proc: subprocess.Popen, s3_server) -> tuple[str, list[str]]:
    """Read the launch's output until its run has a checkpoint in S3: (run name, lines read)."""
    lines: list[str] = []
    run = None

    def checkpointed() -> bool:
        nonlocal run
        while proc.stdout and (line := proc.stdout.readline()):
            lines.append(line)
            if line.startswith("run "):
                run = line.split()[1]
            if run and checkpoints_in_s3(s3_server.env(), s3_server.bucket, run):
                return True
        return False

    wait_for(checkpointed, 600, "a checkpoint in S3", proc)
    return run, lines


def test_stopped_driver_resumes_from_s3_with_the_same_mlflow_run(s3_server, mlflow_server, tmp_path, ray_tmp):
    env = launch_env(s3_server.env(), tmp_path, ray_tmp)
    args = launch_args(s3_server.bucket, mlflow_server.tracking_uri, tmp_path / "out", "stopdriver")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        run, _ = wait_for_s3_checkpoint(proc, s3_server)
    finally:
        kill_tree(proc.pid)  # the driver, its local Ray and the workers
        proc.wait(timeout=60)
    stop_ray(ray_tmp)  # anything of that Ray that left the tree (none expected)
    first_runs = mlflow_runs(mlflow_server.tracking_uri, run)
    assert len(first_runs) == 1

    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout
    resumed_at = float(again.stdout.split("resumed from")[1].split(" at ")[1].split()[0])
    assert resumed_at > 0
    runs = mlflow_runs(mlflow_server.tracking_uri, run)
    assert [r.info.run_id for r in runs] == [first_runs[0].info.run_id]
    assert runs[0].data.metrics["progress.kimg"] == pytest.approx(TOTAL_KIMG)
    assert_continuous_steps(mlflow_server.tracking_uri, runs[0].info.run_id)


def test_unreachable_s3_or_missing_bucket_fails_before_any_worker(s3_server, tmp_path, ray_tmp):
    env = launch_env(s3_server.env(), tmp_path, ray_tmp)
    args = [sys.executable, "orchestration/launch.py", "storage=s3", f"output_dir={tmp_path}"]
    missing = subprocess.run([*args, "storage.path=s3://no-such-bucket/x"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 2
    assert "no-such-bucket" in missing.stderr and "does not exist" in missing.stderr
    dead = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    unreachable = subprocess.run([*args, f"storage.path=s3://{s3_server.bucket}/x"], cwd=ROOT, env=dead,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
    assert unreachable.returncode == 2
    assert "cannot reach" in unreachable.stderr
    for out in (missing, unreachable):
        assert "Started a local Ray instance" not in out.stdout + out.stderr
        assert "RayTrainWorker" not in out.stdout + out.stderr


def test_s3_outage_during_training_never_leaves_a_half_checkpoint(s3_server, mlflow_server, tmp_path, ray_tmp):
    proxy = TcpProxy(s3_server.port).start()
    s3_env = {**s3_server.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    env = launch_env(s3_env, tmp_path, ray_tmp)
    args = launch_args(s3_server.bucket, mlflow_server.tracking_uri, tmp_path / "out", "s3outage",
                       "cluster.max_failures=1", "storage.outage_s=20")  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    run = None
    try:
        run, lines = wait_for_s3_checkpoint(proc, s3_server)
        proxy.stop()  # the endpoint disappears mid-run
        rest, _ = proc.communicate(timeout=900)
        output = "".join(lines) + rest
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    stop_ray(ray_tmp)
    # Either it failed with a clear error, or it retried and got through; never a silent success
    # with a partial checkpoint.
    assert proc.returncode != 0 or "done." in output, output[-4000:]
    if proc.returncode != 0:  # storage gone beyond storage.outage_s: one line saying where the checkpoints are
        assert "storage.outage_s=20" in output and "Newest checkpoint on storage: s3://" in output, output[-4000:]
    # Every checkpoint Ray registered in S3 is complete and loads.
    client = s3_client(s3_server.endpoint_url)
    keys = checkpoints_in_s3(s3_server.env(), s3_server.bucket, run)
    assert keys
    for key in keys:
        local = tmp_path / key.replace("/", "_")
        client.download_file(s3_server.bucket, key, str(local))
        state = load_checkpoint(local)
        assert state["counters"]["cur_nimg"] > 0 and isinstance(state["G"], dict)
    # The endpoint comes back: the same command resumes from the last complete checkpoint.
    proxy = TcpProxy(s3_server.port, port=proxy.port).start()
    try:
        again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        proxy.stop()
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout
