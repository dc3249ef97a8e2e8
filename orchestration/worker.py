"""The Ray Train worker: one rank of the core trainer, wired to Ray checkpoints and MLflow.

Receives a `WorkerSpec` as plain values, rebuilds it, resumes from the newest checkpoint of the
run in storage that loads (`RunCheckpoints`: rank 0 picks it, every rank loads the same one), and
reports once per tick on every rank (ray.train.report is a barrier). Nothing on the training path
waits on a service: MLflow calls go through a tracking queue (orchestration.tracking_queue: a
spool in the run folder and a sender thread), and the checkpoints rank 0 writes to local disk are
uploaded by a background uploader (orchestration.checkpoint_upload), which also keeps the
project's retention in storage and on local disk. Storage that stays unreachable beyond
storage.outage_s stops the run (the worker returns the uploader's line). A broken dataset found while the trainer is
built ends the run without a retry (the same files fail the same way): the worker returns the
error instead of raising it; one met mid-run is raised as a DataError, which the controller
callback stops on (ray_trainer.StopOnDataError).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import ray.train
import ray.train.torch
import torch

from cgsgan.data.dataset import DataError, mark_shown
from cgsgan.training.checkpoint import RunCheckpoints
from cgsgan.training.ticks import kimg_text, metric_stats
from cgsgan.training.trainer import Callbacks, Trainer
from orchestration.checkpoint_upload import CheckpointUploader, StorageOutage
from orchestration.console import quiet_worker_loggers
from orchestration.worker_spec import WorkerResult, WorkerSpec

if TYPE_CHECKING:
    from orchestration.tracking import Tracker


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


class Reporting:
    """The trainer's callbacks in a worker. Every rank reports each tick to Ray (a barrier) and
    stops at the same tick when the uploader gave up; rank 0 also logs to MLflow and hands its
    checkpoints to the uploader. Its tracker and uploader arrive once the run is resumed (before
    the first tick): None on other ranks."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.tracker: Tracker | None = None
        self.uploader: CheckpointUploader | None = None

    def callbacks(self) -> Callbacks:
        return Callbacks(on_tick=self.on_tick, on_snapshot=self.on_snapshot, on_checkpoint=self.on_checkpoint)

    def on_checkpoint(self, path: Path | None, stats: dict) -> None:
        if path is not None:
            self.uploader.submit(path)  # staged whole on local disk: uploaded while training goes on

    def on_tick(self, stats: dict) -> None:
        metrics = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not k.startswith("time/")}
        if self.tracker is not None:
            self.tracker.log_progress(metrics, stats["progress/kimg"])
        stop = [self.uploader.failure if self.uploader is not None else None]
        if self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(stop, src=0)  # every rank stops at the same tick
        if stop[0]:
            raise StorageOutage(stop[0])
        ray.train.report(metrics)

    def on_snapshot(self, info: dict) -> None:
        if self.tracker is None:
            return
        if info["progress/kimg"] == 0:  # the untrained generator: the start of the metric curves
            self.tracker.log_progress(metric_stats(info), 0.0)
        self.tracker.log_snapshot(info)  # the grid as a step image; the sample files as artifacts


def train_loop_per_worker(config: dict) -> dict | None:
    quiet_worker_loggers()
    spec = WorkerSpec.from_dict(config)
    mark_shown(spec.data_notices)  # the launcher printed them before Ray started
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = spec.core
    # Ray's device for this worker: the GPU Ray assigned it, whatever CUDA_VISIBLE_DEVICES holds
    # (not cuda:<local rank>, which is another worker's GPU when a worker holds several).
    device = ray.train.torch.get_device() if spec.use_gpu else torch.device("cpu")
    if spec.use_gpu:
        torch.cuda.set_device(device)
    run_dir = Path(spec.local_dir) / spec.name
    store = RunCheckpoints(spec.run_uri, spec.storage_endpoint)

    reporting = Reporting(world)
    try:
        trainer = Trainer(cfg, run_dir, rank=rank, world_size=world, device=device, data_checked=spec.data_checked,
                          callbacks=reporting.callbacks())
    except DataError as e:
        # Every rank reads the same files and fails the same way: a retry would too. Returning
        # (rather than raising) ends the run without one; the driver reports rank 0's value.
        return asdict(WorkerResult(data_error=str(e)))
    say = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    source = resume(trainer, store, rank, world, say=say)
    from orchestration.tracking_queue import TrackingQueue, quiet_http, spool_name

    # The queue opens the run folder's spool: calls a run before this one left unsent go first.
    queue = TrackingQueue(run_dir / spool_name(rank), spec.tracking_uri, say=say).start()
    if trainer.cur_nimg >= trainer.total_nimg:
        # Nothing to train: the driver says so, with how to go on (no MLflow run is touched
        # beyond what an earlier launch left to send).
        queue.close()
        return asdict(WorkerResult(complete_nimg=trainer.cur_nimg))
    if source is not None and rank == 0:
        print(f"resumed from {source} at {kimg_text(trainer.cur_nimg / 1e3)} kimg", flush=True)

    tracker = uploader = None
    if rank == 0:
        from orchestration.tracking import PROGRESS_METRIC, Tracker, redact

        tracker = Tracker(spec.tracking_uri, spec.experiment, spec.name, spec.artifact_root)
        run_id = tracker.start(trainer.extra_state.get("mlflow_run_id"), params=spec.mlflow_params(),
                               tags={"storage_path": spec.storage_uri, **spec.tags})
        from orchestration.run_params import config_yaml

        # The params are a few; the whole config is this file. Logged while the run is created
        # (that step talks to the server directly anyway): it asks what the run already holds.
        tracker.log_config(config_yaml(spec.full_config()))
        tracker.logged_through = max(tracker.logged_through, queue.last_step(run_id, PROGRESS_METRIC))
        tracker.client = queue.client  # from here on, every call of the run goes through the queue
        trainer.extra_state["mlflow_run_id"] = run_id
        print(f"MLflow run {run_id} ({redact(spec.tracking_uri)})", flush=True)
        uploader = CheckpointUploader(store, Path(trainer.checkpoint_path()).parent, spec.num_to_keep,
                                      spec.outage_s, newest_stored=source,
                                      on_stored=lambda folder: tracker.set_tags({"checkpoint_uri": folder}))  # fmt: skip
        reporting.tracker, reporting.uploader = tracker, uploader
    quiet_http()  # short, unretried requests: a server that does not answer holds up no thread for long
    from orchestration.system_metrics import WorkerSystemMetrics

    system = WorkerSystemMetrics(spec.tracking_uri, spec.experiment, spec.name, rank, spec.system_metrics_interval_s,
                                 tracker and tracker.run_id, client=queue.client).start()
    result = WorkerResult()
    try:
        trainer.run()
        if uploader is not None:
            uploader.finish()  # the last checkpoint whole on storage before the run counts as done
            result.checkpoint = uploader.newest_stored or ""
    except StorageOutage as e:
        system.stop()
        if tracker is not None:
            tracker.finish("FAILED")
        queue.close()
        return asdict(WorkerResult(storage_outage=str(e)))
    except BaseException as e:
        system.stop()
        if tracker is not None:
            tracker.finish("FAILED")
        queue.close(timeout_s=10)
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
    queue.close()
    return asdict(result)
