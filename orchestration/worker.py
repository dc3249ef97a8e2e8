"""The Ray Train worker: one rank of the core trainer, wired to Ray checkpoints and MLflow.

Receives plain values only (the plan as a dict), rebuilds the typed config, resumes from
`ray.train.get_checkpoint()` when Ray hands one (restart after a failure, or a resubmitted run),
and reports once per tick on every rank (ray.train.report is a barrier), attaching the
checkpoint that rank 0 wrote on checkpoint ticks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import ray.train
import torch

from cgsgan.config import from_dict
from cgsgan.training.trainer import Callbacks, Trainer

CHECKPOINT_FILE = "checkpoint.pt"


def load_latest_from_storage(trainer: Trainer, storage_uri: str, endpoint: str, name: str) -> str | None:
    """Load the newest checkpoint-*/checkpoint.pt of this run in storage into `trainer`.

    S3 objects appear whole or not at all, and a file that does not load is skipped, so a
    checkpoint interrupted mid-upload is never taken for a good one.
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
    dirs = sorted((e.path for e in entries if e.base_name.startswith("checkpoint-")), reverse=True)
    for d in dirs:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / CHECKPOINT_FILE
            try:
                pyarrow.fs.copy_files(f"{d}/{CHECKPOINT_FILE}", str(local), source_filesystem=fs,
                                      destination_filesystem=pyarrow.fs.LocalFileSystem())
                trainer.load(local)
            except (OSError, ValueError) as e:
                print(f"skipping {d}: {e}", flush=True)
                continue
        return d
    return None


def train_loop_per_worker(config: dict) -> None:
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
        for key in ("artifacts/grid", "artifacts/turntable", "artifacts/ply"):
            if key in info:
                tracker.log_artifact(info[key], "samples")

    trainer = Trainer(cfg, run_dir, rank=rank, world_size=world, device=device,
                      callbacks=Callbacks(on_tick=on_tick, on_snapshot=on_snapshot, on_checkpoint=on_checkpoint))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load(Path(d) / CHECKPOINT_FILE)
        source = checkpoint.path
    else:
        # Ray hands no checkpoint when the earlier run under this name ended in an error (e.g.
        # storage went away): fall back to the newest complete checkpoint in storage.
        source = load_latest_from_storage(trainer, config["storage_uri"], config["storage_endpoint"], config["name"])
    if source is not None and rank == 0:
        print(f"resumed from {source} at {trainer.cur_nimg / 1e3:.2f} kimg", flush=True)

    if rank == 0:
        from orchestration.tracking import Tracker

        tracker = Tracker(config["tracking_uri"], config["experiment"], config["name"], config.get("artifact_root"))
        run_id = tracker.start(trainer.extra_state.get("mlflow_run_id"), params=config["params"],
                               tags={"storage_path": config["storage_uri"], **config.get("tags", {})})
        trainer.extra_state["mlflow_run_id"] = run_id
        print(f"MLflow run {run_id} ({config['tracking_uri']})", flush=True)
    try:
        trainer.run()
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    if tracker is not None:
        tracker.finish()
