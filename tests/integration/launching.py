"""What the integration tests need to launch `orchestration/launch.py` as a user does and read
what it leaves: the environment (a Ray temp dir of the test's own), planted credentials and where
they ended up, the checkpoint a run prints."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

# The tiny model on 32 synthetic identities x 2 views, a tick every 16 images: what every launch of
# the integration tests trains (each test adds its own schedule, storage and failure settings).
TINY_RUN = ["data.synthetic_identities=32", "data.synthetic_views=2", "train.batch_size=8", "train.tick_kimg=0.016",
            "train.metric_samples=16"]  # fmt: skip
ATTEMPT = "Attempting to start training worker group"


def planted_secrets() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20),
            "AWS_SESSION_TOKEN": secrets.token_hex(24), "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(12)}  # fmt: skip


def launch_env(ray_tmp: Path, tmp: Path, extra: dict) -> dict:
    env = {**os.environ, **extra, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1",
           "CGSGAN_DATA_CACHE": os.environ.get("CGSGAN_DATA_CACHE", str(tmp / "data-cache"))}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def files_holding(roots: list[Path], values: list[str]) -> list[str]:
    """Every file under `roots` whose bytes contain one of `values` (with the value found)."""
    hits = []
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                hits += [f"{p}: {v[:6]}..." for v in values if v.encode() in data]
    return hits


def printed_checkpoint(stdout: str) -> str:
    return next(line.split("checkpoint:", 1)[1].strip() for line in stdout.splitlines()
                if line.strip().startswith("checkpoint:") and "checkpoints:" not in line)
