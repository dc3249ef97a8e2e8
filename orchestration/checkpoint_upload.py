"""Checkpoints off the training path: staged on local disk, uploaded by a background thread.

The trainer writes each checkpoint whole to rank 0's local disk (`<run folder>/checkpoints/`,
atomically) and goes on training; `CheckpointUploader` copies the newest staged one to storage
(`RunCheckpoints.upload`), checks it is whole there, then lets older ones go (storage: the
project's retention, `storage.num_to_keep`; local disk: `LOCAL_COPIES`). An upload that fails is
tried again every few seconds until storage answers; a checkpoint staged meanwhile supersedes the
one waiting (only the newest is uploaded). When storage has not answered for `outage_s`, the
uploader gives up: `failure` names the newest checkpoint on storage and the staged one, and the
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

from cgsgan.training.checkpoint import RunCheckpoints

LOCAL_COPIES = 2  # checkpoints kept on local disk: the newest two (plus one being uploaded)
RETRY_EVERY_S = 3.0


class StorageOutage(RuntimeError):
    """Storage did not answer for storage.outage_s: the run stops (the message says where the
    newest checkpoints are)."""


def nimg_of(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])  # checkpoint-<nimg>.pt (cgsgan.training.checkpoint.checkpoint_name)


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
        self.failure: str | None = None
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

    def check(self) -> None:
        """Raise StorageOutage once the uploader has given up."""
        if self.failure is not None:
            raise StorageOutage(self.failure)

    def finish(self) -> None:
        """Wait until the newest staged checkpoint is whole on storage (or the uploader gives up:
        raises StorageOutage)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self.check()
        self._prune_local()

    def _run(self) -> None:
        down_since: float | None = None
        while True:
            with self._cond:
                while self._waiting is None and not self._closing:
                    self._cond.wait()
                if self._waiting is None:
                    return
                self._uploading, self._waiting = self._waiting, None
            path = self._uploading
            try:
                folder = self.store.upload(path, nimg_of(path))
                if not self.store.is_whole(folder, path.stat().st_size):
                    raise OSError(f"{folder}: not whole after its upload")
            except Exception as e:  # noqa: BLE001  (any storage error: keep the checkpoint staged, retry)
                now = time.monotonic()
                down_since = down_since or now
                with self._cond:
                    if self._waiting is None:
                        self._waiting = path  # retry it unless a newer one came meanwhile
                    self._uploading = None
                if now - down_since >= self.outage_s:
                    self.failure = (f"storage unreachable for {now - down_since:.0f} s (storage.outage_s="
                                    f"{self.outage_s:g}; {type(e).__name__}): run stopped. Newest checkpoint on "
                                    f"storage: {self.newest_stored or 'none'}; staged locally: {self._waiting}. "
                                    "When storage answers, the same command resumes from the one on storage")  # fmt: skip
                    return
                time.sleep(RETRY_EVERY_S)
                continue
            down_since = None
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
        files = sorted(self.local_dir.glob("checkpoint-*.pt"), key=nimg_of, reverse=True)
        for old in files[LOCAL_COPIES:]:
            if old not in busy:
                old.unlink(missing_ok=True)
