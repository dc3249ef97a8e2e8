"""MLflow calls off the training path: a spool file in the run's folder and a sender thread.

A worker hands its MLflow calls (metrics, tags, step images, artifacts, system metrics, the model
at the end, the run's end) to a `TrackingQueue` through `queue.client`, which has MlflowClient's
signatures for those calls and returns at once. Each call is appended as one JSON line to
`<run folder>/<spool>/queue.jsonl` (files it names, such as a grid image, are copied next to it),
and a background thread sends the lines in order, to the same run and steps, recording how far it
got in `sent`. While the server cannot be reached the lines wait there; the sender tries again
every few seconds. Console: one line when tracking becomes unreachable, one when it is back;
requests use a short timeout and no urllib3 retries, so none of urllib3's retry lines show.

What is left when a run ends (the server still down) is sent by the next launch of the same run
(its queue opens the same spool and sends the old lines first) or by

    python -m orchestration.tracking sync <run folder> [--tracking-uri URI]

A call the server answers with a client error (4xx: e.g. a registered model that exists) is not
retried; anything else (refused, timed out, 5xx) is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from orchestration.config import is_tracking_server

SPOOL = "tracking-spool"  # rank 0's spool folder in the run folder; other ranks: tracking-spool-worker<rank>
QUEUE_FILE = "queue.jsonl"
SENT_FILE = "sent"  # bytes of queue.jsonl sent, as text
META_FILE = "meta.json"  # the tracking URI the calls were meant for
# The sender's requests: a paused server costs it this many seconds per try, and urllib3 does not
# retry (its retries are what printed "Retrying (...)" lines and held a call for ~4 minutes).
REQUEST_TIMEOUT_S = 5
RETRY_EVERY_S = 3.0
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S)}


def spool_name(rank: int) -> str:
    return SPOOL if rank == 0 else f"{SPOOL}-worker{rank}"


def quiet_http() -> None:
    """Short, unretried MLflow requests in this process, and no urllib3 / MLflow warnings about
    them (the queue says in one line when tracking is unreachable)."""
    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)
    for name in ("urllib3.connectionpool", "urllib3", "mlflow.utils.rest_utils", "mlflow.system_metrics",
                 "mlflow.store.artifact"):  # fmt: skip
        logging.getLogger(name).setLevel(logging.CRITICAL)


class Unreachable(Exception):
    """The tracking server did not answer (refused, timed out, or a 5xx)."""


def _is_rejection(e: BaseException, server: bool) -> bool:
    """Whether the store answered and refused the call (a retry would be refused too)."""
    from mlflow.exceptions import RestException

    if not server:  # a local store (SQLite) is always there: its errors are answers
        return True
    if isinstance(e, RestException):
        return e.get_http_status_code() < 500
    return False


class SpooledClient:
    """MlflowClient's logging calls, spooled instead of sent (see the module docstring)."""

    def __init__(self, queue: TrackingQueue) -> None:
        self._queue = queue
        self.tracking_uri = queue.tracking_uri

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self._queue.put("log_batch", run_id=run_id, metrics=[[m.key, m.value, m.timestamp, m.step] for m in metrics],
                        params=[[p.key, p.value] for p in params], tags=[[t.key, t.value] for t in tags])  # fmt: skip

    def set_tag(self, run_id: str, key: str, value) -> None:
        self._queue.put("log_batch", run_id=run_id, metrics=[], params=[], tags=[[key, str(value)]])

    def log_image(self, run_id: str, image, key: str, step: int, timestamp: int | None = None) -> None:
        def keep(folder: Path) -> str:
            image.save(folder / "image.png")
            return "image.png"

        self._queue.put("log_image", run_id=run_id, key=key, step=step,
                        timestamp=timestamp or int(time.time() * 1000), file=keep)  # fmt: skip

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        def keep(folder: Path) -> str:
            _link_or_copy(Path(local_path), folder / Path(local_path).name)
            return Path(local_path).name

        self._queue.put("log_artifact", run_id=run_id, artifact_path=artifact_path, file=keep)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        def keep(folder: Path) -> str:
            shutil.copytree(local_dir, folder / "dir", copy_function=_link_or_copy)
            return "dir"

        self._queue.put("log_artifacts", run_id=run_id, artifact_path=artifact_path, file=keep)

    def create_registered_model(self, name: str) -> None:
        self._queue.put("create_registered_model", name=name)

    def create_model_version(self, name: str, source: str, run_id: str) -> None:
        self._queue.put("create_model_version", name=name, source=source, run_id=run_id)

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self._queue.put("set_terminated", run_id=run_id, status=status, end_time=int(time.time() * 1000))


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)  # the sample files are not rewritten in place: a hard link is a copy
    except OSError:
        shutil.copy2(src, dst)


def send(client, op: str, rec: dict, files: Path) -> None:
    """One spooled call, made for real."""
    if op == "log_batch":
        from mlflow.entities import Metric, Param, RunTag

        client.log_batch(rec["run_id"], metrics=[Metric(*m) for m in rec["metrics"]],
                         params=[Param(*p) for p in rec["params"]], tags=[RunTag(*t) for t in rec["tags"]])  # fmt: skip
    elif op == "log_image":
        from PIL import Image

        with Image.open(files / rec["file"]) as im:
            client.log_image(rec["run_id"], im.convert("RGB"), key=rec["key"], step=rec["step"],
                             timestamp=rec["timestamp"], synchronous=True)  # fmt: skip
    elif op == "log_artifact":
        client.log_artifact(rec["run_id"], str(files / rec["file"]), rec["artifact_path"])
    elif op == "log_artifacts":
        client.log_artifacts(rec["run_id"], str(files / rec["file"]), rec["artifact_path"])
    elif op == "create_registered_model":
        client.create_registered_model(rec["name"])
    elif op == "create_model_version":
        client.create_model_version(rec["name"], source=rec["source"], run_id=rec["run_id"])
    elif op == "set_terminated":
        client.set_terminated(rec["run_id"], status=rec["status"], end_time=rec["end_time"])
    else:
        raise ValueError(f"unknown spooled call {op!r}")


class TrackingQueue:
    """The spool of one worker's MLflow calls and the thread that sends them (see the module
    docstring). `say` prints the queue's few lines (rank 0: the console; other ranks: nothing)."""

    def __init__(self, folder: str | Path, tracking_uri: str, say: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.server = is_tracking_server(tracking_uri)
        self.say = say
        (self.folder / META_FILE).write_text(json.dumps({"tracking_uri": tracking_uri}))
        self._lock = threading.Condition()
        self._seq = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self.down_since: float | None = None
        self.client = SpooledClient(self)

    # ---------------------------------------------------------------- writing
    def put(self, op: str, file: Callable[[Path], str] | None = None, **rec) -> None:
        """Append one call to the spool (files it names are kept in the spool first)."""
        with self._lock:
            self._seq += 1
            if file is not None:
                folder = self.folder / "files" / f"{time.time_ns()}-{self._seq}"
                folder.mkdir(parents=True)
                rec["file"] = str(folder.relative_to(self.folder) / file(folder))
            with open(self.folder / QUEUE_FILE, "a") as f:
                f.write(json.dumps({"op": op, **rec}) + "\n")
                f.flush()
            self._lock.notify_all()

    # ---------------------------------------------------------------- reading
    def _sent(self) -> int:
        try:
            return int((self.folder / SENT_FILE).read_text())
        except (OSError, ValueError):
            return 0

    def _mark_sent(self, offset: int) -> None:
        tmp = self.folder / f"{SENT_FILE}.tmp"
        tmp.write_text(str(offset))
        os.replace(tmp, self.folder / SENT_FILE)

    def pending(self) -> list[dict]:
        """The calls not sent yet, oldest first."""
        return [rec for _, rec in self._unsent()]

    def _unsent(self) -> list[tuple[int, dict]]:
        """(offset after the line, call) of each line not sent yet; a torn last line is left for later."""
        try:
            with open(self.folder / QUEUE_FILE, "rb") as f:
                f.seek(self._sent())
                data = f.read()
        except FileNotFoundError:
            return []
        out, offset = [], self._sent()
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            out.append((offset, json.loads(line)))
        return out

    def last_step(self, run_id: str, metric: str) -> int:
        """The largest step of `metric` for `run_id` among the calls not sent yet (-1: none)."""
        steps = [m[3] for rec in self.pending() if rec["op"] == "log_batch" and rec.get("run_id") == run_id
                 for m in rec["metrics"] if m[0] == metric]  # fmt: skip
        return max(steps, default=-1)

    # ---------------------------------------------------------------- sending
    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def send_pending(self, give_up: Callable[[], bool] = lambda: True) -> int:
        """Send what the spool holds, in order; returns how many calls are left. When the server
        cannot be reached, waits RETRY_EVERY_S and tries again unless `give_up()`."""
        client = self._client()
        while True:
            todo = self._unsent()
            if not todo:
                if self.down_since is not None:
                    self._back()
                self._clean()
                return 0
            for offset, rec in todo:
                try:
                    send(client, rec["op"], rec, self.folder)
                except Exception as e:  # noqa: BLE001  (what a call can raise depends on the store)
                    if not _is_rejection(e, self.server):
                        if self.down_since is None:
                            self.down_since = time.monotonic()
                            self.say(f"tracking unreachable ({self.tracking_uri}): training goes on; what it would "
                                     f"be sent is kept in {self.folder} and sent when it answers")  # fmt: skip
                        if give_up():
                            return len(self._unsent())
                        time.sleep(RETRY_EVERY_S)
                        break
                    if rec["op"] != "create_registered_model":  # registered before: expected
                        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
                        self.say(f"warning: tracking refused {rec['op']}: {first}")
                if self.down_since is not None:
                    self._back()
                self._mark_sent(offset)
                self._drop_files(rec)

    def _back(self) -> None:
        self.say(f"tracking reachable again after {time.monotonic() - self.down_since:.0f} s: sending what was kept")
        self.down_since = None

    def _drop_files(self, rec: dict) -> None:
        if "file" in rec:
            shutil.rmtree(self.folder / Path(rec["file"]).parts[0] / Path(rec["file"]).parts[1], ignore_errors=True)

    def _clean(self) -> None:
        """All sent: the spool starts empty again (under the lock: no call is being appended)."""
        with self._lock:
            if self._unsent():
                return
            for name in (QUEUE_FILE, SENT_FILE):
                (self.folder / name).unlink(missing_ok=True)
            shutil.rmtree(self.folder / "files", ignore_errors=True)

    def start(self) -> TrackingQueue:
        # MLflow imported here, on the caller's thread, before the sender can import it: the worker's
        # main thread imports it too, and two threads importing it at once left protobuf's descriptor
        # pool half-built ("Depends on file 'databricks.proto', but it has not been loaded"), after
        # which every import of MLflow in the process failed (a resumed run, whose spool had lines
        # left, met it on every retry).
        import mlflow.entities  # noqa: F401
        import mlflow.tracking  # noqa: F401

        self._thread = threading.Thread(target=self._run, name="tracking-sender", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._unsent():
                    self._lock.wait(1.0)
            try:
                self.send_pending(give_up=lambda: self._closing)
            except Exception as e:  # noqa: BLE001  (the sender must never fail training)
                self.say(f"warning: tracking sender: {type(e).__name__}: {e}")
                time.sleep(RETRY_EVERY_S)
                continue
            if self._closing:  # all sent, or the server does not answer at the end
                return

    def close(self, timeout_s: float = 120) -> int:
        """Stop after sending what can be sent now: waits while the server answers (up to
        timeout_s), not while it does not. Returns the calls left in the spool, said in one line."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        left = len(self._unsent())
        if left:
            self.say(f"tracking: {left} calls not sent ({self.tracking_uri} unreachable), kept in {self.folder}; "
                     f"send them with: python -m orchestration.tracking sync {self.folder.parent} "
                     "(or relaunch the run)")  # fmt: skip
        return left


def sync(run_folder: str | Path, tracking_uri: str | None = None, say: Callable[[str], None] = print) -> int:
    """Send the spools left in a run folder (rank 0's and other workers'); returns the calls left."""
    left = 0
    spools = sorted(p for p in Path(run_folder).glob(f"{SPOOL}*") if (p / META_FILE).is_file())
    for folder in spools:
        uri = tracking_uri or json.loads((folder / META_FILE).read_text())["tracking_uri"]
        queue = TrackingQueue(folder, uri, say=say)
        n = len(queue.pending())
        rest = queue.send_pending(give_up=lambda: True)
        say(f"{folder}: sent {n - rest} of {n} calls to {uri}" + (f"; {rest} left (unreachable)" if rest else ""))
        left += rest
    if not spools:
        say(f"{run_folder}: no tracking spool (nothing to send)")
    return left


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m orchestration.tracking",
                                description="Send what a run left in its tracking spool (the server was unreachable).")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync", help="send a run folder's spooled MLflow calls, in order, to its run")
    s.add_argument("run_folder", help="the run's folder: <output_dir>/runs/<run name>")
    s.add_argument("--tracking-uri", default=None, help="send to this server instead of the one the run used")
    args = p.parse_args(argv)
    if not Path(args.run_folder).is_dir():
        print(f"error: run folder not found: {args.run_folder}", file=sys.stderr)
        return 2
    quiet_http()
    return 1 if sync(args.run_folder, args.tracking_uri) else 0
