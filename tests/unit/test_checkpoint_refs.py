"""One idea of "a checkpoint" (issue 14, point 6): `python -m cgsgan.generate --checkpoint` takes the
folder launch.py prints, the file in it, and a run folder (its newest checkpoint that loads), locally
and on S3; the worker resumes from the newest checkpoint that loads (issue 14, point 1)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import ray.train

from cgsgan.generate import main as generate_main
from cgsgan.training.checkpoint import checkpoint_candidates, load_checkpoint, open_checkpoint
from cgsgan.training.trainer import Trainer
from orchestration.worker import resume
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    finally:
        server.stop()


class Loader:
    """Stands in for the Trainer in `resume`: records what it loaded."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def load(self, path) -> None:
        self.loaded.append(load_checkpoint(path)["counters"]["cur_nimg"])


def test_resume_skips_a_corrupt_checkpoint_from_ray_once_and_takes_the_newest_that_loads(run_folder, tmp_path):
    storage = tmp_path / "storage"
    for nimg in (4, 8, 12):
        d = storage / "run" / f"checkpoint-{nimg:010d}"
        d.mkdir(parents=True)
        (d / "checkpoint.pt").write_bytes((run_folder / f"checkpoint-{min(nimg, 8):010d}" / "checkpoint.pt").read_bytes())
    newest = storage / "run" / "checkpoint-0000000012" / "checkpoint.pt"
    truncate(newest)
    said: list[str] = []
    loader = Loader()
    handed = ray.train.Checkpoint.from_directory(str(newest.parent))  # what Ray hands back on a resubmit
    source = resume(loader, handed, str(storage), "", "run", say=said.append)
    assert source.endswith("checkpoint-0000000008") and loader.loaded == [8]
    assert len(said) == 1 and "checkpoint-0000000012" in said[0] and "not a readable" in said[0]
    assert newest.stat().st_size == 1000  # never deleted
    # No checkpoint from Ray: the storage scan alone, skipping the same file (said once there).
    said.clear()
    assert resume(Loader(), None, str(storage), "", "run", say=said.append).endswith("checkpoint-0000000008")
    assert len(said) == 1
    assert resume(Loader(), None, str(storage), "", "other-run", say=said.append) is None
