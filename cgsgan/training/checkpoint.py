"""Full-state checkpoints written atomically: a temp file in the same folder, fsync, rename.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one. The payload holds only tensors and plain values (no pickled code), and is
loaded with weights_only=True.

One idea of "a checkpoint" for every command that reads one (`open_checkpoint`): a checkpoint
file, a checkpoint folder (what launch.py prints: `checkpoint-<nimg>/checkpoint.pt`), or a run
folder (its newest checkpoint that loads), each local or on S3 (`s3://bucket/...`; a custom
endpoint from $AWS_ENDPOINT_URL).

A run's checkpoints in storage (`RunCheckpoints`): which one a run resumes from and which may go.
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
        raise ValueError(f"{path}: not a readable cgsgan checkpoint ({_load_error(e)})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cgsgan checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


def _load_error(e: Exception) -> str:
    """torch's reason in one line, without its advice to retry with weights_only=False: advice
    nobody should follow for a file that is not a checkpoint of this project."""
    text = str(e)
    if "WeightsUnpickler error:" in text:  # torch's multi-line weights_only message
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    first = first.split(" Please use ", 1)[0]  # "... if you trust this class": it is not trusted
    if "weights_only" in first:
        first = "not a tensor-only pickle"
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Newest complete checkpoint in the trainer's local `folder` (temp files of interrupted
    writes are ignored)."""
    files = sorted(Path(folder).glob("checkpoint-*.pt"))
    return files[-1] if files else None


# --- where checkpoints live ----------------------------------------------------------------------
# The one definition of a checkpoint's name: the folder `checkpoint-<nimg>` (in storage, Ray
# Train's layout) holding CHECKPOINT_FILE, or the trainer's local file `checkpoint-<nimg>.pt`.
CHECKPOINT_FILE = "checkpoint.pt"
_NIMG = re.compile(r"checkpoint-(\d+)")


def checkpoint_name(nimg: int) -> str:
    return f"checkpoint-{nimg:010d}"


def checkpoint_nimg(path: str | Path) -> int:
    """The images trained of a checkpoint file or folder named by checkpoint_name (its inverse)."""
    return int(_NIMG.fullmatch(Path(path).stem).group(1))


def checkpoint_filesystem(uri: str, endpoint: str = ""):
    """(pyarrow filesystem, path in it) for a local path or a URI (s3://bucket/...). The one place
    an S3 filesystem is built: a custom endpoint (`endpoint`, else $AWS_ENDPOINT_URL) needs one;
    credentials come from the environment as for any AWS client."""
    import pyarrow.fs

    if "://" not in uri:
        return pyarrow.fs.LocalFileSystem(), str(Path(uri).absolute())
    scheme, rest = uri.split("://", 1)
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
    if scheme == "s3" and endpoint:
        from urllib.parse import urlparse

        e = urlparse(endpoint)
        fs = pyarrow.fs.S3FileSystem(
            endpoint_override=e.netloc or e.path, scheme=e.scheme or "http",
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), connect_timeout=5, request_timeout=30,
            retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=3))  # fmt: skip
        return fs, rest
    return pyarrow.fs.FileSystem.from_uri(uri)


class _Files:
    """A pyarrow filesystem seen through the few operations checkpoints need; paths are given
    as the caller wrote them (`prefix` + path in the filesystem)."""

    def __init__(self, uri: str, endpoint: str = "") -> None:
        import pyarrow.fs

        self._pafs = pyarrow.fs
        self.fs, _ = checkpoint_filesystem(uri, endpoint)
        self.prefix = uri.split("://", 1)[0] + "://" if "://" in uri else ""

    def _p(self, path: str) -> str:
        return path.removeprefix(self.prefix) if self.prefix else str(Path(path).absolute())

    def _info(self, path: str):
        return self.fs.get_file_info(self._p(path))

    def is_file(self, path: str) -> bool:
        return self._info(path).type == self._pafs.FileType.File

    def is_dir(self, path: str) -> bool:
        return self._info(path).type == self._pafs.FileType.Directory

    def size(self, path: str) -> int | None:
        info = self._info(path)
        return info.size if info.type == self._pafs.FileType.File else None

    def list(self, path: str, recursive: bool = True) -> list[str]:
        """Files below `path` (recursive), or its direct children of any kind (not recursive)."""
        sel = self._pafs.FileSelector(self._p(path), recursive=recursive, allow_not_found=True)
        base = path.rstrip("/")
        return [f"{base}/{i.path[len(self._p(path).rstrip('/')) + 1:]}" for i in self.fs.get_file_info(sel)
                if not recursive or i.type == self._pafs.FileType.File]

    def delete_dir(self, path: str) -> None:
        try:
            self.fs.delete_dir(self._p(path))
        except FileNotFoundError:
            pass

    def delete_file(self, path: str) -> None:
        try:
            self.fs.delete_file(self._p(path))
        except FileNotFoundError:
            pass

    def put(self, local: Path, path: str) -> None:
        """Copy the local file to `path` so that `path` is either absent or whole: an S3 object
        appears when its upload completes; a local file is written beside it and renamed."""
        parent = path.rsplit("/", 1)[0]
        # Locally the partial file is written beside the file's folder, which appears only with
        # the whole file in it (a folder holding only a partial file would read as a broken checkpoint).
        target = path if self.prefix else f"{parent}.partial"
        self.fs.create_dir(self._p(parent if self.prefix else parent.rsplit("/", 1)[0]), recursive=True)
        with open(local, "rb") as src, self.fs.open_output_stream(self._p(target)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if target != path:
            self.fs.create_dir(self._p(parent), recursive=True)
            self.fs.move(self._p(target), self._p(path))

    @contextlib.contextmanager
    def local(self, path: str) -> Iterator[Path]:
        """A local file with the content of `path` for as long as the context lasts (a local
        file is itself; a remote one is downloaded to a temp folder)."""
        if not self.prefix:
            if not Path(path).is_file():
                raise FileNotFoundError(f"checkpoint not found: {path}")
            yield Path(path)
            return
        tmp = Path(tempfile.mkdtemp(prefix="cgsgan-checkpoint-"))
        try:
            target = tmp / PurePosixPath(path).name
            with self.fs.open_input_stream(self._p(path)) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            yield target
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_candidates(ref: str, fs: _Files | None = None) -> list[str]:
    """The checkpoint files `ref` may mean, newest first: the file itself; a checkpoint folder's
    checkpoint.pt; or every checkpoint of a run folder (Ray's checkpoint-*/checkpoint.pt, the
    trainer's checkpoints/checkpoint-*.pt). Empty when there is none."""
    fs = fs or _Files(ref)
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
def _newest_that_loads(fs: _Files, candidates: list[str], load: Callable[[Path], object],
                       say: Callable[[str], None]) -> Iterator[tuple[str, Path] | None]:
    """The one "newest checkpoint that loads": (candidate, local file) of the first of
    `candidates` (newest first) that `load` accepts, None when none does. One that does not
    (missing, truncated, unreadable) is said once through `say` and skipped; nothing is deleted."""
    for cand in candidates:
        with contextlib.ExitStack() as stack:
            try:
                path = stack.enter_context(fs.local(cand))
                load(path)
            except (OSError, ValueError) as e:
                say(f"skipping checkpoint {cand}: {' '.join(str(e).split())}")
                continue
            yield cand, path
            return
    yield None


# URI schemes other packages resolve to a local folder (entry points of this group: name = the
# scheme, value = a function uri -> context manager yielding the folder). The project's
# orchestration registers MLflow's runs:/ and models:/ there; the core itself knows only folders,
# files and s3://.
CHECKPOINT_SOURCES = "cgsgan.checkpoint_sources"
# What the command lines' --checkpoint takes (cgsgan.generate, cgsgan.evaluate): open_checkpoint's refs.
CHECKPOINT_HELP = ("checkpoint file, checkpoint folder, or run folder (newest checkpoint); local or s3://; or an "
                   "MLflow model URI (runs:/<run_id>/generator, models:/<name>/<version>; the store: "
                   "$MLFLOW_TRACKING_URI, else ./outputs/mlflow.db)")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]+):/")


def checkpoint_source(ref: str) -> Callable[[str], contextlib.AbstractContextManager] | None:
    """The installed resolver of ref's URI scheme (None for paths, file:/ and s3://); a
    FileNotFoundError naming the scheme when no installed package resolves it."""
    m = _SCHEME.match(ref)
    if not m or m.group(1) in ("s3", "file"):
        return None
    from importlib.metadata import entry_points

    found = entry_points(group=CHECKPOINT_SOURCES, name=m.group(1))
    if not found:
        raise FileNotFoundError(f"{ref}: no installed package reads '{m.group(1)}:/' URIs (MLflow's runs:/ and "
                                "models:/ come with the orchestration extra: pip install -e '.[orchestration]')")
    return next(iter(found)).load()


@contextlib.contextmanager
def open_checkpoint(ref: str | Path, say: Callable[[str], None] = print) -> Iterator[Path]:
    """A local checkpoint file for `ref` (a file, a checkpoint folder or a run folder, local or
    s3://..., or a URI an installed checkpoint source resolves, such as an MLflow model's
    runs:/<run_id>/generator), for as long as the context lasts (a remote one is downloaded to a
    temp folder).

    For a run folder, the newest checkpoint that loads: one that does not (truncated, say) is
    said through `say` and skipped; nothing is deleted. FileNotFoundError when there is none.
    """
    ref = str(ref)
    if (source := checkpoint_source(ref)) is not None:
        with source(ref) as folder, open_checkpoint(folder, say) as path:
            yield path
        return
    fs = _Files(ref)
    candidates = checkpoint_candidates(ref, fs)
    if not candidates:
        raise FileNotFoundError(
            f"checkpoint not found: {ref} (give a checkpoint file, a checkpoint folder holding {CHECKPOINT_FILE}, "
            "or a run folder holding checkpoint-*/ folders)")
    if len(candidates) == 1:
        with fs.local(candidates[0]) as path:
            yield path
        return
    with _newest_that_loads(fs, candidates, load_checkpoint, say) as found:
        if found is None:
            raise ValueError(f"{ref}: none of its {len(candidates)} checkpoints loads")
        yield found[1]


class RunCheckpoints:
    """The checkpoints of one run in storage, `<run_uri>/checkpoint-<nimg>/checkpoint.pt` (local
    or s3://...): the one home of "which checkpoint do we resume from, and which may go".

    - Resume: the newest folder whose file loads (`resume`); what does not load is said and
      skipped, never deleted (it may be a transient read error).
    - Retention (`prune`): after a checkpoint has been written and found whole in storage, older
      folders beyond `keep` go. The checkpoint just written is never deleted, nor anything newer
      than it (a folder left by a skipped, unloadable checkpoint is passed over, then replaced
      by the replayed run's checkpoint of the same name, or pruned once older).
    """

    def __init__(self, run_uri: str, endpoint: str = "") -> None:
        self.uri = str(run_uri).rstrip("/")
        self._fs = _Files(self.uri, endpoint)

    def folder(self, nimg: int) -> str:
        return f"{self.uri}/{checkpoint_name(nimg)}"

    def folders(self) -> list[tuple[int, str]]:
        """(nimg, folder) of every checkpoint folder of the run, newest first, loadable or not."""
        found = []
        for child in self._fs.list(self.uri, recursive=False):
            m = _NIMG.fullmatch(PurePosixPath(child).name)
            if m:
                found.append((int(m.group(1)), child))
        return sorted(found, reverse=True)

    def resume(self, load: Callable[[Path], object], say: Callable[[str], None] = print) -> str | None:
        """Load (through `load`) the newest checkpoint of the run that loads; its folder, or None."""
        files = [f"{folder}/{CHECKPOINT_FILE}" for _, folder in self.folders()]
        with _newest_that_loads(self._fs, files, load, say) as found:
            return None if found is None else found[0].rsplit("/", 1)[0]

    def load(self, folder: str, load: Callable[[Path], object]) -> None:
        """Load the checkpoint of `folder` through `load`; raises what it raises."""
        with self._fs.local(f"{folder}/{CHECKPOINT_FILE}") as path:
            load(path)

    def upload(self, local: Path, nimg: int) -> str:
        """Store the local checkpoint file `local` (the trainer's, written whole) as the run's
        checkpoint at `nimg`; returns its folder. The file in storage is absent or whole at
        every moment (`_Files.put`); it counts as a checkpoint once `is_whole` says so."""
        folder = self.folder(nimg)
        self._fs.put(Path(local), f"{folder}/{CHECKPOINT_FILE}")
        return folder

    def is_whole(self, folder: str, size: int) -> bool:
        """Whether the stored checkpoint of `folder` has the `size` bytes written."""
        return self._fs.size(f"{folder}/{CHECKPOINT_FILE}") == size

    def prune(self, keep: int, newest: str) -> list[str]:
        """Delete the folders older than `newest` (a checkpoint just written and found whole) but
        the keep - 1 newest of them; returns the deleted ones."""
        names = [f for _, f in self.folders()]
        if newest not in names:
            return []
        older = names[names.index(newest) + 1:]
        gone = older[max(keep - 1, 0):]
        for folder in gone:
            self._fs.delete_dir(folder)
        return gone

    def delete_file(self, name: str) -> None:
        """Delete a file of the run folder (no error when it is not there)."""
        self._fs.delete_file(f"{self.uri}/{name}")


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
