"""Stopping only what a test started, on a machine shared with other people's Ray jobs.

Never `ray stop` (it stops every Ray of the user on the machine) and never processes found by name:
- `kill_tree(pid)`: a process the test started and everything below it (a launch.py driver, its
  local Ray and the Ray workers), read from /proc before anything is killed;
- `stop_ray(temp_dir)`: the processes of a Ray the test started with its own temp dir (`ray start
  --temp-dir=...`, or RAY_TMPDIR for a local Ray): each Ray daemon names its session folder there on
  its command line; Ray's workers (their command lines are rewritten) are found below them.
- `ray_tmpdir()`: a short, unique RAY_TMPDIR for a test's launches (Unix socket paths are short).
Linux only (/proc), like the rest of the integration tests.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        after = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return after[0], int(after[1])


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"  # an exited child not yet reaped is gone too


def cmdline(pid: int) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for p in _all_pids():
        st = _stat(p)
        if st is not None:
            children.setdefault(st[1], []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pids: list[int], timeout: float = 60) -> list[int]:
    """Wait until these processes have exited; returns those still alive."""
    deadline = time.time() + timeout
    left = list(pids)
    while left and time.time() < deadline:
        left = [p for p in left if alive(p)]
        if left:
            time.sleep(0.2)
    return left


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal process `pid` (one the test started) and all its descendants."""
    pids = [pid, *descendants(pid)]
    _signal(pids, sig)
    wait_gone(pids, timeout=30)


def processes_of_ray(temp_dir: str | Path) -> list[int]:
    """Processes whose command line names `temp_dir` (the Ray daemons of that temp dir)."""
    marker = str(Path(temp_dir))
    return [p for p in _all_pids() if p != os.getpid() and any(marker in a for a in cmdline(p))]


def stop_ray(temp_dir: str | Path) -> None:
    """Stop the Ray started with this temp dir and the workers below it: SIGTERM, then SIGKILL."""
    daemons = processes_of_ray(temp_dir)
    pids = sorted({*daemons, *(c for d in daemons for c in descendants(d))})
    _signal(pids, signal.SIGTERM)
    _signal(wait_gone(pids, timeout=15), signal.SIGKILL)
    wait_gone(pids, timeout=30)


def ray_tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cgt-", dir="/tmp"))
