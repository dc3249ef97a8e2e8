"""One idea of "a checkpoint": `python -m cgsgan.generate --checkpoint` takes the
folder launch.py prints, the file in it, and a run folder (its newest checkpoint that loads), locally
and on S3; the worker resumes from the newest checkpoint that loads; retention
never deletes the newest good checkpoint; a file that is not a checkpoint gets
one line without torch's weights_only advice."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray.train

from cgsgan.generate import main as generate_main
from cgsgan.training.checkpoint import RunCheckpoints, checkpoint_candidates, load_checkpoint, open_checkpoint
from cgsgan.training.trainer import Trainer
from orchestration.worker import resume
from infra.local.stack import free_port
from tests.unit.small import small_config


@pytest.fixture(scope="module")
def run_folder(synthetic_dataset, tmp_path_factory) -> Path:
    """A run folder in Ray's layout with checkpoints at 4 and 8 images (8 is the newest)."""
    run = tmp_path_factory.mktemp("storage") / "cgsgan-run"
    t = Trainer(small_config(synthetic_dataset), run / "local")
    for nimg in (4, 8):
        t.cur_nimg = nimg
        t.save(run / f"checkpoint-{nimg:010d}" / "checkpoint.pt")
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize("which", ["folder", "file", "run"])
def test_generate_takes_a_checkpoint_folder_file_or_run_folder(run_folder, tmp_path, which):
    newest = run_folder / "checkpoint-0000000008"
    ref = {"folder": newest, "file": newest / "checkpoint.pt", "run": run_folder}[which]
    assert generate_main(["--checkpoint", str(ref), "--seeds", "0-1", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_folder_means_its_newest_checkpoint_that_loads(run_folder, tmp_path, capsys):
    assert checkpoint_candidates(str(run_folder)) == [
        str(run_folder / "checkpoint-0000000008" / "checkpoint.pt"),
        str(run_folder / "checkpoint-0000000004" / "checkpoint.pt"),
    ]
    # The trainer's own layout too: runs/<run>/checkpoints/checkpoint-<nimg>.pt
    assert checkpoint_candidates(str(run_folder / "local")) == []
    copy = tmp_path / "run"
    for nimg in (4, 8):
        (copy / f"checkpoint-{nimg:010d}").mkdir(parents=True)
        (copy / f"checkpoint-{nimg:010d}" / "checkpoint.pt").write_bytes(
            (run_folder / f"checkpoint-{nimg:010d}" / "checkpoint.pt").read_bytes())
    truncate(copy / "checkpoint-0000000008" / "checkpoint.pt")
    with open_checkpoint(copy) as path:
        assert load_checkpoint(path)["counters"]["cur_nimg"] == 4
    out = capsys.readouterr().out
    assert out.count("skipping checkpoint") == 1 and "checkpoint-0000000008" in out
    assert (copy / "checkpoint-0000000008" / "checkpoint.pt").stat().st_size == 1000  # nothing deleted
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        with open_checkpoint(tmp_path / "nothing-here"):
            pass


def test_generate_takes_s3_checkpoints(run_folder, tmp_path, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket="ckpts")
        for nimg in (4, 8):
            key = f"runs/cgsgan-run/checkpoint-{nimg:010d}/checkpoint.pt"
            s3.upload_file(str(run_folder / f"checkpoint-{nimg:010d}" / "checkpoint.pt"), "ckpts", key)
        for ref in ("s3://ckpts/runs/cgsgan-run", "s3://ckpts/runs/cgsgan-run/checkpoint-0000000008",
                    "s3://ckpts/runs/cgsgan-run/checkpoint-0000000004/checkpoint.pt"):
            out = tmp_path / ref.replace("/", "_")
            assert generate_main(["--checkpoint", ref, "--seeds", "0", "--out", str(out)]) == 0, ref
            assert (out / "grid.png").exists()
        with open_checkpoint("s3://ckpts/runs/cgsgan-run") as path:
            assert load_checkpoint(path)["counters"]["cur_nimg"] == 8
        assert generate_main(["--checkpoint", "s3://ckpts/runs/none", "--out", str(tmp_path / "x")]) == 2
        # The run's checkpoints on S3: a truncated newest one skipped, retention by folder.
        s3.put_object(Bucket="ckpts", Key="runs/cgsgan-run/checkpoint-0000000012/checkpoint.pt", Body=b"x" * 1000)
        store = RunCheckpoints("s3://ckpts/runs/cgsgan-run")
        said: list[str] = []
        loader = Loader()
        assert store.resume(loader.load, say=said.append) == "s3://ckpts/runs/cgsgan-run/checkpoint-0000000008"
        assert loader.loaded == [8] and len(said) == 1 and "checkpoint-0000000012" in said[0]
        assert store.prune(1, newest=store.folder(8)) == [store.folder(4)]
        assert [n for n, _ in store.folders()] == [12, 8]
    finally:
        server.stop()


class Loader:
    """Stands in for the Trainer in `resume`: records what it loaded."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def load(self, path) -> None:
        self.loaded.append(load_checkpoint(path)["counters"]["cur_nimg"])


def copy_run(run_folder: Path, target: Path, nimgs: tuple[int, ...]) -> RunCheckpoints:
    """A run folder at `target` with checkpoint folders at `nimgs` (the 4 or 8 image checkpoint)."""
    for nimg in nimgs:
        d = target / f"checkpoint-{nimg:010d}"
        d.mkdir(parents=True)
        (d / "checkpoint.pt").write_bytes((run_folder / f"checkpoint-{4 if nimg < 8 else 8:010d}" / "checkpoint.pt").read_bytes())
    return RunCheckpoints(str(target))


def test_resume_skips_what_does_not_load_once_and_takes_the_newest_that_loads(run_folder, tmp_path):
    store = copy_run(run_folder, tmp_path / "storage" / "run", (4, 8, 12))
    newest = tmp_path / "storage" / "run" / "checkpoint-0000000012" / "checkpoint.pt"
    truncate(newest)
    (tmp_path / "storage" / "run" / "checkpoint-0000000016").mkdir()  # its file deleted, or never written
    said: list[str] = []
    loader = Loader()
    source = resume(loader, store, say=said.append)
    assert source == store.folder(8) and loader.loaded == [8]
    assert len(said) == 2 and "checkpoint-0000000016" in said[0] and "checkpoint-0000000012" in said[1]
    assert "not a readable" in said[1] and all("\n" not in line for line in said)
    assert newest.stat().st_size == 1000  # never deleted
    assert resume(Loader(), RunCheckpoints(str(tmp_path / "storage" / "other-run")), say=said.append) is None


def test_retention_never_deletes_the_newest_good_checkpoint(run_folder, tmp_path):
    """Resumed from 8 past a truncated 12: the replayed run writes 10, then 12 again under the same name.
    What is newer than the checkpoint just written stays; older folders beyond `keep` go."""
    root = tmp_path / "run"
    store = copy_run(run_folder, root, (4, 6, 8, 12))
    truncate(root / "checkpoint-0000000012" / "checkpoint.pt")
    copy_run(run_folder, root / "x", (10,))
    (root / "x" / "checkpoint-0000000010").rename(root / "checkpoint-0000000010")
    assert store.is_whole(store.folder(10), (root / "checkpoint-0000000010" / "checkpoint.pt").stat().st_size)
    assert store.prune(1, newest=store.folder(10)) == [store.folder(8), store.folder(6), store.folder(4)]
    assert [n for n, _ in store.folders()] == [12, 10]  # the unloadable 12 is newer: left to be replaced
    assert store.resume(Loader().load, say=lambda m: None) == store.folder(10)
    # 12 rewritten whole by the replay: 10 may go with keep=1, never 12.
    (root / "checkpoint-0000000012" / "checkpoint.pt").write_bytes(
        (run_folder / "checkpoint-0000000008" / "checkpoint.pt").read_bytes())
    assert store.prune(1, newest=store.folder(12)) == [store.folder(10)]
    assert store.prune(1, newest=store.folder(99)) == []  # not (yet) in storage: nothing goes
    assert [n for n, _ in store.folders()] == [12]


def test_a_file_that_is_not_a_checkpoint_gets_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 4)
    assert generate_main(["--checkpoint", str(garbage), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {garbage}: not a readable cgsgan checkpoint"), err
    assert "weights_only" not in err
