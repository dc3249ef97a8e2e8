"""Launches timed against the local stack while a server's process group is paused or stopped.

`timed_launch` runs launch.py, reads its console as it comes and, at a given tick, calls an
action (pause a server's whole process group for N seconds with SIGSTOP/SIGCONT, or stop it):
the run's wall time, exit code and console come back. Used by tests/integration/test_outages.py
and benchmarks/outages.py (which measures the same on any checkout, for before/after numbers).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TICK = re.compile(r"\btick (\d+) \|")


@dataclass
class Launch:
    rc: int
    wall_s: float
    console: str
    events: list[str] = field(default_factory=list)  # what the actions did, with times
    ticks: dict[int, float] = field(default_factory=dict)  # tick -> seconds from the start to its line

    def after(self, tick: int) -> float:
        """Seconds from tick `tick`'s console line to the run's end: the part of the wall time an
        outage that starts at that tick can lengthen."""
        return self.wall_s - self.ticks[tick]


def pause_group(pid: int, seconds: float, events: list[str], t0: float) -> None:
    """SIGSTOP the process group led by `pid` now and SIGCONT it `seconds` later (without blocking)."""
    os.killpg(pid, signal.SIGSTOP)
    events.append(f"{time.monotonic() - t0:.1f}s: paused group {pid} for {seconds:g}s")

    def resume() -> None:
        try:
            os.killpg(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        events.append(f"{time.monotonic() - t0:.1f}s: resumed group {pid}")

    timer = threading.Timer(seconds, resume)
    timer.daemon = True
    timer.start()


def timed_launch(root: Path, args: list[str], env: dict, at_tick: dict[int, Callable[[list[str], float], None]] | None = None,
                 timeout_s: float = 600) -> Launch:  # fmt: skip
    """Run `args` in `root`; at the first console line of tick N, call at_tick[N](events, t0) in
    a thread of its own (an action never holds up reading the console)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    lines: list[str] = []
    events: list[str] = []
    ticks: dict[int, float] = {}
    todo = dict(at_tick or {})
    killer = threading.Timer(timeout_s, lambda: _kill_group(proc.pid))
    killer.daemon = True
    killer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            m = TICK.search(line)
            if m:
                ticks.setdefault(int(m.group(1)), time.monotonic() - t0)
            if m and int(m.group(1)) in todo:
                action = todo.pop(int(m.group(1)))
                threading.Thread(target=action, args=(events, t0), daemon=True).start()
        proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
    return Launch(proc.returncode, time.monotonic() - t0, "".join(lines), events, ticks)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
