"""The local stack (infra/local), the bucket bootstrap (infra/s3/bootstrap.py) and the sbatch
template (infra/slurm/train.sbatch), each against real processes on 127.0.0.1: a moto S3
server, an `mlflow server` proxying artifacts into it, and a Ray head started by the sbatch
script under stand-in `srun`/`scontrol` commands."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import boto3
import pytest

from infra.local.stack import StackError, free_port, port_in_use, s3_client, start_s3
from infra.s3.bootstrap import RULE_ID, bootstrap, get_lifecycle_rules, make_client

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PAB_ALL = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return False
    except ProcessLookupError:
        return True


def clean_env(**extra: str) -> dict[str, str]:
    """This process's env without any AWS/MLflow settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(extra)
    return env


# --- S3 endpoint ------------------------------------------------------------------------------


def test_s3_server_serves_the_test_bucket(s3_server):
    assert s3_server.endpoint_url == f"http://127.0.0.1:{s3_server.port}"
    assert s3_server.env() == {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
    }
    names = [b["Name"] for b in s3_client(s3_server.endpoint_url).list_buckets()["Buckets"]]
    assert s3_server.bucket == "cgsgan-test" and "cgsgan-test" in names


def test_start_s3_refuses_a_busy_port_and_stop_ends_the_process_group(s3_server, tmp_path):
    with pytest.raises(StackError, match="already in use"):
        start_s3(s3_server.port, tmp_path / "busy")
    server = start_s3(workdir=tmp_path / "own")
    assert server.alive() and port_in_use(server.port)
    server.stop()
    server.stop()  # twice is fine
    assert group_gone(server.pid) and not port_in_use(server.port)
    assert (tmp_path / "own" / "s3.log").exists()


# --- bucket bootstrap -------------------------------------------------------------------------


def run_bootstrap(s3_server, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "infra/s3/bootstrap.py", *args],
        cwd=ROOT, env=clean_env(**s3_server.env()), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_bootstrap_twice_leaves_a_versioned_private_bucket_with_the_expiry_rule(s3_server):
    bucket = "cgsgan-bootstrap"
    args = ("--bucket", bucket, "--prefix", "runs/", "--expire-checkpoints-days", "30", "--noncurrent-days", "7")
    first = run_bootstrap(s3_server, *args)
    assert (first["bucket_status"], first["public_access_block"], first["versioning"], first["lifecycle"]) == (
        "created", "set", "set", "set",
    )  # fmt: skip
    second = run_bootstrap(s3_server, *args)  # idempotent: same state, nothing changed, no error
    assert (second["bucket_status"], second["public_access_block"], second["versioning"], second["lifecycle"]) == (
        "exists", "unchanged", "unchanged", "unchanged",
    )  # fmt: skip
    assert first["warnings"] == second["warnings"] == []

    # moto implements all three bucket APIs, so all three are asserted on the real state.
    s3 = s3_client(s3_server.endpoint_url)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == PAB_ALL
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rules == [{
        "ID": RULE_ID, "Filter": {"Prefix": "runs/"}, "Status": "Enabled", "Expiration": {"Days": 30},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 7}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }]  # fmt: skip
    # Versioning works: an overwritten checkpoint keeps its previous version.
    s3.put_object(Bucket=bucket, Key="runs/x/checkpoint.pt", Body=b"one")
    s3.put_object(Bucket=bucket, Key="runs/x/checkpoint.pt", Body=b"two")
    versions = s3.list_object_versions(Bucket=bucket, Prefix="runs/x/")["Versions"]
    assert len(versions) == 2


def test_bootstrap_updates_its_rule_and_keeps_other_rules(s3_server, monkeypatch):
    for key, value in s3_server.env().items():  # credentials through the usual boto3 chain
        monkeypatch.setenv(key, value)
    bucket = "cgsgan-bootstrap-rules"
    client = make_client(s3_server.endpoint_url, "us-east-1")
    client.create_bucket(Bucket=bucket)
    other = {"ID": "someone-elses", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled", "Expiration": {"Days": 1}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})

    state = bootstrap(client, bucket, "us-east-1", prefix="runs/", expire_days=30)
    assert state.bucket_status == "exists" and state.lifecycle == "set"
    state = bootstrap(client, bucket, "us-east-1", prefix="runs/", expire_days=10)
    assert state.lifecycle == "set" and state.versioning == "unchanged"
    assert bootstrap(client, bucket, "us-east-1", prefix="runs/", expire_days=10).lifecycle == "unchanged"

    rules = {r["ID"]: r for r in get_lifecycle_rules(client, bucket)}
    assert set(rules) == {"someone-elses", RULE_ID}
    assert rules["someone-elses"]["Expiration"] == {"Days": 1}
    assert rules[RULE_ID]["Expiration"] == {"Days": 10}


def test_bootstrap_creates_the_bucket_in_the_requested_region(s3_server):
    first = run_bootstrap(s3_server, "--bucket", "cgsgan-eu", "--region", "eu-west-1")
    second = run_bootstrap(s3_server, "--bucket", "cgsgan-eu", "--region", "eu-west-1")
    assert first["bucket_status"] == "created" and second["bucket_status"] == "exists"
    location = s3_client(s3_server.endpoint_url).get_bucket_location(Bucket="cgsgan-eu")
    assert location["LocationConstraint"] == "eu-west-1"


# --- MLflow with proxied artifacts ------------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import mlflow

    uri, src, dst = sys.argv[1:4]
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("infra-local-test")
    with mlflow.start_run() as run:
        mlflow.log_param("resolution", 512)
        mlflow.log_artifact(src, artifact_path="samples")
    back = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="samples/" + Path(src).name,
                                               dst_path=dst)
    print(json.dumps({"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri,
                      "experiment_id": run.info.experiment_id, "back": Path(back).read_text()}))
    """
)


def test_mlflow_client_logs_an_artifact_that_lands_in_s3_through_the_server(s3_server, mlflow_server, tmp_path):
    payload = f"grid {uuid.uuid4().hex}"
    src = tmp_path / "grid-000.txt"
    src.write_text(payload)
    # The client gets no S3 settings at all; a direct S3 access would go to a closed port and fail.
    env = clean_env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, mlflow_server.tracking_uri, str(src), str(tmp_path / "back")],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["artifact_uri"].startswith("mlflow-artifacts:")  # proxied, not s3:// for the client
    assert result["back"] == payload

    from mlflow.tracking import MlflowClient

    assert MlflowClient(mlflow_server.tracking_uri).get_run(result["run_id"]).data.params == {"resolution": "512"}

    key = f"mlflow/{result['experiment_id']}/{result['run_id']}/artifacts/samples/grid-000.txt"
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, **_creds(s3_server))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_server.bucket, Prefix="mlflow/")["Contents"]]
    assert key in keys
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read().decode() == payload


def _creds(s3_server) -> dict:
    env = s3_server.env()
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


# --- the detached CLI (up.sh / down.sh) ---------------------------------------------------------


def test_up_status_env_down_through_the_shell_wrappers(tmp_path):
    state = tmp_path / "stack"
    s3_port, ml_port = free_port(), free_port()
    env = clean_env()

    def cli(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
        cmd = ["bash", f"infra/local/{script}", *args] if script else [sys.executable, "-m", "infra.local.stack", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    up = cli("--state-dir", str(state), "--s3-port", str(s3_port), "--mlflow-port", str(ml_port), script="up.sh")
    pids = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{s3_port}"
        assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ml_port}"
        assert exports["AWS_ACCESS_KEY_ID"] == "testing" and exports["CGSGAN_STORAGE"] == "s3://cgsgan/runs"
        pids = [int((state / f"{n}.pid").read_text().split()[0]) for n in ("s3", "mlflow")]
        assert (state / "s3.log").exists() and (state / "mlflow.log").exists()

        assert cli("status", "--state-dir", str(state)).returncode == 0
        again = cli("up", "--state-dir", str(state), "--s3-port", str(free_port()), "--mlflow-port", str(free_port()))
        assert again.returncode == 1 and "already running" in again.stderr
        env_out = cli("env", "--state-dir", str(state))
        assert env_out.returncode == 0 and env_out.stdout == up.stdout
        buckets = s3_client(exports["AWS_ENDPOINT_URL"]).list_buckets()["Buckets"]
        assert [b["Name"] for b in buckets] == ["cgsgan"]
    finally:
        down = cli("--state-dir", str(state), script="down.sh")
    assert down.returncode == 0, down.stdout + down.stderr
    assert all(group_gone(pid) for pid in pids)
    assert not port_in_use(s3_port) and not port_in_use(ml_port)
    assert not (state / "s3.pid").exists() and not (state / "mlflow.db").exists()
    assert cli("status", "--state-dir", str(state)).returncode == 1


# --- the sbatch template under stand-in SLURM commands ------------------------------------------

FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in srun: drop the options, run the command here.
while [[ $# -gt 0 && $1 != bash ]]; do shift; done
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ $1 == show && $2 == hostnames ]]; then hostname; exit 0; fi
echo "$@" >> "$FAKE_SLURM_LOG"
"""
STUB_LAUNCH = """
import json, os, sys, time
from pathlib import Path
import ray

ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
info = {"argv": sys.argv[1:], "ray_address": os.environ["RAY_ADDRESS"], "nodes": len(ray.nodes()),
        "cpus": ray.cluster_resources().get("CPU", 0)}
ray.shutdown()
Path(os.environ["STUB_OUT"]).write_text(json.dumps(info))
deadline = time.time() + 180
while not Path(os.environ["STUB_STOP"]).exists() and time.time() < deadline:
    time.sleep(0.2)
sys.exit(3)
"""


def free_port_block(size: int = 40) -> int:
    for _ in range(100):
        base = random.randrange(30000, 45000)
        if not any(port_in_use(p) for p in range(base, base + size)):
            return base
    raise RuntimeError("no free block of ports")


def test_sbatch_starts_ray_on_its_port_block_runs_the_driver_and_requeues_on_usr1(tmp_path):
    bin_dir, checkout = tmp_path / "bin", tmp_path / "checkout"
    bin_dir.mkdir()
    (checkout / "orchestration").mkdir(parents=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (checkout / "orchestration" / "launch.py").write_text(STUB_LAUNCH)
    shutil.copy(ROOT / "orchestration" / "ray_nodes.py", checkout / "orchestration")  # the job's Ray start-up
    (checkout / ".venv").symlink_to(Path(sys.executable).parent.parent)

    job_id = random.choice([i for i in range(1, 500) if not Path(f"/tmp/ray-{i}").exists()])
    base = free_port_block() - job_id % 500 * 40
    gcs_port = base + job_id % 500 * 40
    env = clean_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID=str(job_id), SLURM_JOB_NUM_NODES="1",
        SLURM_JOB_NODELIST="localnode", SLURM_CPUS_PER_TASK="1", SLURM_SUBMIT_DIR=str(checkout),
        SLURM_RESTART_COUNT="0", RAY_HEAD_IP="127.0.0.1", PORT_BASE=str(base), NUM_WORKERS="1",
        GPUS_PER_WORKER="0", CPUS_PER_WORKER="1", FAKE_SLURM_LOG=str(tmp_path / "scontrol.log"),
        STUB_OUT=str(tmp_path / "driver.json"), STUB_STOP=str(tmp_path / "stop"), RAY_USAGE_STATS_ENABLED="0",
    )  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "job.out", "w")
    job = subprocess.Popen(["bash", str(ROOT / "infra/slurm/train.sbatch"), "name=fake-slurm"], cwd=checkout, env=env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: (tmp_path / "driver.json").exists() or job.poll() is not None, 180, "the driver")
        assert job.poll() is None, (tmp_path / "job.out").read_text()[-4000:]
        info = json.loads((tmp_path / "driver.json").read_text())
        assert info["ray_address"] == f"127.0.0.1:{gcs_port}"
        assert info["nodes"] == 1 and info["cpus"] == 1
        argv = info["argv"]
        for expected in ("model=ffhq512", "cluster=ray", "cluster.num_workers=1", "cluster.gpus_per_worker=0",
                         "cluster.use_gpu=true", "storage=s3", f"output_dir={checkout}/outputs"):  # fmt: skip
            assert expected in argv
        assert argv[-1] == "name=fake-slurm"  # extra sbatch arguments go last

        os.kill(job.pid, signal.SIGUSR1)  # what --signal=B:USR1@120 delivers to the batch shell
        wait_until(lambda: (tmp_path / "scontrol.log").exists(), 30, "scontrol requeue")
        assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", str(job_id)]
        assert job.poll() is None  # the trap requeues; the driver keeps training until SLURM stops the job

        (tmp_path / "stop").touch()
        assert job.wait(timeout=120) == 3  # the driver's exit code is the job's
        wait_until(lambda: not port_in_use(gcs_port), 60, "this job's Ray head to stop")
        out = (tmp_path / "job.out").read_text()
        assert f"job {job_id} (restart 0/3)" in out and "requeueing job" in out
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout=60)
        log.close()
        shutil.rmtree(f"/tmp/ray-{job_id}", ignore_errors=True)  # the job's Ray temp dir (logs)
