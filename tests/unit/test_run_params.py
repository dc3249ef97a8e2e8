"""A run's MLflow params are the few that runs are filtered and grouped on; the whole config is
its config.yaml."""

from __future__ import annotations

import dataclasses

import yaml

from cgsgan.config import CameraMode, tiny, to_dict
from orchestration.run_params import config_hash, config_yaml, run_params


def test_params_are_the_axes_seed_preset_name_and_hash():
    cfg = tiny()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, camera_mode=CameraMode.d_none))
    params = run_params(cfg, "run-a")
    assert params == {"views": str(cfg.loss.num_views), "grad_averaging": str(cfg.loss.grad_averaging),
                      "camera_mode": "d_none", "background": str(cfg.loss.background.value),
                      "seed": str(cfg.train.seed), "preset": "tiny", "run_name": "run-a",
                      "config_hash": config_hash(cfg)}  # fmt: skip
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + 1))
    assert len(params["config_hash"]) == 12 and config_hash(other) != params["config_hash"]


def test_the_config_file_holds_everything_but_credentials():
    cfg = tiny()
    text = config_yaml({**to_dict(cfg), "storage": {"path": "s3://u:p@host/b", "secret_key": "x"}})
    back = yaml.safe_load(text)
    assert back["train"]["seed"] == cfg.train.seed and back["model"]["camera_mode"] == cfg.model.camera_mode.value
    assert back["storage"] == {"path": "s3://***@host/b"}
