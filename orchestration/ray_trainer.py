"""Build the Ray Train TorchTrainer for a resolved plan: the one code path used by launch.py
and by every trial of sweeps/ablate.py."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from orchestration.config import LaunchConfig, Plan
from orchestration.storage import ray_storage
from orchestration.worker import train_loop_per_worker

# Environment that workers need on a cluster that did not inherit the driver's env.
PASSTHROUGH_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_S3_ENDPOINT_URL",
    "CGSGAN_DATA_CACHE",
)  # fmt: skip


def worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    # Train V2 patches print() in workers to also log through its logger, which Ray streams to
    # the driver a second time: every tick line showed up twice. Ray's own streaming is enough.
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    return env


def worker_config(cfg: LaunchConfig, plan: Plan, tags: dict | None = None) -> dict:
    """Plain values handed to every worker. `tags` go onto the MLflow run (e.g. the sweep's
    parent run id and axis values)."""
    params = {**plan.core, "cluster": dataclasses.asdict(cfg.cluster),
              "storage": {"path": plan.storage_path, "num_to_keep": cfg.storage.num_to_keep}}  # fmt: skip
    return {
        "core": plan.core,
        "name": plan.name,
        "use_gpu": cfg.cluster.use_gpu,
        "local_dir": str(Path(plan.output_dir) / "runs"),
        "storage_uri": plan.storage_path,
        "storage_endpoint": cfg.storage.endpoint_url,
        "tracking_uri": plan.tracking_uri,
        "experiment": cfg.tracking.experiment,
        "artifact_root": (Path(plan.output_dir) / "mlartifacts").as_uri() if not cfg.tracking.uri else None,
        "params": params,
        "tags": dict(tags or {}),
    }


def build_trainer(
    cfg: LaunchConfig, plan: Plan, extra_callbacks: list | None = None, tags: dict | None = None
) -> TorchTrainer:
    c = cfg.cluster
    resources = {"CPU": c.cpus_per_worker}
    if c.use_gpu:
        resources["GPU"] = c.gpus_per_worker
    storage_path, storage_fs = ray_storage(plan.storage_path, cfg.storage.endpoint_url)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_config(cfg, plan, tags),
        scaling_config=ScalingConfig(num_workers=c.num_workers, use_gpu=c.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if c.use_gpu else "gloo"),
        run_config=RunConfig(
            name=plan.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=c.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.num_to_keep),
            callbacks=extra_callbacks,
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )
