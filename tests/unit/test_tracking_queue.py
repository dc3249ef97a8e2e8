"""MLflow calls off the training path: spooled in the run folder while the server is unreachable,
sent in order, to the same run and steps, by `sync` or by the next queue on the same spool."""

from __future__ import annotations

import socket
import time

from mlflow.entities import Metric
from PIL import Image

from orchestration.tracking import Tracker
from orchestration.tracking_queue import SPOOL, TrackingQueue, main, quiet_http


def dead_server() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket is closed


def test_an_unreachable_server_costs_the_caller_nothing_and_sync_sends_everything_in_order(tmp_path, capfd):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(store, "cgsgan", "run-q")
    run_id = tracker.start()
    run_dir = tmp_path / "runs" / "run-q"
    quiet_http()
    said: list[str] = []
    queue = TrackingQueue(run_dir / SPOOL, dead_server(), say=said.append).start()
    t0 = time.monotonic()
    for step in range(5):
        queue.client.log_batch(run_id, metrics=[Metric("loss.G", float(step), 1000 + step, step * 16)])
    queue.client.log_image(run_id, Image.new("RGB", (8, 8), (255, 0, 0)), key="grid", step=32)
    calls_s = time.monotonic() - t0
    assert calls_s < 1.0, f"the calls took {calls_s:.1f} s: they waited on the server"
    left = queue.close(timeout_s=60)
    assert left == 6 and time.monotonic() - t0 < 30
    assert [ln.split(" ", 2)[:2] for ln in said] == [["tracking", "unreachable"], ["tracking:", "6"]], said
    assert f"python -m orchestration.tracking sync {run_dir}" in said[-1]
    assert "Retrying" not in "".join(capfd.readouterr())  # no urllib3 retry lines
    assert main(["sync", str(run_dir)]) == 1  # the server it was meant for is still down: said, non-zero
    assert "6 left" in capfd.readouterr().out

    # A later queue on the same spool (the next launch of the run) sends the old calls first...
    again = TrackingQueue(run_dir / SPOOL, dead_server(), say=said.append).start()
    again.client.set_terminated(run_id, "FINISHED")
    assert again.close(timeout_s=60) == 7
    # ... and so does sync, to the server named (here the store the run lives in).
    assert main(["sync", str(run_dir), "--tracking-uri", store]) == 0
    history = tracker.client.get_metric_history(run_id, "loss.G")
    assert [(m.step, m.value) for m in history] == [(s * 16, float(s)) for s in range(5)]
    images = [f.path for f in tracker.client.list_artifacts(run_id, "images")]
    assert images and all(p.startswith("images/grid+step+32+") for p in images), images
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert not (run_dir / SPOOL / "queue.jsonl").exists()


def test_mlflow_is_imported_before_the_sender_thread_starts(tmp_path):
    """The worker's main thread imports MLflow while the sender may be sending a resumed run's spool:
    two threads importing MLflow at once broke protobuf's descriptor pool and every later import of
    MLflow in that worker. In a fresh interpreter, MLflow must be whole before the thread starts."""
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import sys, threading
from orchestration.tracking_queue import TrackingQueue
assert "mlflow" not in sys.modules
seen = []
real = threading.Thread.start
def start(self):
    seen.append(("mlflow.entities" in sys.modules, "mlflow.tracking" in sys.modules))
    real(self)
threading.Thread.start = start
queue = TrackingQueue({str(tmp_path / 'spool')!r}, {dead_server()!r}, say=lambda m: None).start()
queue.close(timeout_s=1)
print(seen[0])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "(True, True)", out.stdout + out.stderr[-2000:]
