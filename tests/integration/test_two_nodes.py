"""Two Ray nodes on one machine: a head and a second node started with
`ray start`, each with its own temp dir, its own working folder, its own synthetic-data cache and
1 CPU, so a 2-worker run is placed one worker per node. Checkpoints go to the local S3 endpoint,
metrics to an `mlflow server`; nothing on disk is shared between the nodes (each makes its own
synthetic heads from its own environment; the workers resume from S3, never from a local file).

The second node is SIGKILLed mid-run and started again (same temp dir, same cache): Ray Train
restarts the worker group, one worker per node again, from the last checkpoint; MLflow keeps one
run whose steps never go backwards; and the final weights equal those of an uninterrupted run
started from a copy of the checkpoint the interrupted run resumed from.

Only what this test starts is stopped: the nodes by their temp dirs and pids (tests/integration/procs.py).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration.ray_nodes import HEAD_ENV, head_command, node_env, port_block, worker_command
from tests.integration.procs import (
    alive,
    cmdline,
    descendants,
    kill_tree,
    processes_of_ray,
    ray_tmpdir,
    stop_ray,
    wait_gone,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
IP = "127.0.0.1"
STARTED = "Ray runtime started."


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port_block(size: int = 40) -> int:
    """The first of `size` consecutive ports that are all free now (Ray's advice for several
    nodes on one host: set every port, ray-project/ray#10154 and #18053)."""
    for _ in range(200):
        base = random.randrange(30000, 60000 - size)
        if all(port_is_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no block of free ports found")


class RayNode:
    """One `ray start --block` of this test: its own temp dir, working folder and data cache."""

    def __init__(self, name: str, root: Path, temp_dir: Path, env: dict, cmd: list[str]) -> None:
        self.name, self.temp_dir, self.env, self.cmd = name, temp_dir, env, cmd
        self.cache = Path(env["CGSGAN_DATA_CACHE"])
        self.cwd = root / name
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def start(self, attempts: int = 6) -> None:
        """`ray start --block` in the background; returns once it says the node runs. On this
        shared machine a node at nice 19 sometimes misses Ray's fixed 30 s start-up wait ("The
        current node timed out during startup"): then what it left is stopped and it starts again."""
        for attempt in range(1, attempts + 1):
            started = self.log.read_text().count(STARTED) if self.log.exists() else 0
            with open(self.log, "a") as log:
                self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            while self.log.read_text().count(STARTED) <= started and self.proc.poll() is None:
                time.sleep(0.5)
            if self.proc.poll() is None:
                return
            assert attempt < attempts, f"{self.name}: `ray start` ended:\n{self.log.read_text()[-3000:]}"
            self.stop()

    def pids(self) -> list[int]:
        """`ray start --block`, the daemons of this node's temp dir, and everything below them."""
        roots = set(processes_of_ray(self.temp_dir))
        if self.proc is not None and alive(self.proc.pid):
            roots.add(self.proc.pid)
        return sorted({*roots, *(c for r in roots for c in descendants(r))})

    def sigkill(self) -> None:
        pids = self.pids()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = wait_gone(pids, timeout=30)
        assert not left, f"{self.name}: still alive after SIGKILL: {left}"
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_ray(self.temp_dir)
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait(timeout=30)


def make_nodes(tmp: Path, s3_env: dict) -> tuple[RayNode, RayNode, str]:
    """Head and second node (not started): 1 CPU each, all ports set, a token shared by the
    cluster and its clients. Returns (head, second, GCS address)."""
    token = tmp / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    nodes, address = [], ""
    for name in ("head", "second"):
        ports = port_block("0", free_port_block())
        temp_dir = ray_tmpdir()
        env = {**os.environ, **s3_env, **node_env(token), **HEAD_ENV, "PYTHONUNBUFFERED": "1",
               "CGSGAN_DATA_CACHE": str(tmp / name / "data-cache")}
        env.pop("RAY_ADDRESS", None)
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        if name == "head":
            cmd = head_command(IP, ports, cpus=1, gpus=0, tmp=str(temp_dir))
            address = f"{IP}:{ports['gcs']}"
        else:
            cmd = worker_command(IP, IP, ports, cpus=1, gpus=0, tmp=str(temp_dir))
            cmd = [a if not a.startswith("--address=") else f"--address={address}" for a in cmd]
        nodes.append(RayNode(name, tmp, temp_dir, env, cmd))
        nodes[-1].ports = ports
    return nodes[0], nodes[1], address


TOTAL_NIMG = 96  # 12 steps of batch 8, a tick (2 steps) per checkpoint
TICK_NIMG = 16
RUN = [
    "data.synthetic_identities=32", "data.synthetic_views=2", "train.batch_size=8", "loss.num_views=2",
    f"train.total_kimg={TOTAL_NIMG / 1000}", f"train.tick_kimg={TICK_NIMG / 1000}", "train.snapshot_ticks=100",
    "train.checkpoint_ticks=1", "train.snapshot_metrics=[]", "train.feature_extractor=random", "train.num_threads=1",
    "cluster=ray", "cluster.use_gpu=false", "cluster.num_workers=2", "cluster.cpus_per_worker=1",
    "cluster.max_failures=3", "storage=s3", "storage.num_to_keep=20", "tracking=server",
]  # fmt: skip
KILL_AFTER = f"checkpoint-{2 * TICK_NIMG:010d}"  # the second node dies once this one is in S3


@pytest.fixture
def two_nodes(s3_server, tmp_path):
    """A Ray head and a second Ray node of this test, running; both stopped at the end."""
    head, second, address = make_nodes(tmp_path, s3_server.env())
    try:
        head.start()
        second.start()
        wait_for_nodes(head.env, address, 2)
        yield head, second, address
    finally:
        for node in (second, head):
            node.stop()
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def client_env(node_env_: dict) -> dict:
    """The environment of a process that talks to the cluster (the launch, the state probes):
    the cluster's token and S3 settings, but no data cache of its own, so the workers keep their
    node's (launch.py passes $CGSGAN_DATA_CACHE on to every worker when it is set)."""
    env = dict(node_env_)
    env.pop("CGSGAN_DATA_CACHE", None)
    env.pop("RAY_worker_niceness", None)
    return env


def ray_probe(env: dict, code: str, timeout: float = 120) -> str:
    """Run `code` in a process connected to the cluster (as a client of it, no resources)."""
    out = subprocess.run([sys.executable, "-c", code], env=client_env(env), cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def wait_for_nodes(env: dict, address: str, n: int) -> None:
    ray_probe(env, f"from orchestration.ray_nodes import wait_for_nodes; wait_for_nodes({address!r}, {n}, 120, True)",
              timeout=180)


def train_workers(node: RayNode) -> list[int]:
    return [p for p in node.pids() if "RayTrainWorker" in " ".join(cmdline(p))]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


class Driver:
    """`python orchestration/launch.py ...` connected to the cluster; its output is read as it comes."""

    def __init__(self, args: list[str], env: dict) -> None:
        import threading

        self.proc = subprocess.Popen([sys.executable, "orchestration/launch.py", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                kill_tree(self.proc.pid)
        self.reader.join(timeout=30)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait(timeout=30)


def launch_args(s3_server, mlflow_server, tmp: Path, address: str, name: str, prefix: str, *extra: str) -> list[str]:
    return [*RUN, f"cluster.address={address}", f"storage.path=s3://{s3_server.bucket}/{prefix}",
            f"tracking.uri={mlflow_server.tracking_uri}", f"output_dir={tmp / 'driver-out' / name}", f"name={name}",
            *extra]  # fmt: skip


def s3_checkpoints(s3_server, prefix: str, run: str) -> list[str]:
    """Folder names (checkpoint-<nimg>) of the run's checkpoints in S3."""
    from infra.local.stack import s3_client

    listed = s3_client(s3_server.endpoint_url).list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/{run}/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    return sorted(k.split("/")[-2] for k in keys if k.endswith("/checkpoint.pt"))


def s3_checkpoint_state(s3_server, tmp: Path, prefix: str, run: str, folder: str) -> dict:
    from cgsgan.training.checkpoint import load_checkpoint
    from infra.local.stack import s3_client

    local = tmp / f"{prefix}-{folder}.pt"
    s3_client(s3_server.endpoint_url).download_file(s3_server.bucket, f"{prefix}/{run}/{folder}/checkpoint.pt", str(local))
    return load_checkpoint(local)


def train_worker_placement(head: RayNode) -> dict:
    """Every Ray Train worker actor the cluster has had (alive or dead) and every node, from
    Ray's state API: {"actors": [(node_id, state)], "nodes": [(node_id, is_head, state)]}."""
    import json

    code = f"""
import json
from ray.util.state import list_actors, list_nodes
addr = "http://{IP}:{head.ports['dashboard']}"
actors = list_actors(address=addr, filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000,
                     raise_on_missing_output=False)
nodes = list_nodes(address=addr, detail=True, limit=1000, raise_on_missing_output=False)
print(json.dumps({{"actors": [(a.node_id, a.state) for a in actors],
                  "nodes": [(n.node_id, bool(n.is_head_node), n.state) for n in nodes]}}))
"""
    return json.loads(ray_probe(head.env, code).strip().splitlines()[-1])


def mlflow_run(tracking_uri: str, experiment: str, run: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`cgsgan.run_name` = '{run}'")


def folder_digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}  # fmt: skip


def test_second_node_killed_mid_run_resumes_on_both_nodes_as_an_uninterrupted_run_would(
        two_nodes, s3_server, mlflow_server, tmp_path):  # fmt: skip
    import re

    import torch

    from cgsgan.training.checkpoint import save_checkpoint
    from infra.local.stack import s3_client

    head, second, address = two_nodes
    env = client_env(head.env)
    started = time.time()
    driver = Driver(launch_args(s3_server, mlflow_server, tmp_path, address, "twonodes", "twonodes"), env)
    run = ""
    try:
        def checkpointed() -> bool:
            nonlocal run
            assert driver.proc.poll() is None, f"the launch ended (rc {driver.proc.returncode}):\n{driver.output[-4000:]}"
            if not run and (m := re.search(r"^run (\S+)", driver.output, re.M)):
                run = m.group(1)
            return bool(run) and KILL_AFTER in s3_checkpoints(s3_server, "twonodes", run)

        wait_until(checkpointed, 420, f"{KILL_AFTER} in S3")
        # One Ray Train worker per node, each with its own node's data cache (inherited from
        # its `ray start`), working in its own node's temp dir (Ray Train's per-run folder there).
        before = {node.name: train_workers(node) for node in (head, second)}
        assert [len(before["head"]), len(before["second"])] == [1, 1], before
        for node in (head, second):
            worker_env = environ(before[node.name][0])
            assert worker_env.get("CGSGAN_DATA_CACHE") == str(node.cache), (node.name, worker_env.get("CGSGAN_DATA_CACHE"))
            assert Path(f"/proc/{before[node.name][0]}/cwd").resolve().is_relative_to(node.temp_dir.resolve())
        in_s3_at_kill = s3_checkpoints(s3_server, "twonodes", run)
        killed_at = time.time()
        second.sigkill()
        second.start()
        # Both workers again, one per node (new processes), while the run continues.
        after: set[tuple[int, int]] = set()
        while driver.proc.poll() is None and time.time() - killed_at < 480:
            h, s = train_workers(head), train_workers(second)
            if len(h) == 1 and len(s) == 1 and h[0] not in before["head"] and s[0] not in before["second"]:
                after.add((h[0], s[0]))
            time.sleep(0.5)
        rc = driver.wait(timeout=60)
    finally:
        driver.stop()
        (tmp_path / "driver.log").write_text(driver.output)  # for a look after a failure
    output = driver.output
    interrupted_s = time.time() - started
    assert rc == 0, output[-6000:]
    assert "done." in output
    assert after, "after the restart the two workers were never seen one per node"

    # Resumed once, from the newest checkpoint whole in storage when the group restarted: the
    # newest in S3 at the kill, or the next one (a tick is a checkpoint) when rank 0, on the head
    # node that survives, was uploading it in the background at the kill and finished before the
    # restart (seen: checkpoint-32 in S3 at the kill, resumed from checkpoint-48).
    resumed = re.findall(r"resumed from (\S+) at ([\d.]+) kimg", output)
    assert len(resumed) == 1, output[-6000:]
    resumed_from = resumed[0][0].rstrip("/").rsplit("/", 1)[1]
    newest_at_kill = int(in_s3_at_kill[-1].split("-")[1])
    assert newest_at_kill <= int(resumed_from.split("-")[1]) <= newest_at_kill + TICK_NIMG, (resumed, in_s3_at_kill)
    assert float(resumed[0][1]) == pytest.approx(int(resumed_from.split("-")[1]) / 1000, abs=0.005)  # printed as %.2f

    # Ray's view: the first worker group had one worker on the head and one on the second node;
    # the second node's first incarnation is dead; the new group again has one on each node.
    placement = train_worker_placement(head)
    head_id = next(n for n, is_head, _ in placement["nodes"] if is_head)
    others = {n: state for n, is_head, state in placement["nodes"] if not is_head}
    assert sorted(others.values()) == ["ALIVE", "DEAD"], placement
    per_node = {n: sum(1 for a, _ in placement["actors"] if a == n) for n in [head_id, *others]}
    dead_id = next(n for n, state in others.items() if state == "DEAD")
    new_id = next(n for n, state in others.items() if state == "ALIVE")
    assert per_node[dead_id] == 1 and per_node[new_id] >= 1 and per_node[head_id] == per_node[new_id] + 1, placement

    # Each node made its own synthetic heads, and they are the same heads.
    datasets = [next(node.cache.glob("synthetic-*")) for node in (head, second)]
    assert datasets[0].name == datasets[1].name
    assert folder_digest(datasets[0]) == folder_digest(datasets[1]) != {}

    # MLflow: one run, finished, every tick logged, steps never going backwards in time.
    runs = mlflow_run(mlflow_server.tracking_uri, "cgsgan", run)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", runs
    from mlflow.tracking import MlflowClient

    history = MlflowClient(mlflow_server.tracking_uri).get_metric_history(runs[0].info.run_id, "progress.kimg")
    in_time = [m.step for m in sorted(history, key=lambda m: m.timestamp)]
    assert in_time == sorted(in_time), in_time
    assert sorted(set(in_time)) == list(range(TICK_NIMG, TOTAL_NIMG + 1, TICK_NIMG)), in_time

    # The reference: a new run (another name, another S3 prefix, another MLflow experiment) whose
    # storage holds only a copy of the checkpoint the interrupted run resumed from (without that
    # run's MLflow run id), uninterrupted on the same two nodes.
    ref_run = run.replace("twonodes-", "twonodes-ref-", 1)
    state = s3_checkpoint_state(s3_server, tmp_path, "twonodes", run, resumed_from)
    state.get("extra", {}).pop("mlflow_run_id", None)
    local = save_checkpoint(state, tmp_path / "ref-start" / "checkpoint.pt")
    s3_client(s3_server.endpoint_url).upload_file(str(local), s3_server.bucket,
                                                  f"twonodes-ref/{ref_run}/{resumed_from}/checkpoint.pt")
    reference = Driver(launch_args(s3_server, mlflow_server, tmp_path, address, "twonodes-ref", "twonodes-ref",
                                   "tracking.experiment=cgsgan-ref"), env)  # fmt: skip
    try:
        ref_rc = reference.wait(timeout=420)
    finally:
        reference.stop()
        (tmp_path / "reference.log").write_text(reference.output)
    assert ref_rc == 0, reference.output[-6000:]
    assert re.search(rf"^run {re.escape(ref_run)}$", reference.output, re.M), reference.output[:2000]
    assert re.search(rf"resumed from \S+/{resumed_from} at", reference.output), reference.output[-4000:]

    final = f"checkpoint-{TOTAL_NIMG:010d}"
    got = s3_checkpoint_state(s3_server, tmp_path, "twonodes", run, final)
    want = s3_checkpoint_state(s3_server, tmp_path, "twonodes-ref", ref_run, final)
    assert got["counters"] == want["counters"] and got["counters"]["cur_nimg"] == TOTAL_NIMG
    for part in ("G", "D", "G_ema"):
        assert got[part].keys() == want[part].keys()
        different = [k for k in got[part] if not torch.equal(got[part][k], want[part][k])]
        assert not different, f"{part}: {len(different)} tensors differ from the reference, e.g. {different[:3]}"
    for part in ("opt_G", "opt_D"):
        for i, s in got[part]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, want[part]["state"][i][k]), f"{part} state {i}.{k} differs from the reference"
    print(f"interrupted run {interrupted_s:.0f} s (resumed from {resumed_from}); whole test {time.time() - started:.0f} s")
