"""Checkpoints staged on local disk and uploaded in the background: one retention rule for every
copy (storage: storage.num_to_keep; local disk: the newest two), and a storage outage beyond
storage.outage_s stops the run naming where the newest checkpoints are."""

from __future__ import annotations

import socket
import time

import pytest

from cgsgan.training.checkpoint import CHECKPOINT_FILE, RunCheckpoints, checkpoint_name
from orchestration.checkpoint_upload import LOCAL_COPIES, CheckpointUploader, StorageOutage


def stage(folder, nimg: int):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{checkpoint_name(nimg)}.pt"
    path.write_bytes(nimg.to_bytes(4, "little") * 1000)
    return path


def test_every_copy_of_a_checkpoint_obeys_the_retention_rule(tmp_path):
    store = RunCheckpoints(tmp_path / "storage" / "run")
    local = tmp_path / "runs" / "run" / "checkpoints"
    stored: list[str] = []
    up = CheckpointUploader(store, local, num_to_keep=2, outage_s=60, on_stored=stored.append)
    for nimg in (16, 32, 48, 64, 80):
        up.submit(stage(local, nimg))
        assert len(list(local.glob("*.pt"))) <= LOCAL_COPIES + 1  # the newest two and one in flight
        deadline = time.monotonic() + 30
        while up.newest_stored != store.folder(nimg) and time.monotonic() < deadline:
            time.sleep(0.05)
    up.submit(stage(local, 96))
    up.submit(stage(local, 112))  # staged before 96 was uploaded: supersedes it
    up.finish()
    assert [n for n, _ in store.folders()] == [112, 96] or [n for n, _ in store.folders()] == [112, 80]
    for _, folder in store.folders():
        assert store.is_whole(folder, 4000)
    assert sorted(p.name for p in local.glob("*.pt")) == [f"{checkpoint_name(n)}.pt" for n in (96, 112)]
    assert up.newest_stored == store.folder(112) and stored[-1] == store.folder(112)
    assert stored[:5] == [store.folder(n) for n in (16, 32, 48, 64, 80)]
    assert not list((tmp_path / "storage").rglob("*.partial"))
    assert all((tmp_path / "storage" / "run" / f.rsplit("/", 1)[1] / CHECKPOINT_FILE).is_file() for _, f in store.folders())
    assert (tmp_path / "storage" / "run" / checkpoint_name(112) / CHECKPOINT_FILE).read_bytes()[:4] == (112).to_bytes(4, "little")


def test_storage_gone_beyond_outage_s_stops_the_run_naming_both_checkpoints(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    store = RunCheckpoints("s3://bucket/runs/run", dead)
    local = tmp_path / "checkpoints"
    up = CheckpointUploader(store, local, num_to_keep=2, outage_s=2, newest_stored="s3://bucket/runs/run/checkpoint-0000000016")
    staged = stage(local, 32)
    up.submit(staged)
    up.check()  # training goes on while storage does not answer
    deadline = time.monotonic() + 60
    while up.failure is None and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(StorageOutage) as e:
        up.check()
    message = str(e.value)
    assert "storage.outage_s=2" in message and "\n" not in message
    assert "s3://bucket/runs/run/checkpoint-0000000016" in message and str(staged) in message
    assert staged.exists()  # the staged copy is what is left: never deleted


class HangingStore:
    """Storage whose upload never returns (a paused endpoint: the connection is accepted, no reply)."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()

    def upload(self, path, nimg):
        self.release.wait()
        raise OSError("released")

    def is_whole(self, folder, size):
        return False


def test_an_upload_that_hangs_counts_as_an_outage_and_the_end_of_the_run_does_not_wait_on_it(tmp_path):
    """outage_s bounds how long training and the run's end go on without storage answering, also
    when one attempt hangs (no error to count): the run stops in one line instead of waiting."""
    store = HangingStore()
    local = tmp_path / "checkpoints"
    up = CheckpointUploader(store, local, num_to_keep=2, outage_s=1.5)
    staged = stage(local, 32)
    up.submit(staged)
    up.check()  # training goes on at first
    t0 = time.monotonic()
    with pytest.raises(StorageOutage) as e:
        up.finish()
    waited = time.monotonic() - t0
    store.release.set()
    assert waited < 5, waited
    message = str(e.value)
    assert "storage.outage_s=1.5" in message and "no answer" in message and str(staged) in message, message
    assert staged.exists()
