"""The sweep's progress lines: trial n/N started or ended, with the time left.

`Progress` is the bookkeeping (plain, testable without Ray); `SweepProgress` hands Ray Tune's trial
events to it from the sweep's driver. The time left is the trials still to end, in rounds of
`concurrent`, times the mean time of the trials that trained here (a trial that only replays the
metrics of a run that had finished before an interruption takes seconds and is not counted).
"""

from __future__ import annotations

import math
import time
from typing import Callable

from ray import tune


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Progress:
    def __init__(self, name: str, total: int, concurrent: int, clock: Callable[[], float] = time.monotonic):
        self.name, self.total, self.concurrent, self.clock = name, total, max(1, concurrent), clock
        self.started: dict[str, float] = {}
        self.ended: list[str] = []
        self.durations: list[float] = []  # of trials that trained

    def start(self, key: str) -> str:
        self.started[key] = self.clock()
        return f"sweep {self.name}: trial {len(self.ended) + len(self.started)}/{self.total} started: {key}"

    def end(self, key: str, failed: bool = False, replayed: bool = False) -> str:
        took = self.clock() - self.started.pop(key, self.clock())
        self.ended.append(key)
        if not replayed and not failed:
            self.durations.append(took)
        how = "failed" if failed else "replayed its finished run" if replayed else "finished"
        return f"sweep {self.name}: {len(self.ended)}/{self.total} done ({key} {how} after {minutes(took)}); {self.left()}"

    def left(self) -> str:
        remaining = self.total - len(self.ended)
        if remaining == 0:
            return "all trials done"
        if not self.durations:
            return f"{remaining} left"
        per_trial = sum(self.durations) / len(self.durations)
        eta = math.ceil(remaining / self.concurrent) * per_trial
        return f"{remaining} left, about {minutes(eta)} ({minutes(per_trial)} a trial, {self.concurrent} at a time)"


class SweepProgress(tune.Callback):
    """Prints Progress's lines as Tune starts and ends the sweep's trials (in the driver)."""

    def __init__(self, name: str, total: int, concurrent: int, replayed_key: str, key: Callable[[object], str]):
        """key: a Tune trial -> the name its lines show; replayed_key: the metric a trial reports
        when it only replayed a finished run."""
        self.progress, self.replayed_key, self.key = Progress(name, total, concurrent), replayed_key, key

    def on_trial_start(self, iteration, trials, trial, **info):
        print(self.progress.start(self.key(trial)), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        replayed = bool((trial.last_result or {}).get(self.replayed_key))
        print(self.progress.end(self.key(trial), replayed=replayed), flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(self.progress.end(self.key(trial), failed=True), flush=True)
