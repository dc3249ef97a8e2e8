"""Full-state checkpoints written atomically: a temp file in the same folder, fsync, rename.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one. The payload holds only tensors and plain values (no pickled code), and is
loaded with weights_only=True.

One idea of "a checkpoint" for every command that reads one (`open_checkpoint`): a checkpoint
file, a checkpoint folder (what launch.py prints: `checkpoint-<nimg>/checkpoint.pt`), or a run
folder (its newest checkpoint that loads), each local or on S3 (`s3://bucket/...`; a custom
endpoint from $AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import torch

from cgsgan.atomic_file import atomic_torch_save

FORMAT = "cgsgan-checkpoint-v1"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    return atomic_torch_save({"format": FORMAT, **state}, path)


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


CHECKPOINT_FILE = "checkpoint.pt"  # inside a checkpoint folder (Ray Train's layout)
_NIMG = re.compile(r"checkpoint-(\d+)")


class _Local:
    """The local filesystem, with the three operations `open_checkpoint` needs."""

    def is_file(self, path: str) -> bool:
        return Path(path).is_file()

    def is_dir(self, path: str) -> bool:
        return Path(path).is_dir()

    def list(self, path: str) -> list[str]:
        return [str(p) for p in Path(path).rglob("*") if p.is_file()]

    @contextlib.contextmanager
    def local(self, path: str) -> Iterator[Path]:
        yield Path(path)


class _Remote:
    """A pyarrow filesystem (S3 and the like): files are downloaded to a temp folder to be read."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        self._pafs = pyarrow.fs
        scheme = uri.split("://", 1)[0]
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if scheme == "s3" and endpoint:
            from urllib.parse import urlparse

            e = urlparse(endpoint)
            self.fs = pyarrow.fs.S3FileSystem(endpoint_override=e.netloc or e.path, scheme=e.scheme or "http",
                                              region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
            self.root = uri.split("://", 1)[1]
        else:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)
        self.prefix = f"{scheme}://"

    def _info(self, path: str):
        return self.fs.get_file_info(path.removeprefix(self.prefix))

    def is_file(self, path: str) -> bool:
        return self._info(path).type == self._pafs.FileType.File

    def is_dir(self, path: str) -> bool:
        return self._info(path).type == self._pafs.FileType.Directory

    def list(self, path: str) -> list[str]:
        sel = self._pafs.FileSelector(path.removeprefix(self.prefix), recursive=True, allow_not_found=True)
        return [self.prefix + i.path for i in self.fs.get_file_info(sel) if i.type == self._pafs.FileType.File]

    @contextlib.contextmanager
    def local(self, path: str) -> Iterator[Path]:
        tmp = Path(tempfile.mkdtemp(prefix="cgsgan-checkpoint-"))
        try:
            target = tmp / PurePosixPath(path).name
            with self.fs.open_input_stream(path.removeprefix(self.prefix)) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            yield target
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_candidates(ref: str, fs=None) -> list[str]:
    """The checkpoint files `ref` may mean, newest first: the file itself; a checkpoint folder's
    checkpoint.pt; or every checkpoint of a run folder (Ray's checkpoint-*/checkpoint.pt, the
    trainer's checkpoints/checkpoint-*.pt). Empty when there is none."""
    fs = fs or (_Remote(ref) if "://" in ref else _Local())
    ref = ref.rstrip("/")
    if fs.is_file(ref):
        return [ref]
    if not fs.is_dir(ref):
        return []
    direct = f"{ref}/{CHECKPOINT_FILE}"
    if fs.is_file(direct):
        return [direct]
    found = []
    for f in fs.list(ref):
        rel = PurePosixPath(f[len(ref) + 1:])
        ray_layout = rel.name == CHECKPOINT_FILE and len(rel.parts) == 2 and _NIMG.fullmatch(rel.parts[0])
        trainer_layout = rel.suffix == ".pt" and _NIMG.fullmatch(rel.stem) and len(rel.parts) <= 2
        if ray_layout or trainer_layout:
            m = _NIMG.fullmatch(rel.parts[0] if ray_layout else rel.stem)
            found.append((int(m.group(1)), f))
    return [f for _, f in sorted(found, reverse=True)]


@contextlib.contextmanager
def open_checkpoint(ref: str | Path, say: Callable[[str], None] = print) -> Iterator[Path]:
    """A local checkpoint file for `ref` (a file, a checkpoint folder or a run folder, local or
    s3://...), for as long as the context lasts (a remote one is downloaded to a temp folder).

    For a run folder, the newest checkpoint that loads: one that does not (truncated, say) is
    said through `say` and skipped; nothing is deleted. FileNotFoundError when there is none.
    """
    ref = str(ref)
    fs = _Remote(ref) if "://" in ref else _Local()
    candidates = checkpoint_candidates(ref, fs)
    if not candidates:
        raise FileNotFoundError(
            f"checkpoint not found: {ref} (give a checkpoint file, a checkpoint folder holding {CHECKPOINT_FILE}, "
            "or a run folder holding checkpoint-*/ folders)")
    if len(candidates) == 1:
        with fs.local(candidates[0]) as path:
            yield path
        return
    for cand in candidates:
        with fs.local(cand) as path:
            try:
                load_checkpoint(path)
            except ValueError as e:
                say(f"skipping checkpoint {cand}: {e}")
                continue
            yield path
            return
    raise ValueError(f"{ref}: none of its {len(candidates)} checkpoints loads")


def load_generator(path: str | Path, ema: bool = True):
    """The (EMA) generator and config of a checkpoint file, for generation and evaluation."""
    from cgsgan.config import from_dict
    from cgsgan.models import build_generator

    state = load_checkpoint(path)
    cfg = from_dict(state["config"])
    G = build_generator(cfg.model)
    try:
        G.load_state_dict(state["G_ema" if ema else "G"])
    except RuntimeError as e:
        raise ValueError(f"{path}: generator weights do not fit the model in its config: {e}") from e
    return G.eval().requires_grad_(False), cfg
