"""Entry point: `python orchestration/launch.py [hydra overrides]`, locally or via `ray job submit`.

config (Hydra, typed) -> validate -> check storage -> check the dataset -> Ray (existing cluster or
a local one) -> TorchTrainer.fit() -> print where checkpoints, samples and the MLflow run are.
Nothing reaches Ray before the config, the storage and the data have been checked: a bad value or
a broken file ends the launch with one line naming it (exit 2).
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
from cgsgan.data.dataset import DataError  # noqa: E402
from orchestration.config import (  # noqa: E402
    LaunchConfig,
    Plan,
    register,
    resolve,
    resolve_index_list,
    validate_launch,
)
from orchestration.storage import StorageError, check_storage  # noqa: E402
from orchestration.tracking import redact  # noqa: E402

register()


def to_launch_config(cfg: DictConfig) -> LaunchConfig:
    try:
        return OmegaConf.to_object(cfg)  # typed dataclasses, all interpolations resolved
    except Exception as e:  # missing mandatory values (???) and the like
        raise ConfigError(str(e).splitlines()[0]) from e


def prepare(cfg: LaunchConfig) -> Plan:
    """Validate, resolve names and paths, check storage, check (or make) the data: no cluster
    resources yet. data.index_list=auto is resolved in `cfg` (the list's path, or "")."""
    validate_launch(cfg)
    ray_address(cfg)
    resolve_index_list(cfg, say=lambda line: print(line, file=sys.stderr, flush=True))
    plan = resolve(cfg)
    check_storage(plan.storage_path, cfg.storage.endpoint_url, cfg.storage.create_bucket)
    plan.data_notices = check_data(cfg)
    make_local_data(cfg, plan)
    return plan


def check_data(cfg: LaunchConfig) -> list[str]:
    """A dataset folder or zip is checked here, before Ray: labels, index list, every image header,
    and the pixels (all of them when cheap, else a sample; the summary line says which). Raises
    DataError naming the file. Returns what the check said (already on stderr) for the workers."""
    if cfg.data.source != "folder":
        return []  # the synthetic heads are generated and checked by this code
    from cgsgan.data.dataset import check_dataset

    notices = check_dataset(cfg.data.path, resolution=cfg.model.resolution, index_list=cfg.data.index_list or None,
                            background=cfg.loss.background)
    print(f"data: {notices[-1]}", flush=True)
    return notices[:-1]


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


def ray_address(cfg: LaunchConfig) -> str | None:
    """The Ray to connect to (None: start one here); ConfigError when cluster.kind=ray has none."""
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None
    if cfg.cluster.kind == "ray" and address is None:
        raise ConfigError("cluster.kind=ray needs cluster.address or $RAY_ADDRESS (or run under `ray job submit`)")
    return address


def connect_ray(cfg: LaunchConfig, extra_cpus: int = 0) -> None:
    """Connect to the configured cluster, or start a local Ray. `extra_cpus` adds logical CPUs to
    a local Ray for processes that hold a sliver of CPU but do no work (Tune's trial drivers)."""
    import ray

    address = ray_address(cfg)
    if ray.is_initialized():
        return
    if address is None:
        # The dashboard serves the state API that Ray Train's controller polls.
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", _system_config={"worker_niceness": WORKER_NICENESS},
                 num_cpus=(os.cpu_count() or 1) + extra_cpus if extra_cpus else None)
    else:
        ray.init(address=address)


def one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split())


def run(cfg: LaunchConfig) -> int:
    try:
        plan = prepare(cfg)
    except (ConfigError, StorageError, DataError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"run {plan.name}\n  checkpoints: {plan.storage_path}/{plan.name}\n  mlflow: {redact(plan.tracking_uri)}",
          flush=True)
    if cfg.cluster.kind == "slurm":
        from orchestration.slurm import submit

        job = submit(cfg, plan.name, plan.output_dir)
        print(f"  follow: squeue -j {job.job_id}; tail -f {job.paths.stdout}")
        return 0
    connect_ray(cfg)
    return train(cfg, plan)


def checkpoint_uri(plan: Plan, path: str) -> str:
    """What `python -m cgsgan.generate --checkpoint` takes: a local path, or s3://bucket/... (Ray
    reports S3 paths without the scheme when it is given a filesystem)."""
    if plan.storage_path.startswith("s3://") and "://" not in path:
        return f"s3://{path.lstrip('/')}"
    return path


def train(cfg: LaunchConfig, plan: Plan) -> int:
    """Fit the TorchTrainer on the connected Ray; print where everything is. Exit code: 0 done,
    1 training failed (one line: the root cause), 2 a broken data file (one line naming it)."""
    from ray.train import ControllerError, TrainingFailedError

    from orchestration.ray_trainer import DataErrorStop, build_trainer

    try:
        result = build_trainer(cfg, plan).fit()
    except ControllerError as e:
        cause = e.controller_failure
        if isinstance(cause, DataErrorStop):  # a broken file read mid-run: not retried
            print(f"error: {one_line(cause)}", file=sys.stderr)
            return 2
        print(f"error: training failed: {root_cause(e)}", file=sys.stderr)
        return 1
    except TrainingFailedError as e:
        print(f"error: training failed: {root_cause(e)}", file=sys.stderr)
        return 1
    returned = result.return_value if isinstance(result.return_value, dict) else {}
    if "data_error" in returned:  # a broken file found while the workers built the dataset: not retried
        print(f"error: {one_line(returned['data_error'])}", file=sys.stderr)
        return 2
    samples = Path(plan.output_dir) / "runs" / plan.name / "samples"
    checkpoint = checkpoint_uri(plan, result.checkpoint.path) if result.checkpoint else None
    print("\ndone.")
    print(f"  checkpoint:  {checkpoint}")
    print(f"  samples:     {samples} (grid-*.png, turntable.gif, sample-seed0.ply)")
    print(f"  metrics:     {Path(plan.output_dir) / 'runs' / plan.name / 'metrics.jsonl'}")
    print(f"  MLflow run:  experiment '{cfg.tracking.experiment}', run name '{plan.name}' at {redact(plan.tracking_uri)}")
    if plan.tracking_uri.startswith("sqlite:"):
        print(f"  look:        mlflow ui --backend-store-uri {plan.tracking_uri}")
    if checkpoint:
        print(f"  generate:    python -m cgsgan.generate --checkpoint {checkpoint} --out samples --turntable --ply")
    if result.error:
        print(f"error: training failed: {root_cause(result.error)}", file=sys.stderr)
        return 1
    return 0


def root_cause(error: BaseException) -> str:
    """The last line of the innermost traceback Ray carries (e.g. "ValueError: ..."), else the error."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, failure = sorted(failures.items())[0]
        lines = [ln for ln in str(failure).splitlines() if ln.strip()]
        return f"rank {rank}: {lines[-1].strip() if lines else type(failure).__name__}"
    cause = getattr(error, "controller_failure", None) or error
    return one_line(f"{type(cause).__name__}: {cause}")


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
