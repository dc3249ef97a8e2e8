"""A real single-node SLURM on this machine, for tests and for trying cluster=slurm locally.

    python -m infra.slurm.local_cluster up      # writes slurm.conf under .tmp/slurm, starts munged,
                                                # slurmctld and slurmd (as root), waits for the node
    python -m infra.slurm.local_cluster down

Needs Debian's `slurm-wlm` and `munge` (infra/slurm/install_local.sh installs them) and root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLURM_CONF = """\
ClusterName=cgsgan-local
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class LocalSlurm:
    state: Path
    conf: Path

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}


def _need(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if not path:
        raise RuntimeError(
            f"{binary} not found: install Debian's slurm-wlm and munge (bash infra/slurm/install_local.sh)"
        )
    return path


def up(state: Path | None = None, timeout_s: float = 60) -> LocalSlurm:
    if os.geteuid() != 0:
        raise RuntimeError("the local SLURM runs slurmctld/slurmd as root; run as root")
    state = (state or ROOT / ".tmp" / "slurm").absolute()
    (state / "ctld").mkdir(parents=True, exist_ok=True)
    (state / "d").mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    mem_mb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1]) // 1024 - 1024
    conf = state / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, cpus=os.cpu_count(), mem_mb=mem_mb, state=state,
                                      ctld_port=6817, d_port=6818))  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # munge: a key, and the daemon as the munge user.
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run([_need("mungekey") if shutil.which("mungekey") else "/usr/sbin/mungekey", "--create"], check=False)
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        subprocess.run(["runuser", "-u", "munge", "--", _need("munged")], check=True)
    down(state, quiet=True)
    log = open(state / "daemons.log", "ab")
    subprocess.Popen([_need("slurmctld"), "-D", "-i", "-f", str(conf)], env=env, stdout=log, stderr=log,
                     start_new_session=True)  # fmt: skip
    time.sleep(2)
    subprocess.Popen([_need("slurmd"), "-D", "-f", str(conf)], env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        out = subprocess.run([_need("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
            return LocalSlurm(state, conf)
        time.sleep(1)
    tail = (state / "slurmctld.log").read_text()[-2000:] if (state / "slurmctld.log").exists() else ""
    raise RuntimeError(f"SLURM node did not become idle within {timeout_s:.0f} s; slurmctld log:\n{tail}")


def _ours(pid: int, name: str, conf: Path) -> bool:
    """Whether `pid` is the `name` daemon started with this state folder's slurm.conf (a pid file can
    outlive its process, and the pid be reused by someone else's)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(args) and Path(args[0].decode()).name == name and str(conf).encode() in args


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # an exited child not yet reaped is gone too


def down(state: Path | None = None, quiet: bool = False) -> None:
    """Stop the daemons of this state folder only (by their pid files, checked against this
    folder's slurm.conf); never daemons by name, which would stop other people's SLURM."""
    state = (state or ROOT / ".tmp" / "slurm").absolute()
    stopping = []
    for name in ("slurmd", "slurmctld"):
        pid_file = state / f"{name}.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if _ours(pid, name, state / "slurm.conf"):
            try:
                os.kill(pid, signal.SIGTERM)
                stopping.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.time() + 30
    for pid in stopping:
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if not quiet:
        print("slurm stopped")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: python -m infra.slurm.local_cluster up|down")
    if sys.argv[1] == "up":
        s = up()
        print(f"SLURM up: export SLURM_CONF={s.conf}")
    else:
        down()
