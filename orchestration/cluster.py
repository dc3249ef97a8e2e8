"""From a typed launch config to training on a Ray cluster: the one path that orchestration/launch.py
(a training run), sweeps/ablate.py (every trial of a sweep) and a SLURM job (orchestration/slurm.py,
running whichever of the two submitted it) take.

    prepare(cfg)             validate, check the GPU set-up, resolve names and paths, check storage, check (or make)
                             the data
    connect_ray(cfg)         the configured Ray (cluster.kind=ray), or a local one (cluster.kind=local)
    run_as_job(...)          cluster.kind=slurm: the entry runs as a SLURM job, on a Ray it starts there
    train_on_ray(cfg, plan)  build the TorchTrainer, fit it, say where everything is
    launch(cfg)              all of it for one training run; returns the exit code

Nothing reaches Ray before the config, the storage and the data have been checked: a bad value or
a broken file ends the launch with one line naming it (exit 2).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from cgsgan.config import ConfigError, DataSource, RenderBackend
from cgsgan.data.dataset import DataError
from orchestration.config import (
    ClusterKind,
    LaunchConfig,
    Plan,
    core_config,
    resolve,
    resolve_index_list,
    resolve_paths,
    validate_launch,
)
from orchestration.console import LOCAL_RAY_ENV, quiet_console
from orchestration.ray_nodes import WORKER_NICENESS
from orchestration.storage import StorageError, check_storage
from orchestration.tracking import redact
from orchestration.worker_spec import WorkerResult

# What `prepare` raises for a launch that must not start: one line, exit code 2.
PREPARE_ERRORS = (ConfigError, StorageError, DataError, ValueError)


def one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split())


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- before any cluster resources ---------------------------------------------------------------


def prepare(cfg: LaunchConfig) -> Plan:
    """Validate, resolve names and paths, check storage, check (or make) the data: no cluster
    resources yet. Its paths are made absolute and data.index_list=auto is resolved in `cfg` (the
    list's path, or "")."""
    validate_launch(resolve_paths(cfg))
    ray_address(cfg)
    check_gpu(cfg)
    resolve_index_list(cfg, say=say)
    plan = resolve(cfg)
    check_storage(plan.storage_path, cfg.storage.endpoint_url, cfg.storage.create_bucket)
    plan.data_notices = check_data(cfg)
    plan.data_checked = cfg.data.source == DataSource.folder  # check_data read every header
    make_local_data(cfg)
    return plan


def check_gpu(cfg: LaunchConfig) -> None:
    """A GPU run renders with gsplat: its compiled kernels must load here (ConfigError, one line
    saying what to install) rather than fail in every worker on every retry. A local launch told
    not to use the GPUs this machine has says so. (cluster.kind=slurm: checked in the job.)"""
    c, backend = cfg.cluster, cfg.train.render_backend
    if c.kind == ClusterKind.slurm:
        return
    if c.use_gpu and backend in (RenderBackend.auto, RenderBackend.gsplat):
        from cgsgan.render.backends import gsplat_kernels

        if why := gsplat_kernels():
            raise ConfigError(f"cluster.use_gpu=true renders with gsplat (train.render_backend={backend.value}): {why}")
    elif c.use_gpu and backend == RenderBackend.native:
        raise ConfigError("train.render_backend=native runs on the CPU only; with cluster.use_gpu=true use gsplat "
                          "(auto) or torch")
    elif not c.use_gpu and c.kind == ClusterKind.local:
        import torch

        if torch.cuda.is_available():
            say(f"note: this machine has {torch.cuda.device_count()} CUDA GPU(s) but cluster.use_gpu=false: training "
                "on the CPU (cluster.use_gpu=true trains on the GPUs)")


def check_data(cfg: LaunchConfig) -> list[str]:
    """A dataset folder or zip is checked here, before Ray: labels, index list, every image header,
    and the pixels (all of them when cheap, else a sample; the summary line says which). Raises
    DataError naming the file. Returns what the check said (already on stderr) for the workers."""
    if cfg.data.source != DataSource.folder:
        return []  # the synthetic heads are generated and checked by this code
    from cgsgan.data.dataset import check_dataset

    notices = check_dataset(cfg.data.path, resolution=cfg.model.resolution, index_list=cfg.data.index_list or None,
                            background=cfg.loss.background)
    print(f"data: {notices[-1]}", flush=True)
    return notices[:-1]


def make_local_data(cfg: LaunchConfig) -> None:
    """On a local Ray, generate the synthetic heads and train the synthetic-heads feature extractor
    once here, with their progress lines on this console, rather than inside a worker at the
    first snapshot (on a cluster each node makes its own copy in its cache)."""
    if cfg.cluster.kind != ClusterKind.local:
        return
    if cfg.data.source == DataSource.synthetic:
        from cgsgan.data.prepare import prepare_data

        prepare_data(core_config(cfg))
    if cfg.train.feature_extractor == "synthetic":
        from cgsgan.data.prepare import cache_root
        from cgsgan.metrics.extractor import ensure_synthetic_extractor

        ensure_synthetic_extractor(cache_root())


# --- the cluster ----------------------------------------------------------------------------------


def ray_address(cfg: LaunchConfig) -> str | None:
    """The Ray to connect to (None: start one here); ConfigError when cluster.kind=ray has none."""
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None
    if cfg.cluster.kind == ClusterKind.ray and address is None:
        raise ConfigError("cluster.kind=ray needs cluster.address or $RAY_ADDRESS (or run under `ray job submit`)")
    return address


def connect_ray(cfg: LaunchConfig, extra_cpus: int = 0) -> None:
    """Connect to the configured cluster, or start a local Ray (workers at nice WORKER_NICENESS).
    `extra_cpus` adds logical CPUs to a local Ray for processes that hold a sliver of CPU but do no
    work (Tune's trial drivers)."""
    import ray

    quiet_console()
    address = ray_address(cfg)
    if ray.is_initialized():
        return
    if address is None:
        # A local launch talks only to the Ray it starts. Ray's state API (which Ray Train's
        # placement-group cleaner and controller poll, from processes of this Ray) finds "the" Ray
        # of the host by scanning its processes unless told where to go, and fails ("Found multiple
        # active Ray instances") on a host where another Ray runs. Those processes inherit this
        # environment, so it names this Ray's dashboard (which serves that API) on a port chosen here.
        port = free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 _system_config={"worker_niceness": WORKER_NICENESS},
                 num_cpus=(os.cpu_count() or 1) + extra_cpus if extra_cpus else None)
    else:
        ray.init(address=address)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_as_job(cfg: LaunchConfig, job_name: str, entry: Callable[[Any], int], driver_cpus: int = 0,
               what: str = "") -> int | None:
    """Where cluster.kind is a batch system (slurm), submit a job that starts Ray on its allocation
    and runs `entry(cfg)` there with cluster.kind=ray at that Ray's address (`entry` is pickled
    by reference: a module-level function such as `launch`), and return 0 once submitted
    (`driver_cpus`: logical CPUs added to its Ray head for drivers that hold a sliver). Elsewhere
    None: the caller connects (`connect_ray`) and runs here."""
    if cfg.cluster.kind != ClusterKind.slurm:
        return None
    from orchestration.slurm import submit

    if what:
        print(f"{what}, as one SLURM job", flush=True)
    job = submit(cfg, job_name, entry, driver_cpus=driver_cpus)
    print(f"  follow: squeue -j {job.job_id}; tail -f {job.paths.stdout}", flush=True)
    return 0


# --- training -------------------------------------------------------------------------------------


def train_on_ray(cfg: LaunchConfig, plan: Plan) -> int:
    """Build and fit the TorchTrainer on the connected Ray; print where everything is. Exit code:
    0 done, 1 training failed (one line: the root cause), 2 a broken data file (one line naming it)."""
    from ray.train import ControllerError, TrainingFailedError

    from orchestration import ray_trainer

    try:
        result = ray_trainer.build_trainer(cfg, plan).fit()
    except ControllerError as e:
        cause = e.controller_failure
        if isinstance(cause, ray_trainer.DataErrorStop):  # a broken file read mid-run: not retried
            print(f"error: {one_line(cause)}", file=sys.stderr)
            return 2
        print(f"error: training failed: {root_cause(e)}", file=sys.stderr)
        return 1
    except TrainingFailedError as e:
        print(f"error: training failed: {root_cause(e)}", file=sys.stderr)
        return 1
    returned = WorkerResult.read(result.return_value)
    if returned.data_error:  # a broken file found while the workers built the dataset: not retried
        print(f"error: {one_line(returned.data_error)}", file=sys.stderr)
        return 2
    if returned.storage_outage:  # storage gone beyond storage.outage_s: stopped, the line says where things are
        print(f"error: {one_line(returned.storage_outage)}", file=sys.stderr)
        return 1
    if returned.complete_nimg is not None:
        print(complete_message(plan, cfg.train.total_kimg, returned.complete_nimg))
        return 0
    samples = plan.run_dir / "samples"
    # The workers upload checkpoints themselves (orchestration.checkpoint_upload): rank 0 returns the newest.
    checkpoint = returned.checkpoint or None
    print("\ndone.")
    print(f"  checkpoint:  {checkpoint}")
    print(f"  samples:     {samples} (grid-*.png, turntable.gif, sample-seed0.ply)")
    print(f"  metrics:     {plan.run_dir / 'metrics.jsonl'}")
    print(f"  MLflow run:  experiment '{cfg.tracking.experiment}', run name '{plan.name}' at {redact(plan.tracking_uri)}")
    if not plan.tracking_server:
        print(f"  look:        mlflow ui --backend-store-uri {plan.tracking_uri}")
    if checkpoint:
        print(f"  generate:    python -m cgsgan.generate --checkpoint {checkpoint} --out samples --turntable --ply")
    from orchestration.model_logging import logged_model_uri

    model = logged_model_uri(plan.tracking_uri, cfg.tracking.experiment, plan.name)
    if model:  # the command with its store, so it works from any folder
        print(f"  model:       {model} (MLflow model)")
        print(f"  from model:  MLFLOW_TRACKING_URI={redact(plan.tracking_uri)} python -m cgsgan.generate "
              f"--checkpoint {model} --out samples")
    if result.error:
        print(f"error: training failed: {root_cause(result.error)}", file=sys.stderr)
        return 1
    return 0


def complete_message(plan: Plan, total_kimg: float, nimg: int) -> str:
    """What a relaunch of a finished run says instead of training."""
    from cgsgan.training.ticks import kimg_text

    kimg = kimg_text(nimg / 1e3)
    return (f"run {plan.name} is complete at {kimg} kimg (train.total_kimg={total_kimg:g}): nothing to train.\n"
            f"  extend it:        the same command with train.total_kimg=<more than {kimg}>\n"
            f"  start another:    the same command with name=<a new run name>")


def root_cause(error: BaseException) -> str:
    """The last line of the innermost traceback Ray carries (e.g. "ValueError: ..."), else the error."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, failure = sorted(failures.items())[0]
        lines = [ln for ln in str(failure).splitlines() if ln.strip()]
        return f"rank {rank}: {lines[-1].strip() if lines else type(failure).__name__}"
    cause = getattr(error, "controller_failure", None) or error
    return one_line(f"{type(cause).__name__}: {cause}")


def launch(cfg: LaunchConfig) -> int:
    """One training run, wherever cluster.kind says: the exit code (0 done or submitted, 1 training
    failed, 2 stopped before anything started)."""
    quiet_console()
    try:
        plan = prepare(cfg)
    except PREPARE_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"run {plan.name}\n  checkpoints: {plan.storage_path}/{plan.name}\n  mlflow: {redact(plan.tracking_uri)}",
          flush=True)
    submitted = run_as_job(cfg, plan.name, launch)
    if submitted is not None:
        return submitted
    connect_ray(cfg)
    return train_on_ray(cfg, plan)
