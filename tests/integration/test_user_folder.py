"""The main job as a user runs it from their own folder, with the defaults (local storage and
SQLite tracking under ./outputs) and a dataset named by relative paths: it trains (the paths are
resolved on the driver, not in Ray's worker folder), and the model-URI commands the docs show run
as written there; from another folder the command the run printed works, and the bare one says
in one line which store it looked in. No command leaves an MLflow database behind in its folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.procs import ray_tmpdir, stop_ray

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["model=tiny", "data=custom", "data.path=heads", "data.index_list=heads.json", "data.xflip=false",
         "train.batch_size=8", "loss.num_views=2", "train.total_kimg=0.016", "train.tick_kimg=0.016",
         "train.snapshot_ticks=1", "train.checkpoint_ticks=1", "train.snapshot_metrics=[]",
         "train.feature_extractor=random"]  # fmt: skip


def docs_text() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def documented_python(text: str) -> str:
    """The documented Python block that loads the generator by its run URI."""
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks if 'mlflow.pyfunc.load_model("runs:/<run_id>/generator")' in b]
    assert found, "no documented mlflow.pyfunc.load_model block"
    return "\n".join(line.strip() for line in found[0].splitlines())  # as typed (it may sit in a list item)


def documented_command(text: str, start: str) -> list[str]:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith(start)), None)
    assert line, f"no documented command starting {start!r}"
    return shlex.split(line.split("  #")[0])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One launch from the user's folder with relative data paths and the defaults otherwise."""
    from cgsgan.data.synthetic import generate_synthetic

    home = tmp_path_factory.mktemp("user")
    generate_synthetic(home / "heads", identities=4, views=2, resolution=64, seed=3)
    (home / "heads.json").write_text(json.dumps([0, 1, 2, 3, 4, 5, 6, 7]))
    ray_tmp = ray_tmpdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1",
           "CGSGAN_DATA_CACHE": os.environ.get("CGSGAN_DATA_CACHE", str(home / "cache"))}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        out = subprocess.run([sys.executable, str(ROOT / "orchestration" / "launch.py"), *TRAIN], cwd=home, env=env,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    finally:
        stop_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    return home, env, out.stdout


def test_a_launch_with_relative_data_paths_from_the_users_folder_trains(finished_run):
    home, _, stdout = finished_run
    name = re.search(r"^run (\S+)$", stdout, re.M).group(1)
    assert re.search(r"\btick \d+ \|", stdout) and "\ndone." in stdout, stdout[-3000:]
    assert (home / "outputs" / "runs" / name / "metrics.jsonl").exists()
    assert not (home / "mlflow.db").exists()


def test_the_documented_model_uri_commands_run_as_written(finished_run, tmp_path):
    home, env, stdout = finished_run
    model = re.search(r"^  model: +(runs:/(\w+)/generator)", stdout, re.M)
    assert model, stdout[-3000:]
    run_id, run = model.group(2), re.search(r"^run (\S+)$", stdout, re.M).group(1)
    text = docs_text()

    def as_written(args: list[str]) -> list[str]:
        args = [a.replace("<run_id>", run_id).replace("<run>", run) for a in args]
        return [sys.executable, *args[1:]] if args[0].endswith("python") else args

    # In the folder the launch ran in (as the repository root for the main job).
    python = documented_python(text).replace("<run_id>", run_id)
    loaded = subprocess.run([sys.executable, "-c", python + "\nprint(images.shape)"], cwd=home, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert loaded.returncode == 0 and "(2, 64, 64, 3)" in loaded.stdout, loaded.stderr[-3000:]
    for start in (".venv/bin/python -m cgsgan.generate --checkpoint runs:/",
                  ".venv/bin/python -m orchestration.model_logging log"):
        done = subprocess.run(as_written(documented_command(text, start)), cwd=home, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, (start, done.stderr[-3000:])
    assert (home / "samples" / "grid.png").exists()

    # From another folder: the command the run printed (with its store) works; the bare one says
    # in one line where it looked and how to name another store.
    printed = re.search(r"^  from model: +(.+)$", stdout, re.M).group(1)
    assert printed.startswith("MLFLOW_TRACKING_URI=sqlite:///") and f"--checkpoint runs:/{run_id}/generator" in printed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(printed.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and (elsewhere / "samples" / "grid.png").exists(), done.stderr[-3000:]
    bare = subprocess.run(as_written(documented_command(text, ".venv/bin/python -m cgsgan.generate --checkpoint runs:/")),
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1, bare.stderr[-3000:]
    assert "no MLflow store here" in bare.stderr and "MLFLOW_TRACKING_URI=" in bare.stderr
    assert not list(elsewhere.glob("mlflow.db")) and not (home / "mlflow.db").exists()
