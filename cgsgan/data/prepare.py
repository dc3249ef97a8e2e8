"""Where the training data comes from: the user's folder, or the built-in synthetic heads,
generated once per machine into a cache (`$CGSGAN_DATA_CACHE`, default ~/.cache/cgsgan)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cgsgan.config import CGSGANConfig, DataSource
from cgsgan.data.synthetic import YAW_LIMIT, YAW_STD, generate_synthetic


def cache_root() -> Path:
    return Path(os.environ.get("CGSGAN_DATA_CACHE", Path.home() / ".cache" / "cgsgan"))


def synthetic_data_dir(cfg: CGSGANConfig) -> Path:
    d = cfg.data
    spread = "" if (d.synthetic_yaw_std, d.synthetic_yaw_limit) == (YAW_STD, YAW_LIMIT) else \
        f"-yaw{d.synthetic_yaw_std:g}-{d.synthetic_yaw_limit:g}"  # fmt: skip
    return cache_root() / (f"synthetic-{cfg.model.resolution}px-{d.synthetic_identities}x{d.synthetic_views}"
                           f"-seed{d.synthetic_seed}{spread}")  # fmt: skip


def prepare_data(cfg: CGSGANConfig) -> Path:
    """The dataset folder: the user's, or the built-in synthetic heads (generated once)."""
    if cfg.data.source == DataSource.folder:
        return Path(cfg.data.path)
    out = Path(cfg.data.path) if cfg.data.path else synthetic_data_dir(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Several workers on one node may get here at once: one generates, the others wait.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        d = cfg.data
        generate_synthetic(out, d.synthetic_identities, d.synthetic_views, cfg.model.resolution, d.synthetic_seed,
                           d.synthetic_yaw_std, d.synthetic_yaw_limit)  # fmt: skip
    return out
