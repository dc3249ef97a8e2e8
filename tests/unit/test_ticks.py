"""Tick accounting and the console lines (cgsgan/training/ticks.py)."""

from __future__ import annotations

import math

import pytest
import torch

from cgsgan.training.ticks import TickClock, TrainingDiverged, kimg_text, tick_line


def test_eta_is_never_negative_when_the_last_step_overshoots_total_kimg():
    # A resumed run's last tick printed "eta -1:59:59" (the last batch passed total_kimg).
    clock = TickClock(torch.device("cpu"))
    clock.start_run(cur_nimg=4000)
    clock.add({"loss/G": torch.tensor(0.5)})
    stats = clock.end_tick(tick=3, step=510, cur_nimg=4004, total_kimg=4.0)
    assert stats["timing/eta_sec"] == 0.0
    line = tick_line(stats, 4.0)
    assert line.endswith("eta 0:00:00") and "-" not in line.split("eta")[1], line
    # A negative ETA from elsewhere is shown as zero too.
    assert tick_line({**stats, "timing/eta_sec": -1.0}, 4.0).endswith("eta 0:00:00")


def test_eta_extrapolates_the_pace_of_this_process():
    clock = TickClock(torch.device("cpu"))
    clock.start_run(cur_nimg=1000)
    clock._run_start = (clock._run_start[0] - 10.0, 1000)  # 10 s for the 1000 images below
    stats = clock.end_tick(tick=1, step=10, cur_nimg=2000, total_kimg=4.0)
    assert stats["timing/eta_sec"] == pytest.approx(20.0, rel=0.05)  # 2000 images left at 100 img/s


def test_tick_means_and_divergence():
    clock = TickClock(torch.device("cpu"))
    for v in (1.0, 2.0, 3.0):
        clock.add({"loss/D": torch.tensor(v)})
    assert clock.end_tick(tick=1, step=3, cur_nimg=24, total_kimg=1.0)["loss/D"] == 2.0
    clock.add({"loss/G": torch.tensor(math.nan)})
    with pytest.raises(TrainingDiverged, match=r"loss G is nan in tick 2 \(up to step 4"):
        clock.end_tick(tick=2, step=4, cur_nimg=32, total_kimg=1.0)


def test_small_kimg_values_keep_their_digits():
    assert kimg_text(0.004) == "0.004"
    assert kimg_text(0.0) == "0.00"
    assert kimg_text(0.25) == "0.25"
    assert kimg_text(6.0) == "6.00"
    assert kimg_text(0.032) == "0.032" and kimg_text(0.08) == "0.08" and kimg_text(1234.567) == "1234.567"
