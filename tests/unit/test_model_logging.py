"""The EMA generator as an MLflow model (orchestration/model_logging.py, generator_model.py),
against a local SQLite store: logged to a run, loaded by its runs:/ URI in a fresh process
outside the repository, registered as cgsgan-<preset>, and read by cgsgan.generate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from cgsgan import config as core
from cgsgan.config import CameraMode, to_dict
from cgsgan.models import build_generator
from orchestration.model_logging import MODEL_PATH, log_generator, registered_name
from orchestration.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]
LOAD = """
import mlflow, numpy as np, pandas as pd, sys
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"seed": [3, 3, 3], "yaw": [0.0, 0.0, 40.0]}))
assert isinstance(out, np.ndarray) and out.dtype == np.uint8, (type(out), getattr(out, "dtype", None))
print(out.shape, int(np.abs(out[0].astype(int) - out[1]).max()), float(np.abs(out[0].astype(int) - out[2]).mean()))
"""


def test_the_generator_is_a_model_loadable_by_its_run_uri_in_a_fresh_process(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "cgsgan", "run-m", (tmp_path / "mlartifacts").as_uri())
    run_id = tracker.start()
    cfg = core.tiny()
    torch.manual_seed(0)
    G = build_generator(cfg.model)
    model_uri = log_generator(tracker.client, run_id, to_dict(cfg), G.state_dict(), 48, register=True)
    assert model_uri == f"runs:/{run_id}/{MODEL_PATH}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out = subprocess.run([sys.executable, "-c", LOAD, model_uri], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    shape, same, turned = out.stdout.split(")")[0] + ")", *out.stdout.split(")")[1].split()
    assert shape == "(3, 64, 64, 3)"
    assert int(same) == 0 and float(turned) > 1.0  # a seed and yaw give one image; another yaw another
    versions = tracker.client.search_model_versions("name='cgsgan-tiny'")
    assert [(v.version, v.run_id, v.source) for v in versions] == [(1, run_id, model_uri)]

    # cgsgan.generate takes the model URI as its checkpoint: the orchestration extra resolves runs:/
    # for the core (an entry point), and the core reads the downloaded folder as a folder of checkpoints.
    gen = subprocess.run([sys.executable, "-m", "cgsgan.generate", "--checkpoint", model_uri,
                          "--out", str(tmp_path / "samples"), "--seeds", "0-1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert (tmp_path / "samples" / "grid.png").stat().st_size > 1000
    missing = subprocess.run([sys.executable, "-m", "cgsgan.generate", "--checkpoint", f"runs:/{'0' * 32}/generator",
                              "--out", str(tmp_path / "none")], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert missing.returncode == 2 and f"runs:/{'0' * 32}/generator" in missing.stderr, missing.stderr[-2000:]


def test_the_core_reads_model_uris_only_through_an_installed_source():
    import pytest

    from cgsgan.training.checkpoint import checkpoint_source, open_checkpoint
    from orchestration.model_logging import downloaded

    assert checkpoint_source("runs:/abc/generator") is downloaded  # the orchestration extra's entry point
    assert checkpoint_source("models:/cgsgan-tiny/1") is downloaded
    assert checkpoint_source("s3://bucket/run") is None and checkpoint_source("outputs/runs/x") is None
    with pytest.raises(FileNotFoundError, match=r"no installed package reads 'gs:/' URIs"):
        with open_checkpoint("gs://bucket/run"):
            pass


def test_models_register_under_their_preset_and_only_with_a_server():
    tiny = core.tiny()
    tiny.model.camera_mode = CameraMode.d_none  # an ablation axis: still the tiny preset
    assert registered_name(tiny) == "cgsgan-tiny"
    assert registered_name(core.ffhq(512)) == "cgsgan-ffhq512"
    odd = core.tiny()
    odd.model.generator.num_levels += 1
    assert registered_name(odd) == "cgsgan-64px"


def test_model_uri_commands_find_the_default_local_store_or_say_where_they_looked(tmp_path, monkeypatch, capsys):
    """Without MLFLOW_TRACKING_URI the project's commands read the launcher's default store
    (./outputs/mlflow.db), never MLflow's own default (./mlflow.db, which it would create empty);
    where there is none they say in one line where they looked and how to name another."""
    from cgsgan import generate
    from orchestration import model_logging

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"runs:/{'0' * 32}/generator"
    assert generate.main(["--checkpoint", uri, "--out", "samples"]) == 2
    assert model_logging.main(["log", "--checkpoint", "outputs/runs/x", "--run-id", "0" * 32]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("error: no MLflow store here") for ln in lines), lines
    assert str(tmp_path / "outputs" / "mlflow.db") in lines[0] and "MLFLOW_TRACKING_URI=" in lines[0]
    assert not list(tmp_path.rglob("mlflow.db"))



def test_the_end_of_run_summary_does_not_wait_on_a_tracking_server_that_is_gone():
    """The driver's last lines look up the logged model; with the server gone that is one short try,
    not MLflow's retries (about 4 minutes of "Retrying ..." lines after training had ended)."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", "import sys; from orchestration.model_logging import logged_model_uri; "
                          f"print(logged_model_uri({dead!r}, 'cgsgan', 'run'))"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    waited = time.monotonic() - t0
    assert out.returncode == 0 and out.stdout.strip() == "None", out.stderr[-2000:]
    assert "Retrying" not in out.stderr and waited < 30, (waited, out.stderr[-2000:])
