"""What a run logs to MLflow about its configuration: a few params and the whole config as a file.

The params are what people filter, group and compare runs on: the ablation axes and the seed
(named as a sweep names them, so a plain launch and a sweep's trial are searched alike:
`params.camera_mode = 'd_none'`), the model preset, the run name and a hash of the training config
(two runs with the same hash trained with the same settings). Everything else is in the run's
`config.yaml` artifact. Why so few: MLflow's image chart card lists a run's params above its
picture, and the whole config (about 60 params) pushed the picture out of the card.
"""

from __future__ import annotations

import hashlib
import json

import yaml

from cgsgan.config import CGSGANConfig, to_dict
from orchestration.axes import AXIS_TABLE, SEED

# Each axis param -> the config key it reads: the sweep axes' table, and the seed.
AXIS_PARAMS = {**{a.name: a.key for a in AXIS_TABLE}, "seed": SEED[0]}


def _get(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values[part]
    return values


def config_hash(core: CGSGANConfig) -> str:
    """12 hex digits of the SHA-256 of the training config (model, data, loss, train) as JSON."""
    text = json.dumps(to_dict(core), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def preset(core: CGSGANConfig) -> str:
    """The model preset whose architecture the run has (tiny, ffhq512, ...), else <resolution>px."""
    from orchestration.model_logging import registered_name

    return registered_name(core).removeprefix("cgsgan-")


def run_params(core: CGSGANConfig, run_name: str) -> dict[str, str]:
    """The run's MLflow params: the axes and the seed, preset, run_name, config_hash."""
    values = to_dict(core)
    params = {name: str(_get(values, key)) for name, key in AXIS_PARAMS.items()}
    return {**params, "preset": preset(core), "run_name": run_name, "config_hash": config_hash(core)}


def config_yaml(config: dict) -> str:
    """A config (plain nested values) as the YAML text of the run's config.yaml, without anything
    that looks like a credential (as for params: orchestration.tracking.scrub)."""
    from orchestration.tracking import scrub

    def clean(d: dict) -> dict:
        return {k: clean(v) if isinstance(v, dict) else v for k, v in scrub(d).items()}

    return yaml.safe_dump(clean(json.loads(json.dumps(config, default=str))), sort_keys=False)
