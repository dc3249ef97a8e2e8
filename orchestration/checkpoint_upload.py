"""Checkpoints off the training path: staged on local disk, uploaded by a background thread.

The trainer writes each checkpoint whole to rank 0's local disk (`<run folder>/checkpoints/`,
atomically) and goes on training; `CheckpointUploader` copies the newest staged one to storage
(`RunCheckpoints.upload`), checks it is whole there, then lets older ones go (storage: the
project's retention, `storage.num_to_keep`; local disk: `LOCAL_COPIES`). An upload that fails is
tried again every few seconds until storage answers; a checkpoint staged meanwhile supersedes the
one waiting (only the newest is uploaded). When storage has not answered for `outage_s` (failed
attempts, or one attempt that hangs: a paused endpoint accepts the connection and never replies),
the uploader gives up: `failure` names the newest checkpoint on storage and the staged one, and the
worker stops the run with that line (a relaunch resumes from the one on storage).

Why not Ray Train's own asynchronous upload (`ray.train.report(..., checkpoint_upload_mode=ASYNC)`):
a failed upload there fails the worker (Ray restarts the group from the last checkpoint), it is
not retried while training goes on, and there is no bound on how long training may run without
a checkpoint in storage.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from cgsgan.training.checkpoint import RunCheckpoints, checkpoint_nimg

LOCAL_COPIES = 2  # checkpoints kept on local disk: the newest two (plus one being uploaded)
RETRY_EVERY_S = 3.0


class StorageOutage(RuntimeError):
    """Storage did not answer for storage.outage_s: the run stops (the message says where the
    newest checkpoints are)."""


class CheckpointUploader:
    """Uploads rank 0's staged checkpoints in the background (see the module docstring)."""

    def __init__(self, store: RunCheckpoints, local_dir: Path, num_to_keep: int | None, outage_s: float,
                 newest_stored: str | None = None, on_stored: Callable[[str], None] = lambda folder: None) -> None:  # fmt: skip
        self.store, self.local_dir, self.num_to_keep, self.outage_s = store, Path(local_dir), num_to_keep, outage_s
        self.newest_stored = newest_stored  # the newest checkpoint whole on storage (the resumed one at first)
        self.on_stored = on_stored
        self._cond = threading.Condition()
        self._waiting: Path | None = None  # the newest staged checkpoint not uploaded yet
        self._uploading: Path | None = None
        self._failure: str | None = None
        self._stalled_since: float | None = None  # the start of the first attempt not yet followed by a success
        self._last_error = "no answer"
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def submit(self, path: Path) -> None:
        """A checkpoint the trainer has just written whole to local disk: upload it (it supersedes
        one still waiting), and keep local disk to LOCAL_COPIES."""
        with self._cond:
            self._waiting = Path(path)
            self._cond.notify_all()
        self._prune_local()

    @property
    def failure(self) -> str | None:
        """Why the uploader gave up (None while it has not): storage has not stored a checkpoint for
        outage_s, counting an attempt still hanging."""
        since = self._stalled_since
        if self._failure is None and since is not None and time.monotonic() - since >= self.outage_s:
            self._failure = self._outage_message(time.monotonic() - since)
        return self._failure

    def _outage_message(self, seconds: float) -> str:
        return (f"storage unreachable for {seconds:.0f} s (storage.outage_s={self.outage_s:g}; {self._last_error}): "
                f"run stopped. Newest checkpoint on storage: {self.newest_stored or 'none'}; staged locally: "
                f"{self._waiting or self._uploading}. When storage answers, the same command resumes from the one "
                "on storage")  # fmt: skip

    def check(self) -> None:
        """Raise StorageOutage once the uploader has given up."""
        if self.failure is not None:
            raise StorageOutage(self.failure)

    def finish(self) -> None:
        """Wait until the newest staged checkpoint is whole on storage (or the uploader gives up:
        raises StorageOutage; an attempt left hanging dies with the process)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        while self._thread.is_alive() and self.failure is None:
            self._thread.join(1.0)
        self.check()
        self._prune_local()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._closing:
                    self._cond.wait()
                if self._waiting is None:
                    return
                self._uploading, self._waiting = self._waiting, None
            path = self._uploading
            if self._stalled_since is None:
                self._stalled_since = time.monotonic()
            try:
                folder = self.store.upload(path, checkpoint_nimg(path))
                if not self.store.is_whole(folder, path.stat().st_size):
                    raise OSError(f"{folder}: not whole after its upload")
            except Exception as e:  # noqa: BLE001  (any storage error: keep the checkpoint staged, retry)
                self._last_error = type(e).__name__
                with self._cond:
                    if self._waiting is None:
                        self._waiting = path  # retry it unless a newer one came meanwhile
                    self._uploading = None
                if self.failure is not None:
                    return
                time.sleep(RETRY_EVERY_S)
                continue
            if self._failure is not None:  # given up while this attempt hung: the run is stopping
                return
            self._stalled_since = None
            self.newest_stored = folder
            with self._cond:
                self._uploading = None
            if self.num_to_keep:
                try:
                    self.store.prune(self.num_to_keep, newest=folder)
                except Exception:  # noqa: BLE001  (pruning is tried again after the next upload)
                    pass
            self.on_stored(folder)
            self._prune_local()

    def _prune_local(self) -> None:
        """Local disk keeps the LOCAL_COPIES newest checkpoints, and the one being uploaded."""
        with self._cond:
            busy = {self._uploading, self._waiting}
        files = sorted(self.local_dir.glob("checkpoint-*.pt"), key=checkpoint_nimg, reverse=True)
        for old in files[LOCAL_COPIES:]:
            if old not in busy:
                old.unlink(missing_ok=True)
