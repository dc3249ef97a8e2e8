"""SLURM submission through submitit: `python orchestration/launch.py cluster=slurm ...` (a training
run) or `python sweeps/ablate.py cluster=slurm ...` (a whole sweep).

The job runs one task per node, and starts Ray as orchestration/ray_nodes.py says (the same start-up
as infra/slurm/train.sbatch). Task 0 starts the Ray head and then runs the submitted entry
(`cluster.launch`, `ablate.run_sweep`) against it with cluster.kind=ray, from a child process so
that the task itself never connects to Ray; tasks 1..N-1 join as Ray worker nodes and block until
the head goes away. When SLURM preempts the job or its time runs out, submitit calls `checkpoint`,
which requeues the same callable (with one requeue less in its budget): the new job runs the same
entry with the same config, so a training run resumes from its last checkpoint (same storage path
and run name) and the MLflow run with it, and a sweep resumes its Tune experiment.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit

from cgsgan.config import to_dict
from orchestration import ray_nodes
from orchestration.config import ClusterKind, LaunchConfig, SlurmConfig, to_typed
from orchestration.ray_nodes import port_block


@dataclass
class SlurmJob:
    """The submitted callable: plain config values in, exit code out (picklable, no code in state:
    `entry` and `schema` are pickled by reference, as module-level names)."""

    config: dict  # the entry's config (a LaunchConfig or a subclass) as plain values
    requeues_left: int
    entry: Callable[[Any], int]  # runs on the allocation's Ray, given the typed config with cluster.kind=ray
    schema: type = LaunchConfig  # the dataclass `config` rebuilds into
    driver_cpus: int = 0  # logical CPUs added to the head for processes that hold a sliver (Tune's trial drivers)

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        s: SlurmConfig = to_typed(self.config, self.schema).slurm
        head_ip = socket.gethostbyname(env.hostnames[0])
        ports = port_block(str(env.job_id), s.port_base)
        tmp = ray_nodes.temp_dir(str(env.job_id))
        # The token lives in the job's submitit folder (shared by all nodes, readable by the user only).
        token = Path(env.paths.folder) / f".ray-token-{env.job_id}"
        os.environ.update(ray_nodes.node_env(token))
        if s.gpus_per_node:
            print(ray_nodes.build_gsplat_kernels(dict(os.environ)), flush=True)
        if env.global_rank != 0:
            # A worker node: join the head and stay until it stops.
            ray_nodes.wait_for_head(token, head_ip, ports)
            my_ip = socket.gethostbyname(env.hostname)
            print(ray_nodes.cpus_line("worker", s.cpus_per_task), flush=True)
            return subprocess.call(ray_nodes.worker_command(head_ip, my_ip, ports, s.cpus_per_task, s.gpus_per_node, tmp))

        ray_nodes.write_token(token)
        head = subprocess.Popen(
            ray_nodes.head_command(head_ip, ports, s.cpus_per_task + self.driver_cpus, s.gpus_per_node, tmp),
            start_new_session=True, env={**os.environ, **ray_nodes.HEAD_ENV},
        )  # fmt: skip
        terminated = _record_sigterm()
        address = ray_nodes.head_address(head_ip, ports)
        print(f"slurm job {env.job_id}: Ray at {address}, {s.nodes} node(s), "
              f"{self.requeues_left} requeue(s) left", flush=True)  # fmt: skip
        print(ray_nodes.cpus_line("head", s.cpus_per_task), flush=True)
        # The Ray driver runs in a child process. A process connected to Ray has Ray's signal
        # handlers and a core worker that exits the process as soon as the head it talks to dies;
        # on preemption SLURM signals every process of the step, so the head dies at once and the
        # driver could exit before submitit's requeue handler ran. This process stays Ray-free,
        # so its Python handlers (submitit's requeue on USR2) always run.
        driver = multiprocessing.get_context("spawn").Process(
            target=_drive, args=(self.config, self.schema, self.entry, address, s.nodes), name="ray-driver"
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
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, requeues_left=self.requeues_left - 1))


def _drive(config: dict, schema: type, entry: Callable[[Any], int], address: str, nodes: int) -> None:
    """The Ray driver (a spawned child of the SLURM task): wait for the nodes, then run the entry."""
    import ray

    cfg = to_typed(config, schema)
    ray_nodes.wait_for_nodes(address, nodes)
    cfg.cluster = dataclasses.replace(cfg.cluster, kind=ClusterKind.ray, address=address)
    try:
        code = entry(cfg)
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
        # Since Slurm 22.05 srun no longer inherits --cpus-per-task from the allocation: without it
        # the step (Ray, its workers, the driver) is bound to one core where core binding is on.
        "slurm_srun_args": [f"--cpus-per-task={s.cpus_per_task}"],
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


def submit(cfg: LaunchConfig, job_name: str, entry: Callable[[Any], int], driver_cpus: int = 0,
           cluster: str | None = None) -> submitit.Job:
    """Submit `entry(cfg)` as a SLURM job (see the module docstring); `cfg` may be a LaunchConfig
    subclass (a sweep's config): the job rebuilds the same class."""
    folder = Path(cfg.slurm.folder or Path(cfg.output_dir).absolute() / "slurm")
    executor = make_executor(cfg.slurm, folder, job_name, cluster)
    job = executor.submit(SlurmJob(to_dict(cfg), cfg.slurm.max_requeues, entry, type(cfg), driver_cpus))
    print(f"submitted SLURM job {job.job_id} (logs in {folder})", flush=True)
    return job


__all__ = ["SlurmJob", "make_executor", "submit"]
