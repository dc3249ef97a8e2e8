"""SLURM submission through submitit: `python orchestration/launch.py cluster=slurm ...`.

The job runs one task per node. Task 0 starts a Ray head (explicit node IP, ports from a per-job
block so two jobs on one node never collide) and then runs the same training as launch.py
against it, from a child process so that the task itself never connects to Ray; tasks 1..N-1
join as Ray worker nodes and block until the head goes away. When
SLURM preempts the job or its time runs out, submitit calls `checkpoint`, which requeues the
same callable (with one requeue less in its budget): the new job trains under the same
(storage_path, name), so Ray Train resumes from the last checkpoint, and the MLflow run with it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from orchestration.config import LaunchConfig, SlurmConfig
from orchestration.launch import TRAINING_NODE_ENV, run


def port_block(job_id: str, base: int) -> dict[str, int]:
    """40 ports per job, offset by the job id: GCS, raylet, object manager, agents, workers."""
    start = base + (int("".join(ch for ch in job_id if ch.isdigit()) or 0) % 500) * 40
    names = ["gcs", "node_manager", "object_manager", "client_server", "metrics", "agent_listen",
             "agent_grpc", "runtime_env_agent", "dashboard"]  # fmt: skip
    ports = {n: start + i for i, n in enumerate(names)}
    ports["min_worker"], ports["max_worker"] = start + 10, start + 39
    return ports


def ray_start_args(ip: str, ports: dict[str, int], cpus: int, gpus: int, temp_dir: str) -> list[str]:
    return [
        f"--node-ip-address={ip}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
        f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
        f"--metrics-export-port={ports['metrics']}", f"--dashboard-agent-listen-port={ports['agent_listen']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--min-worker-port={ports['min_worker']}", f"--max-worker-port={ports['max_worker']}",
        f"--temp-dir={temp_dir}", "--block",
    ]  # fmt: skip


def _ray_bin() -> str:
    local = Path(sys.executable).with_name("ray")
    return str(local) if local.exists() else "ray"


@dataclass
class SlurmJob:
    """The submitted callable: plain config values in, exit code out (picklable, no code in state)."""

    config: dict  # LaunchConfig as plain values
    requeues_left: int

    def __call__(self) -> int:
        from omegaconf import OmegaConf

        env = submitit.JobEnvironment()
        cfg: LaunchConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LaunchConfig), self.config))
        s = cfg.slurm
        head_ip = socket.gethostbyname(env.hostnames[0])
        ports = port_block(str(env.job_id), s.port_base)
        temp_dir = f"/tmp/ray-slurm-{env.job_id}"
        cpus, gpus = s.cpus_per_task, s.gpus_per_node
        my_ip = socket.gethostbyname(env.hostname)
        # Ray protects the cluster with a token; it lives in the job's submitit folder (shared by
        # all nodes, readable by the user only) and is new for every job.
        token = Path(env.paths.folder) / f".ray-token-{env.job_id}"
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), **TRAINING_NODE_ENV)
        if env.global_rank == 0:
            token.touch(mode=0o600)
            token.write_text(secrets.token_hex(32))
        if env.global_rank != 0:
            # A worker node: join the head and stay until it stops.
            while not token.exists() or not token.read_text():
                time.sleep(1)
            time.sleep(5)
            args = [f"--address={head_ip}:{ports['gcs']}"] + ray_start_args(my_ip, ports, cpus, gpus, temp_dir)
            return subprocess.call([_ray_bin(), "start", *args])

        head = subprocess.Popen(
            # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
            [_ray_bin(), "start", "--head", f"--port={ports['gcs']}", "--include-dashboard=true",
             f"--dashboard-host={head_ip}", f"--dashboard-port={ports['dashboard']}",
             f"--ray-client-server-port={ports['client_server']}", *ray_start_args(head_ip, ports, cpus, gpus, temp_dir)],
            start_new_session=True,
            # The head is stopped when the job ends or is preempted, with nothing left to drain:
            # Ray's default 30 s drain would only eat into SLURM's grace time.
            env={**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"},
        )  # fmt: skip
        terminated = _record_sigterm()
        address = f"{head_ip}:{ports['gcs']}"
        print(f"slurm job {env.job_id}: Ray at {address}, {s.nodes} node(s), "
              f"{self.requeues_left} requeue(s) left", flush=True)  # fmt: skip
        # The Ray driver runs in a child process. A process connected to Ray has Ray's signal
        # handlers and a core worker that exits the process as soon as the head it talks to dies;
        # on preemption SLURM signals every process of the step, so the head dies at once and the
        # driver could exit before submitit's requeue handler ran. This process stays Ray-free,
        # so its Python handlers (submitit's requeue on USR2) always run.
        driver = multiprocessing.get_context("spawn").Process(
            target=_drive, args=(self.config, address, s.nodes), name="ray-driver"
        )
        try:
            driver.start()
            driver.join()  # a signal interrupts the wait and runs its Python handler (PEP 475)
            code = driver.exitcode
            if code != 0 and terminated:
                # SLURM's SIGTERM also stopped the Ray processes, so training failed; the
                # preemption / time-limit signal follows and requeues through `checkpoint`.
                print("slurm: SIGTERM received; waiting for the requeue signal", flush=True)
                time.sleep(s.signal_delay_s + 60)
            if code != 0:
                raise RuntimeError(f"the Ray driver exited with code {code}; its traceback is above in this log")
            return code
        finally:
            for proc in (driver, head):
                _stop(proc)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission | None:
        """Called by submitit on preemption or time-out: requeue while the budget lasts."""
        if self.requeues_left <= 0:
            print("slurm: requeue budget spent, not requeueing", flush=True)
            return None
        print(f"slurm: requeueing ({self.requeues_left - 1} requeue(s) left after this one)", flush=True)
        return submitit.helpers.DelayedSubmission(SlurmJob(self.config, self.requeues_left - 1))


def _drive(config: dict, address: str, nodes: int) -> None:
    """The Ray driver (a spawned child of the SLURM task): wait for the nodes, then train."""
    import ray
    from omegaconf import OmegaConf

    cfg: LaunchConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LaunchConfig), config))
    _wait_for_nodes(address, nodes, timeout_s=300)
    cfg.cluster = dataclasses.replace(cfg.cluster, kind="ray", address=address)
    try:
        code = run(cfg)
    finally:
        ray.shutdown()  # disconnect before the head goes away, or Ray's core worker exits 1
    sys.exit(code)


def _record_sigterm() -> list[int]:
    """Chain a recorder in front of submitit's SIGTERM handler; the list is non-empty once seen."""
    seen: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return seen


def _stop(proc: subprocess.Popen | multiprocessing.process.BaseProcess) -> None:
    """SIGTERM, then SIGKILL after a minute (`ray start --block` stops the processes it started)."""
    if isinstance(proc, subprocess.Popen):
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    elif proc.pid is not None:  # a started multiprocessing.Process
        proc.terminate()
        proc.join(timeout=60)
        if proc.exitcode is None:
            proc.kill()


def _wait_for_nodes(address: str, nodes: int, timeout_s: float) -> None:
    import ray

    deadline = time.time() + timeout_s
    while True:
        try:
            ray.init(address=address)
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(2)
    while sum(1 for n in ray.nodes() if n["Alive"]) < nodes:
        if time.time() > deadline:
            raise TimeoutError(f"only {sum(1 for n in ray.nodes() if n['Alive'])} of {nodes} Ray nodes joined")
        time.sleep(2)


def make_executor(s: SlurmConfig, folder: Path, job_name: str, cluster: str | None = None) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {
        "slurm_job_name": job_name,
        "nodes": s.nodes,
        "tasks_per_node": 1,
        "cpus_per_task": s.cpus_per_task,
        "timeout_min": s.time_min,
        "slurm_signal_delay_s": s.signal_delay_s,
        "slurm_additional_parameters": {"requeue": True},
    }
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    if s.partition:
        params["slurm_partition"] = s.partition
    if s.account:
        params["slurm_account"] = s.account
    if s.qos:
        params["slurm_qos"] = s.qos
    executor.update_parameters(**params)
    return executor


def submit(cfg: LaunchConfig, plan_name: str, output_dir: str, cluster: str | None = None) -> submitit.Job:
    folder = Path(cfg.slurm.folder or Path(output_dir) / "slurm")
    executor = make_executor(cfg.slurm, folder, plan_name, cluster)
    job = executor.submit(SlurmJob(dataclasses.asdict(cfg), cfg.slurm.max_requeues))
    print(f"submitted SLURM job {job.job_id} (logs in {folder})", flush=True)
    return job


__all__ = ["SlurmJob", "make_executor", "port_block", "submit"]
