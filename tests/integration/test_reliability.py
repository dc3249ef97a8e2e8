"""Reliability end to end, with a real local Ray (in its own temp dir, stopped by this module only):

- a launch with AWS / MLflow credentials in its environment leaves them in no file it or Ray
  writes (Ray's temp dir included) and prints them nowhere; with S3 storage they still reach the
  workers (point 2);
- the console shows one tick line per tick and no Ray Train report dumps (point 7);
- the checkpoint folder launch.py prints is what `python -m cgsgan.generate --checkpoint` takes,
  locally and on S3 (point 6);
- (a resubmitted run whose newest checkpoint is truncated: tests/integration/test_resume.py);
- a broken data file met inside a worker ends the run without a retry (point 3).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.launching import ATTEMPT, TINY_RUN, files_holding, launch_env, planted_secrets, printed_checkpoint
from tests.integration.procs import ray_tmpdir, stop_ray

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    *TINY_RUN,
    "loss.num_views=2",
    "train.snapshot_ticks=3", "train.checkpoint_ticks=1", "cluster.max_failures=1", "storage.num_to_keep=10",
    "train.feature_extractor=random",  # the synthetic-heads extractor is trained and tested in unit tests
]  # fmt: skip

@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """One finished local run (local storage, SQLite MLflow) with credentials planted in its
    environment; checkpoints at 16, 32 and 48 images."""
    tmp = tmp_path_factory.mktemp("local-run")
    ray_tmp = ray_tmpdir()
    planted = planted_secrets()
    env = launch_env(ray_tmp, tmp, planted)
    args = [sys.executable, "orchestration/launch.py", *SHORT, "storage=local", f"output_dir={tmp / 'out'}",
            "name=reliability"]  # fmt: skip
    try:
        out = subprocess.run([*args, "train.total_kimg=0.048"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
        yield {"out": out, "args": args, "env": env, "tmp": tmp, "ray_tmp": ray_tmp, "secrets": planted}
    finally:
        stop_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_local_run_finishes(local_run):
    out = local_run["out"]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def test_credentials_are_in_no_file_a_local_run_leaves(local_run):
    out, planted = local_run["out"], list(local_run["secrets"].values())
    assert out.returncode == 0, out.stderr[-3000:]
    ray_logs = list(local_run["ray_tmp"].rglob("runtime_env_agent.log"))
    assert ray_logs, "Ray's temp dir holds no logs: the grep below would prove nothing"
    assert files_holding([local_run["tmp"], local_run["ray_tmp"]], planted) == []
    assert not any(v in out.stdout + out.stderr for v in planted)


def test_console_shows_one_tick_line_per_tick_and_no_report_dumps(local_run):
    out = local_run["out"]
    console = out.stdout + out.stderr
    ticks = re.findall(r"\btick (\d+) \|", console)
    assert ticks == ["1", "2", "3"], console[-4000:]
    for dump in ("Reporting training result", "TrainingReport(", "Checkpoint successfully created"):
        assert dump not in console, dump
    assert len(console.splitlines()) < 40, console


def test_the_printed_checkpoint_folder_generates(local_run, tmp_path):
    out = local_run["out"]
    folder = Path(printed_checkpoint(out.stdout))
    assert folder.is_dir() and folder.name == "checkpoint-0000000048"
    for ref in (folder, folder / "checkpoint.pt", folder.parent):  # folder, file, run folder
        gen = subprocess.run([sys.executable, "-m", "cgsgan.generate", "--checkpoint", str(ref), "--seeds", "0",
                              "--out", str(tmp_path / ref.name)], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert gen.returncode == 0, gen.stderr[-2000:]
        assert (tmp_path / ref.name / "grid.png").exists()


def test_s3_run_gets_credentials_to_the_workers_and_writes_them_nowhere(s3_server, tmp_path):
    """Moto accepts any keys: planted ones are the only credentials the run has, and its checkpoints
    reach S3 (so the workers had them); no file of the run or of its Ray holds them."""
    ray_tmp = ray_tmpdir()
    planted = planted_secrets()
    env = launch_env(ray_tmp, tmp_path, {**s3_server.env(), **planted})
    args = [sys.executable, "orchestration/launch.py", *SHORT, "train.total_kimg=0.032", "storage=s3",
            f"storage.path=s3://{s3_server.bucket}/secret-test", f"output_dir={tmp_path / 'out'}", "name=s3secret"]
    try:
        out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        ref = printed_checkpoint(out.stdout)
        assert ref.startswith(f"s3://{s3_server.bucket}/secret-test/") and ref.endswith("checkpoint-0000000032")
        assert files_holding([tmp_path, ray_tmp], list(planted.values())) == []
        assert not any(v in out.stdout + out.stderr for v in planted.values())
        gen = subprocess.run([sys.executable, "-m", "cgsgan.generate", "--checkpoint", ref, "--seeds", "0",
                              "--out", str(tmp_path / "gen")], cwd=ROOT, env={**os.environ, **s3_server.env()},
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert gen.returncode == 0, gen.stderr[-2000:]
    finally:
        stop_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_broken_file_met_in_a_worker_is_not_retried(tmp_path):
    """The launcher's data check is skipped here (as when the driver's view of the data differs
    from the workers'): the worker meets the truncated image and the run ends after one attempt."""
    from cgsgan.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "heads", identities=4, views=4, resolution=64, seed=7)
    broken = data / "64" / "00006.png"
    broken.write_bytes(broken.read_bytes()[:150])
    ray_tmp = ray_tmpdir()
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf
        from orchestration.config import register, resolve, validate_launch
        from orchestration.cluster import connect_ray
        from orchestration.ray_trainer import build_trainer
        register()
        with initialize_config_dir(config_dir={str(ROOT / "orchestration" / "conf")!r}, version_base="1.3"):
            cfg = OmegaConf.to_object(compose("config", overrides=[
                "data=custom", "data.path={data}", "output_dir={tmp_path / 'out'}", "cluster.max_failures=2",
                "train.total_kimg=0.016", "train.tick_kimg=0.008"]))
        validate_launch(cfg)
        plan = resolve(cfg)
        connect_ray(cfg)
        try:
            result = build_trainer(cfg, plan).fit()
            print("RETURNED", json.dumps(result.return_value))
        except Exception as e:
            print("RAISED", type(e).__name__)
    """)
    try:
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=launch_env(ray_tmp, tmp_path, {}),
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    finally:
        stop_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    console = out.stdout + out.stderr
    assert console.count(ATTEMPT) == 1, console[-5000:]
    returned = next(line for line in out.stdout.splitlines() if line.startswith(("RETURNED", "RAISED")))
    assert returned.startswith("RETURNED"), console[-5000:]
    assert str(broken) in json.loads(returned.split(" ", 1)[1])["data_error"]
