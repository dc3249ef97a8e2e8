"""A sweep's identity is its question, not only its name.

The question is what the sweep trains and compares: its axes, seeds, design, trial subset and
metrics (sweep.*) and the configuration every trial starts from (model, data, loss, train). It is
recorded beside the sweep's results (<output_dir>/sweeps/<name>/question.json) when the sweep
starts. The same command asks the same question and resumes the sweep; another question under an
existing name is refused before anything starts, with the differences and how to name it, since
resuming would restore the old trials (Tune keeps the parameter space it started with) and write
their results over the finished sweep's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cgsgan.config import ConfigError, to_dict

QUESTION_FILE = "question.json"
# How a sweep runs, not what it asks: changing these (or the layout, orchestration.config.LAYOUT,
# or the cluster) resumes the same sweep, whose trials keep the settings they started with.
NOT_IN_QUESTION = ("name", "max_concurrent", "minutes_per_trial")


def question(cfg) -> dict[str, Any]:
    """The sweep's question as flat keys (sweep.views, train.total_kimg, ...) and plain values.
    `cfg` is a SweepConfig with its paths resolved."""
    from orchestration.config import LAYOUT, core_config

    asked = {f"sweep.{k}": v for k, v in to_dict(cfg.sweep).items() if k not in NOT_IN_QUESTION}
    asked.update({k: v for k, v in _flat(to_dict(core_config(cfg))).items() if k.removeprefix("train.") not in LAYOUT})
    return json.loads(json.dumps(asked))  # as it reads back from the file


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(recorded: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    missing = "(unset)"
    return [f"{key}: {recorded.get(key, missing)} -> {asked.get(key, missing)}"
            for key in sorted(recorded.keys() | asked.keys()) if recorded.get(key, missing) != asked.get(key, missing)]


def check_question(cfg, folder: Path) -> None:
    """ConfigError (one line) when the sweep recorded in `folder` asked another question than `cfg`."""
    file = folder / QUESTION_FILE
    if not file.exists():
        return
    diff = differences(json.loads(file.read_text()), question(cfg))
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(f"sweep.name={cfg.sweep.name}: {folder} holds a sweep of that name that asked another "
                          f"question ({shown}); give this one its own name with sweep.name=<name> (that sweep's "
                          "own command resumes it)")


def record_question(cfg, folder: Path) -> None:
    """Record `cfg`'s question for the sweep starting in `folder` (kept when there is one)."""
    file = folder / QUESTION_FILE
    if not file.exists():
        folder.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(question(cfg), indent=1, sort_keys=True) + "\n")
