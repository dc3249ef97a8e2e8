"""Entry point: `python orchestration/launch.py [hydra overrides]`, locally or via `ray job submit`.

config (Hydra, typed) -> validate -> check storage -> Ray (existing cluster or a local one)
-> TorchTrainer.fit() -> print where checkpoints, samples and the MLflow run are.
Nothing reaches Ray before the config and the storage have been checked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Runnable as a script from the repo root (python orchestration/launch.py) without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from cgsgan.config import ConfigError  # noqa: E402
from orchestration.config import LaunchConfig, Plan, register, resolve, validate_launch  # noqa: E402
from orchestration.storage import StorageError, check_storage  # noqa: E402

register()


def to_launch_config(cfg: DictConfig) -> LaunchConfig:
    try:
        return OmegaConf.to_object(cfg)  # typed dataclasses, all interpolations resolved
    except Exception as e:  # missing mandatory values (???) and the like
        raise ConfigError(str(e).splitlines()[0]) from e


def prepare(cfg: LaunchConfig) -> Plan:
    """Validate, resolve names and paths, check storage, make the data: no cluster resources yet."""
    validate_launch(cfg)
    plan = resolve(cfg)
    check_storage(plan.storage_path, cfg.storage.endpoint_url, cfg.storage.create_bucket)
    make_local_data(cfg, plan)
    return plan


def make_local_data(cfg: LaunchConfig, plan: Plan) -> None:
    """On a local Ray, generate the synthetic heads once here rather than racing in every worker
    (on a cluster each node makes its own copy in its cache)."""
    if cfg.cluster.kind == "local" and cfg.data.source == "synthetic":
        from cgsgan.config import from_dict
        from cgsgan.training.trainer import prepare_data

        prepare_data(from_dict(plan.core))


# Ray starts its workers at nice 15 so that its own daemons stay responsive. On a node that is
# there to train, every other process then preempts the training threads, and each of torch's
# parallel ops waits for its slowest thread: a training step in a nice-15 Ray worker took 3.2x
# as long as the same step in a plain process on 2 cores (1.06x at nice 0; see
# benchmarks/results/orchestration.md). Every Ray node this project starts runs workers at 0.
WORKER_NICENESS = 0
TRAINING_NODE_ENV = {"RAY_worker_niceness": str(WORKER_NICENESS)}  # for `ray start`


def connect_ray(cfg: LaunchConfig, extra_cpus: int = 0) -> None:
    """Connect to the configured cluster, or start a local Ray. `extra_cpus` adds logical CPUs to
    a local Ray for processes that hold a sliver of CPU but do no work (Tune's trial drivers)."""
    import ray

    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None
    if cfg.cluster.kind == "ray" and address is None:
        raise ConfigError("cluster.kind=ray needs cluster.address or $RAY_ADDRESS (or run under `ray job submit`)")
    if ray.is_initialized():
        return
    if address is None:
        # The dashboard serves the state API that Ray Train's controller polls.
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", _system_config={"worker_niceness": WORKER_NICENESS},
                 num_cpus=(os.cpu_count() or 1) + extra_cpus if extra_cpus else None)
    else:
        ray.init(address=address)


def run(cfg: LaunchConfig) -> int:
    try:
        plan = prepare(cfg)
    except (ConfigError, StorageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run {plan.name}\n  checkpoints: {plan.storage_path}/{plan.name}\n  mlflow: {plan.tracking_uri}", flush=True)
    if cfg.cluster.kind == "slurm":
        from orchestration.slurm import submit

        job = submit(cfg, plan.name, plan.output_dir)
        print(f"  follow: squeue -j {job.job_id}; tail -f {job.paths.stdout}")
        return 0
    connect_ray(cfg)
    from orchestration.ray_trainer import build_trainer

    result = build_trainer(cfg, plan).fit()
    samples = Path(plan.output_dir) / "runs" / plan.name / "samples"
    print("\ndone.")
    print(f"  checkpoint:  {result.checkpoint.path if result.checkpoint else None}")
    print(f"  samples:     {samples} (grid-*.png, turntable.gif, sample-seed0.ply)")
    print(f"  metrics:     {Path(plan.output_dir) / 'runs' / plan.name / 'metrics.jsonl'}")
    print(f"  MLflow run:  experiment '{cfg.tracking.experiment}', run name '{plan.name}' at {plan.tracking_uri}")
    if plan.tracking_uri.startswith("sqlite:"):
        print(f"  look:        mlflow ui --backend-store-uri {plan.tracking_uri}")
    if result.error:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    return 0


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(dcfg: DictConfig) -> None:
    try:
        cfg = to_launch_config(dcfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
