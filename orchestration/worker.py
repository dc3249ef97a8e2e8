"""The Ray Train worker: one rank of the core trainer, wired to Ray checkpoints and MLflow.

Receives plain values only (the plan as a dict), rebuilds the typed config, resumes from the
newest checkpoint of the run that loads - the one `ray.train.get_checkpoint()` hands (restart after
a failure, or a resubmitted run), else the newest in storage - and reports once per tick on every
rank (ray.train.report is a barrier), attaching the checkpoint that rank 0 wrote on checkpoint
ticks. A broken dataset found while the trainer is built ends the run without a retry (the same
files fail the same way): the worker returns the error instead of raising it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import ray.train
import torch

from cgsgan.config import from_dict
from cgsgan.data.dataset import DataError, mark_shown
from cgsgan.training.trainer import Callbacks, Trainer

CHECKPOINT_FILE = "checkpoint.pt"


def quiet_ray_train_reports() -> None:
    """Ray Train logs every `ray.train.report` ("Reporting training result N: TrainingReport(...)",
    all metrics) and every checkpoint ("Checkpoint successfully created at: ...") at INFO on the
    console: two long lines per tick beside the tick line. Keep them to warnings and above."""
    from ray.train.v2._internal.execution import context, storage

    for name in (context.__file__, storage.__name__):  # the report logger is named after its file
        logging.getLogger(name).setLevel(logging.WARNING)


def resume(trainer: Trainer, ray_checkpoint, storage_uri: str, endpoint: str, name: str,
           say: Callable[[str], None] = print) -> str | None:
    """Load into `trainer` the newest checkpoint of run `name` that loads; returns where it came from.

    First the checkpoint Ray hands back (`ray_checkpoint`, may be None); if it does not load (a
    truncated file, say), the newest checkpoint in storage that does. What does not load is said
    once (through `say`) and skipped; nothing is deleted.
    """
    skipped: set[str] = set()
    if ray_checkpoint is not None:
        try:
            with ray_checkpoint.as_directory() as d:
                trainer.load(Path(d) / CHECKPOINT_FILE)
            return ray_checkpoint.path
        except (OSError, ValueError) as e:
            say(f"skipping checkpoint {ray_checkpoint.path}: {e}")
            skipped.add(Path(ray_checkpoint.path).name)
    return load_latest_from_storage(trainer, storage_uri, endpoint, name, skip=skipped, say=say)


def load_latest_from_storage(trainer: Trainer, storage_uri: str, endpoint: str, name: str,
                             skip: set[str] = frozenset(), say: Callable[[str], None] = print) -> str | None:
    """Load the newest checkpoint-*/checkpoint.pt of this run in storage into `trainer`.

    S3 objects appear whole or not at all, and a file that does not load is skipped (said through
    `say`), so a checkpoint interrupted mid-upload is never taken for a good one. Folders named in
    `skip` were tried already and are passed over silently.
    """
    import pyarrow.fs

    from orchestration.storage import ray_storage

    path, fs = ray_storage(storage_uri, endpoint)
    if fs is None:
        fs, path = pyarrow.fs.FileSystem.from_uri(path if "://" in path else Path(path).as_uri())
    run_dir = f"{path.rstrip('/')}/{name}"
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))
    except OSError:
        return None
    dirs = sorted((e.path for e in entries if e.base_name.startswith("checkpoint-") and e.base_name not in skip),
                  reverse=True)
    for d in dirs:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / CHECKPOINT_FILE
            try:
                pyarrow.fs.copy_files(f"{d}/{CHECKPOINT_FILE}", str(local), source_filesystem=fs,
                                      destination_filesystem=pyarrow.fs.LocalFileSystem())
                trainer.load(local)
            except (OSError, ValueError) as e:
                say(f"skipping checkpoint {d}: {e}")
                continue
        return d
    return None


def train_loop_per_worker(config: dict) -> dict | None:
    quiet_ray_train_reports()
    mark_shown(config.get("data_notices", []))  # the launcher printed them before Ray started
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = from_dict(config["core"])
    use_gpu = config["use_gpu"]
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    run_dir = Path(config["local_dir"]) / config["name"]

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
        dir_name = path.stem  # checkpoint-<nimg>
        with tempfile.TemporaryDirectory() as tmp:
            # A hard link avoids copying gigabytes; fall back to a copy across filesystems.
            target = Path(tmp) / CHECKPOINT_FILE
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=dir_name)
        if tracker is not None:
            tracker.set_tags({"checkpoint_uri": f"{config['storage_uri'].rstrip('/')}/{config['name']}/{dir_name}"})

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
        return {"data_error": str(e)}
    # Ray hands no checkpoint when the earlier run under this name ended in an error (e.g.
    # storage went away), and may hand one that does not load: then the newest one in storage
    # that loads is taken.
    say = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    source = resume(trainer, ray.train.get_checkpoint(), config["storage_uri"], config["storage_endpoint"],
                    config["name"], say=say)
    if source is not None and rank == 0:
        print(f"resumed from {source} at {trainer.cur_nimg / 1e3:.2f} kimg", flush=True)

    if rank == 0:
        from orchestration.tracking import Tracker, redact

        tracker = Tracker(config["tracking_uri"], config["experiment"], config["name"], config.get("artifact_root"))
        run_id = tracker.start(trainer.extra_state.get("mlflow_run_id"), params=config["params"],
                               tags={"storage_path": config["storage_uri"], **config.get("tags", {})})
        trainer.extra_state["mlflow_run_id"] = run_id
        print(f"MLflow run {run_id} ({redact(config['tracking_uri'])})", flush=True)
    from orchestration.system_metrics import WorkerSystemMetrics

    system = WorkerSystemMetrics(config["tracking_uri"], config["experiment"], config["name"], rank,
                                 config.get("system_metrics_interval_s", 10.0), tracker and tracker.run_id).start()
    try:
        trainer.run()
    except BaseException:
        system.stop()
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    system.stop()
    if tracker is not None:
        from orchestration.model_logging import log_trained_generator

        log_trained_generator(tracker, trainer)  # runs:/<run_id>/generator (registered with a server)
        tracker.finish()
    return None
