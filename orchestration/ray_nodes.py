"""How this project starts Ray nodes for training: the worker niceness every Ray it starts uses,
and the Ray start-up of a SLURM job, shared by the submitit job (orchestration/slurm.py) and the
plain sbatch script (infra/slurm/train.sbatch).

A SLURM job runs one task per node. The first node runs the Ray head (explicit node IP, ports from
a block derived from the job id, so two jobs sharing a node never collide, and the dashboard,
whose state API Ray Train's placement-group cleaner polls); the other nodes join it. Ray protects
the cluster with a token, new for every job, in a folder all nodes share, readable by the user only.

Standard library only, and runnable as a script, so the sbatch script calls it by path on every node:

    python orchestration/ray_nodes.py job-env --token-dir DIR   # writes the job's token; prints `export` lines
    python orchestration/ray_nodes.py start head|worker --cpus N --gpus G   # becomes `ray start ... --block`
    python orchestration/ray_nodes.py wait NODES                # until NODES Ray nodes are alive

(`job-env` reads SLURM_JOB_ID, HEAD_IP and PORT_BASE; `start` those and the RAY_AUTH_TOKEN_PATH it exported.)
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

# Ray starts its workers at nice 15 so that its own daemons stay responsive. On a node that is
# there to train, every other process then preempts the training threads, and each of torch's
# parallel ops waits for its slowest thread: a training step in a nice-15 Ray worker took 3.2x
# as long as the same step in a plain process on 2 cores (1.06x at nice 0; see
# benchmarks/results/orchestration.md). Every Ray node this project starts runs workers at 0:
# `ray.init(_system_config=...)` for a local Ray (orchestration/cluster.py), this environment for
# `ray start` (infra/ray and infra/k8s set the same variable; tests/unit/test_infra_files.py checks).
WORKER_NICENESS = 0
TRAINING_NODE_ENV = {"RAY_worker_niceness": str(WORKER_NICENESS)}

# Ray's raylet starts one idle worker per CPU when the first driver connects (and more as
# configured), each taking a worker port: 64 of them on a 64-CPU node against the job's 30 worker
# ports, and 64 Python processes importing Ray beside the training. The nodes this project starts
# for a SLURM job start workers only when something runs on them.
NO_PRESTART_ENV = {"RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0"}
# Worker ports a node needs beyond its Ray Train workers: on the head the driver, Ray Train's
# controller and its placement-group cleaner, Tune's trial drivers; a few for restarts.
WORKER_PORT_SPARE = 8

# gsplat's CUDA kernels, where the install has none compiled (a venv rather than the training
# image): built once per node by one process before Ray starts any worker -- 8 workers importing
# gsplat at once would each compile them and delete each other's lock and build folder. The cache
# is on node-local disk and kept for the user's next jobs.
GSPLAT_BUILD = "import sys; from gsplat.cuda._backend import _C; sys.exit(0 if _C is not None else 3)"
GSPLAT_BUILD_TIMEOUT_S = 1800

PORTS_PER_JOB = 40
JOB_BLOCKS = 500  # jobs whose ids differ by a multiple of this share a port block
DEFAULT_PORT_BASE = 20000
# The head is stopped when the job ends or is preempted, with nothing left to drain: Ray's
# default 30 s drain would only eat into SLURM's grace time.
HEAD_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
NODE_WAIT_S = 300


def port_block(job_id: str, base: int = DEFAULT_PORT_BASE) -> dict[str, int]:
    """40 ports per job, offset by the job id: GCS, raylet, object manager, agents, workers."""
    start = base + (int("".join(ch for ch in str(job_id) if ch.isdigit()) or 0) % JOB_BLOCKS) * PORTS_PER_JOB
    names = ["gcs", "node_manager", "object_manager", "client_server", "metrics", "agent_listen",
             "agent_grpc", "runtime_env_agent", "dashboard"]  # fmt: skip
    ports = {n: start + i for i, n in enumerate(names)}
    ports["min_worker"], ports["max_worker"] = start + 10, start + PORTS_PER_JOB - 1
    return ports


def worker_ports(ports: dict[str, int]) -> int:
    """How many worker processes (tasks, actors, drivers) a node of the job can hold at once."""
    return ports["max_worker"] - ports["min_worker"] + 1


def worker_ports_needed(train_workers_on_node: int, prestarted: int = 0) -> int:
    """Worker ports a node takes: its Ray Train workers, `prestarted` idle workers, the spare."""
    return train_workers_on_node + prestarted + WORKER_PORT_SPARE


def usable_cpus() -> int:
    """The CPUs this process may run on (what `nproc` says): a SLURM step's binding, not the node's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpus_line(role: str, cpus: int) -> str:
    """One line for the job log: the CPUs this step really has against the CPUs Ray advertises."""
    have = usable_cpus()
    line = f"ray {role} on {socket.gethostname()}: {have} usable CPUs (nproc), Ray advertises {cpus}"
    if have < cpus:
        line += (f"; warning: the step is bound to {have} CPUs, so {cpus} CPUs of work share them "
                 "(srun needs --cpus-per-task or SRUN_CPUS_PER_TASK since Slurm 22.05)")
    return line


def kernel_cache() -> str:
    """torch's extension cache (where gsplat builds its kernels) on node-local disk, per user."""
    return f"/tmp/torch-extensions-{os.getuid()}"


def build_gsplat_kernels(env: dict[str, str]) -> str:
    """Build gsplat's kernels on this node (a no-op where they are compiled or cached); one line
    for the job log. A node where they cannot be built says so; the launch stops on it."""
    start = time.time()
    try:
        done = subprocess.run([sys.executable, "-c", GSPLAT_BUILD], env=env, capture_output=True, text=True,
                              timeout=GSPLAT_BUILD_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"gsplat kernels: not built in {GSPLAT_BUILD_TIMEOUT_S} s"
    if done.returncode == 0:
        return f"gsplat kernels: ready in {time.time() - start:.0f} s (cache {env.get('TORCH_EXTENSIONS_DIR', '')})"
    last = (done.stderr.strip().splitlines() or ["no CUDA toolkit (nvcc) to build them"])[-1]
    return f"gsplat kernels: not available on this node ({last})"


def temp_dir(job_id: str) -> str:
    return f"/tmp/ray-{job_id}"


def head_address(head_ip: str, ports: dict[str, int]) -> str:
    return f"{head_ip}:{ports['gcs']}"


def ray_start_args(ip: str, ports: dict[str, int], cpus: int, gpus: int, tmp: str) -> list[str]:
    """What every node of the job passes to `ray start` (head and workers alike)."""
    return [
        f"--node-ip-address={ip}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
        f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
        f"--metrics-export-port={ports['metrics']}", f"--dashboard-agent-listen-port={ports['agent_listen']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--min-worker-port={ports['min_worker']}", f"--max-worker-port={ports['max_worker']}",
        f"--temp-dir={tmp}", "--disable-usage-stats", "--block",
    ]  # fmt: skip


def head_command(head_ip: str, ports: dict[str, int], cpus: int, gpus: int, tmp: str) -> list[str]:
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
    return [ray_bin(), "start", "--head", f"--port={ports['gcs']}", "--include-dashboard=true",
            f"--dashboard-host={head_ip}", f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client_server']}",
            *ray_start_args(head_ip, ports, cpus, gpus, tmp)]  # fmt: skip


def worker_command(head_ip: str, my_ip: str, ports: dict[str, int], cpus: int, gpus: int, tmp: str) -> list[str]:
    return [ray_bin(), "start", f"--address={head_address(head_ip, ports)}",
            *ray_start_args(my_ip, ports, cpus, gpus, tmp)]  # fmt: skip


def ray_bin() -> str:
    local = Path(sys.executable).with_name("ray")
    return str(local) if local.exists() else "ray"


def node_env(token_path: str | Path) -> dict[str, str]:
    """The environment every process of the job runs Ray with: token auth, workers at nice 0, no
    prestarted workers (NO_PRESTART_ENV), torch's extension cache on node-local disk."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "TORCH_EXTENSIONS_DIR": kernel_cache(),
            **TRAINING_NODE_ENV, **NO_PRESTART_ENV}


def write_token(path: str | Path) -> None:
    """A new random token, readable by the user only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def wait_for_head(token_path: str | Path, head_ip: str, ports: dict[str, int], timeout_s: float = NODE_WAIT_S) -> None:
    """A worker node waits until the head wrote the token and its GCS port accepts connections."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if Path(token_path).read_text():
                with socket.create_connection((head_ip, ports["gcs"]), timeout=2):
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"the Ray head at {head_address(head_ip, ports)} did not come up in {timeout_s:.0f} s")
        time.sleep(1)


def wait_for_nodes(address: str, nodes: int, timeout_s: float = NODE_WAIT_S, quiet: bool = False) -> None:
    """Connect to the job's Ray (this process stays connected) and wait until `nodes` nodes are
    alive. `quiet`: Ray's own log lines in this process at ERROR only (for a process that only waits)."""
    import ray

    deadline = time.time() + timeout_s
    while True:
        try:
            ray.init(address=address, **({"logging_level": "ERROR"} if quiet else {}))
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(2)
    while (alive := sum(1 for n in ray.nodes() if n["Alive"])) < nodes:
        if time.time() > deadline:
            raise TimeoutError(f"only {alive} of {nodes} Ray nodes joined")
        time.sleep(2)


def my_ip() -> str:
    return socket.gethostbyname(socket.gethostname())


# --- the command line, for infra/slurm/train.sbatch ---------------------------------------------


def _job() -> tuple[str, str, dict[str, int]]:
    job_id = os.environ["SLURM_JOB_ID"]
    ports = port_block(job_id, int(os.environ.get("PORT_BASE") or DEFAULT_PORT_BASE))
    return job_id, os.environ["HEAD_IP"], ports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ray_nodes.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    job_env = sub.add_parser("job-env", help="write this job's Ray token; print the `export` lines every step needs")
    job_env.add_argument("--token-dir", default=".", help="a folder every node of the job sees")
    start = sub.add_parser("start", help="become this node's `ray start --block`")
    start.add_argument("role", choices=["head", "worker"])
    start.add_argument("--cpus", type=int, required=True)
    start.add_argument("--gpus", type=int, default=0)
    wait = sub.add_parser("wait", help="connect to $RAY_ADDRESS and wait until NODES Ray nodes are alive")
    wait.add_argument("nodes", type=int)
    args = p.parse_args(argv)

    if args.command == "job-env":
        job_id, head_ip, ports = _job()
        token = str(Path(args.token_dir).absolute() / f".ray-token-{job_id}")
        write_token(token)
        env = {**node_env(token), "RAY_ADDRESS": head_address(head_ip, ports)}
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
        return 0
    if args.command == "start":
        job_id, head_ip, ports = _job()
        token = os.environ["RAY_AUTH_TOKEN_PATH"]
        env = {**os.environ, **node_env(token)}
        if args.role == "head":
            cmd = head_command(head_ip, ports, args.cpus, args.gpus, temp_dir(job_id))
            env.update(HEAD_ENV)
        else:
            wait_for_head(token, head_ip, ports)
            cmd = worker_command(head_ip, my_ip(), ports, args.cpus, args.gpus, temp_dir(job_id))
        print(cpus_line(args.role, args.cpus))
        if args.gpus:
            print(build_gsplat_kernels(env), flush=True)
        sys.stdout.flush()
        os.execvpe(cmd[0], cmd, env)  # SLURM's SIGTERM then reaches `ray start --block` itself
    import ray

    wait_for_nodes(os.environ["RAY_ADDRESS"], args.nodes, quiet=True)
    print(f"Ray: {args.nodes} node(s), {ray.cluster_resources().get('GPU', 0):.0f} GPUs", flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
