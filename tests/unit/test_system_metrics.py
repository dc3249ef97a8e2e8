"""Each worker's system metrics (MLflow's monitor) in its run, under the worker's node id: rank 0
given the run id, another rank finding the run by its name."""

from __future__ import annotations

import socket
import time

from orchestration.system_metrics import WorkerSystemMetrics
from orchestration.tracking import Tracker


def test_every_worker_logs_cpu_and_memory_into_the_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "cgsgan", "run-s")
    run_id = tracker.start()
    workers = [WorkerSystemMetrics(uri, "cgsgan", "run-s", 0, 0.5, run_id).start(),
               WorkerSystemMetrics(uri, "cgsgan", "run-s", 1, 0.5).start()]  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        names = set(tracker.client.get_run(run_id).data.metrics)
        if {"system/worker0/cpu_utilization_percentage", "system/worker1/system_memory_usage_megabytes"} <= names:
            break
        time.sleep(0.5)
    for w in workers:
        w.stop()
    run = tracker.client.get_run(run_id)
    for rank in (0, 1):
        assert f"system/worker{rank}/cpu_utilization_percentage" in run.data.metrics, sorted(run.data.metrics)
        assert f"system/worker{rank}/system_memory_usage_megabytes" in run.data.metrics
        assert run.data.tags[f"system.worker{rank}.host"] == socket.gethostname()
    off = WorkerSystemMetrics(uri, "cgsgan", "run-s", 2, 0.0, run_id).start()  # interval 0: off
    off.stop()
    assert not any(k.startswith("system/worker2/") for k in tracker.client.get_run(run_id).data.metrics)
