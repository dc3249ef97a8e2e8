"""Build the Ray Train TorchTrainer for a resolved plan: the one code path of a launch
(cluster.train_on_ray, which launch.py reaches through cluster.launch) and of every trial of
sweeps/ablate.py."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

from cgsgan.config import from_dict, to_dict
from cgsgan.data.dataset import DataError
from cgsgan.render.backends import BackendUnavailable
from cgsgan.training.checkpoint import RunCheckpoints
from orchestration.config import LaunchConfig, Plan, StorageKind
from orchestration.console import QUIET_ENV
from orchestration.storage import ray_storage, s3_endpoint
from orchestration.worker import train_loop_per_worker
from orchestration.worker_spec import WorkerSpec

# Settings (never credentials) that workers may need, passed through Ray's runtime env only when
# the run's storage / tracking choice needs them. Ray's runtime-env agent writes every variable it
# is given into its log, readable by every user of the node: AWS keys, session tokens and MLflow
# passwords are therefore never passed. Workers of a Ray started by launch.py inherit them from the
# driver's environment; on a cluster each node has its own (instance profile, IRSA, or the
# environment `ray start` ran in - as the SLURM job does).
S3_ENV = ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
TRACKING_ENV = ("MLFLOW_S3_ENDPOINT_URL",)  # only for an MLflow server without proxied artifacts
DATA_ENV = ("CGSGAN_DATA_CACHE",)


def worker_env(plan: Plan) -> dict[str, str]:
    keys = list(DATA_ENV)
    if plan.storage_kind == StorageKind.s3:
        keys += S3_ENV
    if plan.tracking_server:
        keys += TRACKING_ENV
    env = {k: os.environ[k] for k in keys if k in os.environ}
    # Workers on a cluster do not inherit the driver's environment: keep their console as quiet.
    env.update({k: os.environ.get(k, v) for k, v in QUIET_ENV.items()})
    # Train V2 patches print() in workers to also log through its logger, which Ray streams to
    # the driver a second time: every tick line showed up twice. Ray's own streaming is enough.
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    return env


class DataErrorStop(RuntimeError):
    """A worker failed on a broken dataset file: deterministic, so the run stops without a retry."""


class StopOnDataError(UserCallback):
    """Ray Train retries any worker failure up to `max_failures` times; a broken data file (a
    `DataError`, e.g. a truncated image read on demand mid-run) fails the same way every time.
    Raising from this controller callback turns it into a controller error, which Ray does not retry.
    Decided by the exception's type (the worker re-raises a DataError found in a failure's cause
    chain as one), never by text in a traceback. (A DataError while the trainer is built never
    gets here: the worker returns it.)"""

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        for rank, error in sorted(worker_exceptions.items()):
            cause = getattr(error, "_base_exc", error)  # Ray wraps it with its traceback text
            if isinstance(cause, DataError):
                raise DataErrorStop(f"rank {rank}: {cause}")


class GpuFailureStop(RuntimeError):
    """A worker failed in a way no retry changes (CUDA out of memory, a render backend that cannot run)."""


class StopOnDeterministicGpuFailure(UserCallback):
    """CUDA running out of memory at the configured batch and a render backend that cannot run on
    the node (gsplat without its compiled kernels) fail the same way on every retry; Ray Train
    would repeat the start and the resume from storage `max_failures` times. Stopped like a data
    error (see StopOnDataError), by the exception's type."""

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        for rank, error in sorted(worker_exceptions.items()):
            cause = getattr(error, "_base_exc", error)
            if isinstance(cause, torch.cuda.OutOfMemoryError):
                first = str(cause).strip().splitlines()[0] if str(cause).strip() else "CUDA out of memory"
                raise GpuFailureStop(f"rank {rank}: {first} (not retried: the same batch fails the same way; "
                                     "lower train.batch_gpu)")
            if isinstance(cause, BackendUnavailable):
                raise GpuFailureStop(f"rank {rank}: {cause} (not retried)")


def worker_spec(cfg: LaunchConfig, plan: Plan, tags: dict | None = None) -> WorkerSpec:
    """What every worker is given. `tags` go onto the MLflow run (e.g. the sweep's parent run id
    and axis values)."""
    return WorkerSpec(
        core=from_dict(plan.core),
        name=plan.name,
        use_gpu=cfg.cluster.use_gpu,
        local_dir=str(plan.run_dir.parent),
        storage_uri=plan.storage_path,
        storage_endpoint=s3_endpoint(cfg.storage.endpoint_url) or "",
        num_to_keep=cfg.storage.num_to_keep,
        outage_s=cfg.storage.outage_s,
        tracking_uri=plan.tracking_uri,
        experiment=cfg.tracking.experiment,
        system_metrics_interval_s=cfg.tracking.system_metrics_interval_s,
        artifact_root=plan.artifact_root,
        cluster=to_dict(cfg.cluster),
        tags={k: str(v) for k, v in (tags or {}).items()},
        data_notices=list(plan.data_notices),
        data_checked=plan.data_checked,
    )


def forget_ray_run_snapshot(spec: WorkerSpec) -> None:
    """Delete Ray's run snapshot (checkpoint_manager_snapshot.json) of the run before a fit.

    Ray restores its checkpoint list from that file and refuses to start
    (CheckpointManagerInitializationError) when it is corrupt or names a folder that is gone -- a
    folder pruned by this project, deleted by a user, or lost in a crash. The project never needs
    it: workers resume from the newest checkpoint in storage that loads (RunCheckpoints).
    """
    RunCheckpoints(spec.run_uri, spec.storage_endpoint).delete_file(CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)


def build_trainer(
    cfg: LaunchConfig, plan: Plan, extra_callbacks: list | None = None, tags: dict | None = None
) -> TorchTrainer:
    c = cfg.cluster
    resources = {"CPU": c.cpus_per_worker}
    if c.use_gpu:
        resources["GPU"] = c.gpus_per_worker
    spec = worker_spec(cfg, plan, tags)
    forget_ray_run_snapshot(spec)
    storage_path, storage_fs = ray_storage(plan.storage_path, cfg.storage.endpoint_url)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.to_dict(),
        scaling_config=ScalingConfig(num_workers=c.num_workers, use_gpu=c.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if c.use_gpu else "gloo"),
        run_config=RunConfig(
            name=plan.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=c.max_failures),
            # Retention is the project's (RunCheckpoints.prune, run by rank 0 after each
            # checkpoint), not Ray's: Ray 2.60's CheckpointManager tracks checkpoints by folder
            # path, so a checkpoint replayed under the name of a skipped, unloadable one is tracked
            # twice, and evicting the stale entry deletes the folder -- the fresh checkpoint --
            # while its snapshot still lists it; it also never checks that what it keeps loads.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=[StopOnDataError(), StopOnDeterministicGpuFailure(), *(extra_callbacks or [])],
            worker_runtime_env={"env_vars": worker_env(plan)},
        ),
    )
