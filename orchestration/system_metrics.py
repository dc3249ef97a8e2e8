"""System metrics of every worker in its run's "System metrics" tab: MLflow's own monitor (CPU and
memory through psutil, disk and network; on CUDA each GPU's utilisation and memory through NVML,
the `nvidia-ml-py` of the gpu extra), one per worker, every tracking.system_metrics_interval_s.

Each worker logs under its own node id, worker<rank> (system/worker0/cpu_utilization_percentage,
...), and tags the run with its host (system.worker<rank>.host), so a slow node or an idle GPU
shows beside timing/img_per_sec. Rank 0 knows the run id when it starts its monitor; the other
ranks find the run by its name (rank 0 creates it) in the monitor's own thread.

Samples are taken with MLflow's monitors but sent through the worker's tracking queue
(orchestration.tracking_queue), not by MLflow's own monitor thread: that one gives up for good
(with a warning) the first time the server does not answer, and its `finish` waits on the server.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from mlflow.entities import Metric

from orchestration.tracking import RUN_NAME_TAG

FIND_RUN_EVERY_S = 2.0


def node_id(rank: int) -> str:
    return f"worker{rank}"


class WorkerSystemMetrics:
    """Samples this worker's system every `interval_s` into the MLflow run named `run_name` (or
    `run_id`, when known) until `stop()`; interval_s <= 0 turns it off."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, rank: int, interval_s: float,
                 run_id: str | None = None, client=None) -> None:  # fmt: skip
        """`client`: where samples go (a tracking queue's client; None: an MlflowClient)."""
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.sink = client
        self.rank, self.interval_s, self.run_id = rank, interval_s, run_id
        self._stop = threading.Event()
        self._monitor = None
        self._thread: threading.Thread | None = None

    def start(self) -> WorkerSystemMetrics:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name=f"system-metrics-{node_id(self.rank)}", daemon=True)
            self._thread.start()
        return self

    def _find_run(self, client) -> str | None:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            return None
        found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{self.run_name}'",
                                   max_results=1)  # fmt: skip
        return found[0].info.run_id if found and found[0].info.status == "RUNNING" else None

    def _run(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        from mlflow.tracking import MlflowClient

        # MLflow logs every start and stop of a monitor at INFO: one line per worker per run.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        try:
            client = MlflowClient(self.tracking_uri)
            while self.run_id is None and not self._stop.is_set():
                try:
                    self.run_id = self._find_run(client)
                except Exception:  # noqa: BLE001  (the server does not answer yet: ask again)
                    pass
                if self.run_id is None:
                    self._stop.wait(FIND_RUN_EVERY_S)
            if self._stop.is_set():
                return
            sink = self.sink or client
            sink.set_tag(self.run_id, f"system.{node_id(self.rank)}.host", socket.gethostname())
            # resume_logging: a restarted worker goes on from the run's last system-metrics step.
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval_s,
                                                 node_id=node_id(self.rank), tracking_uri=self.tracking_uri,
                                                 resume_logging=True)  # fmt: skip
        except Exception as e:  # noqa: BLE001  (monitoring must never fail a training run)
            print(f"warning: no system metrics from {node_id(self.rank)}: {type(e).__name__}: {e}", flush=True)
            return
        mon, prefix = self._monitor, f"system/{node_id(self.rank)}/"
        step = mon._logging_step
        while not self._stop.is_set():
            mon.collect_metrics()
            if self._stop.wait(self.interval_s):
                return
            now = int(time.time() * 1000)
            sink.log_batch(self.run_id, metrics=[Metric(prefix + k, float(v), now, step)
                                                 for k, v in mon.aggregate_metrics().items()])  # fmt: skip
            for m in mon.monitors:
                m.clear_metrics()
            step += 1

    def stop(self) -> None:
        """Stop sampling (before the run is marked finished)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._monitor = None
