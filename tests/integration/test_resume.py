"""Resume end to end, with a real local Ray per launch (its own temp dir, stopped by this module only):
resume is never stuck, on local storage and on the local S3 stack (moto).

One run, relaunched with a growing train.total_kimg after damage a user or a crash leaves behind
(storage.num_to_keep=2, a checkpoint every 16 images):

  launch 1 (0.032)                                 -> checkpoints 16, 32
  truncate 32, corrupt Ray's run snapshot; 0.048   -> resumes from 16, writes 32 again (same name), 48
  delete the folder 48; 0.064, train.batch_gpu=4  -> resumes from 32 (same name), writes 48, 64
  delete Ray's run snapshot, truncate 64; 0.080    -> resumes from 48, writes 64, 80

Every launch exits 0 with its newest checkpoint at its total_kimg (strictly increasing), a
watcher finds a loadable checkpoint in storage at every moment, and retention leaves the two
newest. Before the fix, launch 2 failed in Ray's TrainController (CheckpointManagerInitializationError)
and a replayed checkpoint was deleted by Ray's retention (point 1).

Locally, an unrelated Ray (its own temp dir) runs on the host the whole time: no launch prints a
traceback, and that Ray is untouched afterwards (point 2); no launch prints Ray's token-auth warning,
the PreemptionWatcher error line or MLflow's database-creation lines (point 6); and a last launch of
the finished run with another layout says it is complete and how to go on (point 3). The local
launches run as a user's do: from their own folder, with the defaults (./outputs) and the dataset
named by relative paths; the documented model-URI commands then run as written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cgsgan.training.checkpoint import RunCheckpoints, checkpoint_filesystem, load_checkpoint
from orchestration.cluster import free_port
from tests.integration.model_uris import check_model_uri_commands
from tests.integration.procs import alive, processes_of_ray, ray_tmpdir, stop_ray
from tests.integration.launching import ATTEMPT, TINY_RUN, launch_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    *TINY_RUN,
    "loss.num_views=2",
    "train.snapshot_ticks=100", "train.checkpoint_ticks=1", "cluster.max_failures=1", "storage.num_to_keep=2",
    "train.feature_extractor=random",
]  # fmt: skip
CHATTER = ("Traceback", "multiple active Ray instances", "Token authentication", "PreemptionWatcher",
           "Creating initial MLflow database", "alembic", "CheckpointManagerInitializationError")  # fmt: skip
SNAPSHOT = "checkpoint_manager_snapshot.json"


class Storage:
    """The run folder in storage, local or S3, through the project's own filesystem."""

    def __init__(self, run_uri: str) -> None:
        self.uri = run_uri
        self.fs, self.path = checkpoint_filesystem(run_uri)

    def checkpoints(self) -> RunCheckpoints:
        return RunCheckpoints(self.uri)

    def _file(self, nimg: int) -> str:
        return f"{self.path}/checkpoint-{nimg:010d}/checkpoint.pt"

    def write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def truncate(self, nimg: int) -> None:
        with self.fs.open_input_stream(self._file(nimg)) as f:
            data = f.read()
        self.write(self._file(nimg), data[: len(data) // 2])

    def delete_folder(self, nimg: int) -> None:
        self.fs.delete_dir(f"{self.path}/checkpoint-{nimg:010d}")

    def corrupt_snapshot(self) -> None:
        self.write(f"{self.path}/{SNAPSHOT}", b'{"checkpoint_results": [{"checkpoint_dir_name": "checkp')

    def delete_snapshot(self) -> None:
        """Ray's run snapshot, where there is one: the workers report no checkpoint to Ray (the
        project uploads them), so after a launch that left none this damage is a no-op."""
        from pyarrow.fs import FileType

        if self.fs.get_file_info(f"{self.path}/{SNAPSHOT}").type != FileType.NotFound:
            self.fs.delete_file(f"{self.path}/{SNAPSHOT}")

    def newest_loadable_nimg(self) -> int | None:
        loaded: list[int] = []
        self.checkpoints().resume(lambda p: loaded.append(load_checkpoint(p)["counters"]["cur_nimg"]),
                                  say=lambda msg: None)  # fmt: skip
        return loaded[0] if loaded else None


class Watcher(threading.Thread):
    """Checks, while launches run and damage is done, that storage always holds a checkpoint that loads."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(daemon=True)
        self.storage, self.stop, self.gaps, self.checks = storage, threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.storage.newest_loadable_nimg() is None:
                    self.gaps.append(time.strftime("%H:%M:%S"))
                self.checks += 1
            except OSError:  # the listing itself failed (a folder deleted while listed): look again
                pass
            self.stop.wait(1.0)


def launch(args: list[str], env: dict, total_kimg: float, cwd: Path = ROOT) -> str:
    out = subprocess.run([*args, f"train.total_kimg={total_kimg}"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-5000:]
    assert console.count(ATTEMPT) == 1, console[-5000:]  # no failed attempt on the way
    for chatter in CHATTER:
        assert chatter not in console, (chatter, console[-5000:])
    return console


def relaunch_after_damage(args: list[str], env: dict, cwd: Path = ROOT) -> tuple[str, str]:
    """The launches of the module docstring, in `cwd`; returns the run's name and what its last launch printed."""
    console = launch(args, env, 0.032, cwd)
    name, run_uri = re.search(r"^run (\S+)\n  checkpoints: (\S+)$", console, re.M).groups()
    storage = Storage(run_uri)
    assert storage.newest_loadable_nimg() == 32
    watcher = Watcher(storage)
    watcher.start()
    try:
        kimg = [32]
        damage = [
            (lambda: (storage.truncate(32), storage.corrupt_snapshot()), 0.048, 16, []),
            # another layout (chunks of 4 rather than the whole batch) is the same run: it resumes
            (lambda: storage.delete_folder(48), 0.064, 32, ["train.batch_gpu=4"]),
            (lambda: (storage.delete_snapshot(), storage.truncate(64)), 0.080, 48, []),
        ]
        for do_damage, total, resumed_at, layout in damage:
            do_damage()
            console = launch([*args, *layout], env, total, cwd)
            assert f"run {name}\n" in console, console[-3000:]
            assert re.search(rf"resumed from \S+checkpoint-{resumed_at:010d} at {resumed_at / 1000:g} kimg", console), \
                console[-3000:]
            kimg.append(storage.newest_loadable_nimg())
            assert kimg[-1] == round(total * 1000), (kimg, console[-3000:])
        assert kimg == sorted(set(kimg)), kimg  # strictly increasing
        assert [n for n, _ in storage.checkpoints().folders()] == [80, 64]  # retention: the two newest
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.checks > 10 and watcher.gaps == [], (watcher.checks, watcher.gaps)
    return name, console


def test_resume_is_never_stuck_on_local_storage_on_a_shared_host(tmp_path):
    """Launched as a user does, from their own folder with the defaults (local storage, SQLite
    tracking under ./outputs) and the dataset named by relative paths, which the driver resolves
    (the workers run in Ray's folder); after the run the documented model-URI commands work."""
    from cgsgan.data.synthetic import generate_synthetic

    home = tmp_path / "user"
    generate_synthetic(home / "heads", identities=16, views=2, resolution=64, seed=3)
    (home / "heads.json").write_text(str(list(range(32))))
    other = ray_tmpdir()  # an unrelated Ray on this host (a colleague's, a login node's)
    ray_tmp = ray_tmpdir()
    env = launch_env(ray_tmp, tmp_path, {})
    env.pop("MLFLOW_TRACKING_URI", None)
    ray_cli = str(Path(sys.executable).parent / "ray")
    try:
        started = subprocess.run([ray_cli, "start", "--head", f"--temp-dir={other}", f"--port={free_port()}",
                                  "--num-cpus=0", "--include-dashboard=false"], env={**env, "RAY_TMPDIR": str(other)},
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert started.returncode == 0, started.stderr[-3000:]
        others = processes_of_ray(other)
        assert others
        args = [sys.executable, str(ROOT / "orchestration" / "launch.py"), *SHORT, "data=custom", "data.path=heads",
                "data.index_list=heads.json", "storage=local", "name=never-stuck"]  # fmt: skip
        name, trained = relaunch_after_damage(args, env, home)
        # The finished run, relaunched with another layout: said plainly, nothing trained.
        console = launch([*args, "cluster.num_workers=2", "cluster.cpus_per_worker=1"], env, 0.080, home)
        assert f"run {name} is complete at 0.08 kimg" in console, console[-3000:]
        assert "train.total_kimg=<more than 0.08>" in console and "name=<a new run name>" in console
        assert not re.search(r"\btick \d+ \|", console) and "resumed from" not in console
        assert all(alive(p) for p in others), "the unrelated Ray lost processes"
        # The commands run in other folders import this checkout (as they would the installed one).
        check_model_uri_commands(home, tmp_path / "elsewhere", {**env, "PYTHONPATH": str(ROOT)}, trained)
    finally:
        stop_ray(ray_tmp)
        stop_ray(other)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)


def test_resume_is_never_stuck_on_s3(s3_server, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    ray_tmp = ray_tmpdir()
    env = launch_env(ray_tmp, tmp_path, s3_server.env())
    args = [sys.executable, "orchestration/launch.py", *SHORT, "storage=s3", f"storage.path=s3://{s3_server.bucket}/never-stuck",
            f"output_dir={tmp_path / 'out'}", "name=s3run"]  # fmt: skip
    try:
        relaunch_after_damage(args, env)
    finally:
        stop_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
