"""The Ray Train worker: one rank of the core trainer, wired to Ray checkpoints and MLflow.

Receives a `WorkerSpec` as plain values, rebuilds it, resumes from the newest checkpoint of the
run in storage that loads (`RunCheckpoints`: rank 0 picks it, every rank loads the same one), and
reports once per tick on every rank (ray.train.report is a barrier), attaching the checkpoint
that rank 0 wrote on checkpoint ticks; then rank 0 prunes old checkpoint folders (the project's
retention, not Ray's: see ray_trainer.build_trainer). A broken dataset found while the trainer is
built ends the run without a retry (the same files fail the same way): the worker returns the
error instead of raising it; one met mid-run is raised as a DataError, which the controller
callback stops on (ray_trainer.StopOnDataError).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import ray.train
import torch

from cgsgan.data.dataset import DataError, mark_shown
from cgsgan.training.checkpoint import CHECKPOINT_FILE, RunCheckpoints
from cgsgan.training.ticks import kimg_text
from cgsgan.training.trainer import Callbacks, Trainer
from orchestration.console import quiet_worker_loggers
from orchestration.worker_spec import WorkerSpec


@dataclass
class WorkerResult:
    """What rank 0 returns to the driver (as plain values): why the run ended without training."""

    data_error: str = ""  # a broken data file found while the trainer was built
    complete_nimg: int | None = None  # the run had already reached train.total_kimg: images trained


def resume(trainer: Trainer, store: RunCheckpoints, rank: int = 0, world: int = 1,
           say: Callable[[str], None] = print) -> str | None:
    """Load into `trainer` the newest checkpoint of the run that loads; returns its folder.

    Rank 0 picks it (what does not load is said once through `say` and skipped) and every other
    rank loads the same folder, so that all ranks start from one state. Ray's own
    `ray.train.get_checkpoint()` is not consulted: it names the newest checkpoint reported in
    this fit, which is the newest folder in storage anyway, and storage is the one record that
    survives a relaunch.
    """
    folder = store.resume(trainer.load, say=say) if rank == 0 else None
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        chosen = [folder]
        torch.distributed.broadcast_object_list(chosen, src=0)
        folder = chosen[0]
        if rank != 0 and folder is not None:
            store.load(folder, trainer.load)
    return folder


def data_error_in(error: BaseException) -> DataError | None:
    """The DataError `error` is, or was raised from (its cause / context chain)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DataError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def train_loop_per_worker(config: dict) -> dict | None:
    quiet_worker_loggers()
    spec = WorkerSpec.from_dict(config)
    mark_shown(spec.data_notices)  # the launcher printed them before Ray started
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = spec.core
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if spec.use_gpu else torch.device("cpu")
    if spec.use_gpu:
        torch.cuda.set_device(device)
    run_dir = Path(spec.local_dir) / spec.name
    store = RunCheckpoints(spec.run_uri, spec.storage_endpoint)

    tracker = None
    pending: dict = {}
    trainer: Trainer | None = None

    def on_checkpoint(path: Path | None, stats: dict) -> None:
        pending["path"] = path

    def on_tick(stats: dict) -> None:
        path = pending.pop("path", None)
        metrics = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not k.startswith("time/")}
        if tracker is not None:
            step = int(round(stats["progress/kimg"] * 1000))
            tracker.log_metrics(metrics, step=step, timestamp_ms=int(time.time() * 1000))
        if path is None:
            ray.train.report(metrics)
            return
        dir_name = path.stem  # checkpoint-<nimg> (cgsgan.training.checkpoint.checkpoint_name)
        with tempfile.TemporaryDirectory() as tmp:
            # A hard link avoids copying gigabytes; fall back to a copy across filesystems.
            target = Path(tmp) / CHECKPOINT_FILE
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=dir_name)
        # The report returned once the checkpoint was uploaded; only a checkpoint found whole in
        # storage lets older ones go.
        folder = f"{store.uri}/{dir_name}"
        if spec.num_to_keep and store.is_whole(folder, path.stat().st_size):
            store.prune(spec.num_to_keep, newest=folder)
        if tracker is not None:
            tracker.set_tags({"checkpoint_uri": folder})

    def on_snapshot(info: dict) -> None:
        if tracker is None:
            return
        if info["progress/kimg"] == 0:  # the untrained generator: the start of the metric curves
            metrics = {k: v for k, v in info.items() if k.startswith("metrics/")}
            tracker.log_metrics(metrics, step=0, timestamp_ms=int(time.time() * 1000))
        tracker.log_snapshot(info)  # the grid as a step image; the sample files as artifacts

    try:
        trainer = Trainer(cfg, run_dir, rank=rank, world_size=world, device=device,
                          callbacks=Callbacks(on_tick=on_tick, on_snapshot=on_snapshot, on_checkpoint=on_checkpoint))
    except DataError as e:
        # Every rank reads the same files and fails the same way: a retry would too. Returning
        # (rather than raising) ends the run without one; the driver reports rank 0's value.
        return asdict(WorkerResult(data_error=str(e)))
    say = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    source = resume(trainer, store, rank, world, say=say)
    if trainer.cur_nimg >= int(cfg.train.total_kimg * 1000):
        # Nothing to train: the driver says so, with how to go on (no MLflow run is touched).
        return asdict(WorkerResult(complete_nimg=trainer.cur_nimg))
    if source is not None and rank == 0:
        print(f"resumed from {source} at {kimg_text(trainer.cur_nimg / 1e3)} kimg", flush=True)

    if rank == 0:
        from orchestration.tracking import Tracker, redact

        tracker = Tracker(spec.tracking_uri, spec.experiment, spec.name, spec.artifact_root)
        run_id = tracker.start(trainer.extra_state.get("mlflow_run_id"), params=spec.mlflow_params(),
                               tags={"storage_path": spec.storage_uri, **spec.tags})
        trainer.extra_state["mlflow_run_id"] = run_id
        from orchestration.run_params import config_yaml

        tracker.log_config(config_yaml(spec.full_config()))  # the params are a few; the whole config is this file
        print(f"MLflow run {run_id} ({redact(spec.tracking_uri)})", flush=True)
    from orchestration.system_metrics import WorkerSystemMetrics

    system = WorkerSystemMetrics(spec.tracking_uri, spec.experiment, spec.name, rank, spec.system_metrics_interval_s,
                                 tracker and tracker.run_id).start()
    try:
        trainer.run()
    except BaseException as e:
        system.stop()
        if tracker is not None:
            tracker.finish("FAILED")
        found = data_error_in(e)
        if found is not None and found is not e:
            # The controller decides "no retry" by the exception's type (StopOnDataError); a
            # DataError wrapped on its way up must reach it as one.
            raise DataError(str(found)) from e
        raise
    system.stop()
    if tracker is not None:
        from orchestration.model_logging import log_trained_generator

        log_trained_generator(tracker, trainer)  # runs:/<run_id>/generator (registered with a server)
        tracker.finish()
    return None
