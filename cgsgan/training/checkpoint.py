"""Full-state checkpoints written atomically: a temp file in the same folder, fsync, rename.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one. The payload holds only tensors and plain values (no pickled code), and is
loaded with weights_only=True.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "cgsgan-checkpoint-v1"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path}: not a readable cgsgan checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cgsgan checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Newest complete checkpoint in `folder` (temp files of interrupted writes are ignored)."""
    files = sorted(Path(folder).glob("checkpoint-*.pt"))
    return files[-1] if files else None
