"""Typed launch configuration: the model core's config plus cluster, storage and tracking.

Registered with Hydra's ConfigStore as the schema of orchestration/conf/config.yaml, so a
wrongly typed override (or a mode that is not one of its enum's values) fails at composition;
`validate_launch` then checks values and cross-field constraints before anything is launched.

The model presets (`model=tiny`, `model=ffhq512`, ...) are the core's own `cgsgan.config.tiny()`
and `cgsgan.config.ffhq(resolution)`, registered as options of the `model` group (`register`):
there is no YAML copy of them to keep in step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from cgsgan import config as core
from cgsgan.layout import check_batch
from cgsgan.config import (
    CGSGANConfig,
    ConfigError,
    DataConfig,
    DataSource,
    LossConfig,
    ModelConfig,
    TrainConfig,
    to_dict,
    validate,
)


class ClusterKind(StrEnum):
    local = "local"  # start a Ray on this machine
    ray = "ray"  # connect to an existing Ray cluster (cluster.address or $RAY_ADDRESS)
    slurm = "slurm"  # submit a SLURM job (submitit) that starts Ray on its allocation


class StorageKind(StrEnum):
    local = "local"  # a folder (storage.path; "" = <output_dir>/ray_results)
    s3 = "s3"  # s3://bucket/prefix (storage.path), on AWS or a custom endpoint


@dataclass
class ClusterConfig:
    kind: ClusterKind = ClusterKind.local
    address: str = ""  # Ray address; "" = $RAY_ADDRESS, else (kind=local) start one
    num_workers: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 2.0
    max_failures: int = 3  # worker-group restarts from the last checkpoint before giving up


@dataclass
class SlurmConfig:
    """Used with cluster.kind=slurm: `launch.py cluster=slurm` submits through submitit."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2  # one task per node: the Ray node (and, on the first, the driver)
    mem_gb: int = 0  # 0 = the partition's default
    time_min: int = 60
    max_requeues: int = 3  # preemptions / time-outs after which the job is not requeued again
    folder: str = ""  # submitit logs; "" = <output_dir>/slurm
    port_base: int = 20000  # each job takes 40 ports from here, offset by its job id
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: time to requeue


@dataclass
class StorageConfig:
    kind: StorageKind = StorageKind.local
    path: str = ""  # kind=s3: s3://bucket/prefix; kind=local: a folder, "" = <output_dir>/ray_results
    endpoint_url: str = ""  # custom S3 endpoint; "" = $AWS_ENDPOINT_URL or AWS itself
    create_bucket: bool = False
    num_to_keep: int = 3
    # Storage unreachable this long (s) while training: the run stops, naming the newest checkpoint
    # on storage and the one staged on local disk, rather than train on with nothing safe.
    outage_s: float = 1800.0


@dataclass
class TrackingConfig:
    uri: str = ""  # MLflow tracking URI; "" = sqlite:///<output_dir>/mlflow.db
    experiment: str = "cgsgan"
    system_metrics_interval_s: float = 10.0  # each worker's CPU/memory/GPU into its run; 0 = off


@dataclass
class LaunchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    name: str = ""  # user tag; the run name is derived from the config and this tag
    output_dir: str = "outputs"


def presets() -> dict[str, CGSGANConfig]:
    """The options of the `model` group: the core's presets, called now (so whatever tiny() and
    ffhq() return is what launches)."""
    return {"tiny": core.tiny(), **{f"ffhq{res}": core.ffhq(res) for res in core.LEVELS_FOR_RESOLUTION}}


def register() -> None:
    """The launch schema and the model presets, in Hydra's ConfigStore (call before composing).

    A preset applies to every section it sets (model, data, loss, train); the groups after it in
    the defaults list (data=...) and the command line override it as usual."""
    cs = ConfigStore.instance()
    cs.store(name="launch_schema", node=LaunchConfig)
    for name, preset in presets().items():
        cs.store(group="model", name=name, node=to_dict(preset), package="_global_")


def to_typed(cfg: DictConfig | dict, cls: type | None = None) -> Any:
    """A composed Hydra config, or plain values that crossed a process boundary (then merged onto
    `cls`, default LaunchConfig), as typed dataclasses; ConfigError for a missing or mistyped value."""
    try:
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.merge(OmegaConf.structured(cls or LaunchConfig), cfg)
        return OmegaConf.to_object(cfg)  # all interpolations resolved
    except Exception as e:  # missing mandatory values (???), a value of the wrong type, ...
        raise ConfigError(str(e).splitlines()[0]) from e


def core_config(cfg: LaunchConfig) -> CGSGANConfig:
    return CGSGANConfig(model=cfg.model, data=cfg.data, loss=cfg.loss, train=cfg.train)


# What a run is, decided here: the run name is a digest of the core config (model, data, loss,
# train) less these train keys, each with why it does not change what is trained. A relaunch
# that changes only these (or the cluster, storage, tracking and SLURM settings, which never enter
# it) finds the same run and resumes it. Paths enter resolved (`resolve_paths`).
LAYOUT = {  # how the same training is computed, like cluster.num_workers
    "batch_gpu": "a layout: the same global batch, split into other chunks",
    "num_threads": "a layout: CPU threads per worker",
    "render_backend": "a layout: the same rasterisation, another implementation",
}
NOT_IN_RUN_NAME = {
    "total_kimg": "the budget: raising it extends the run",
    **LAYOUT,
    **dict.fromkeys(("tick_kimg", "snapshot_ticks", "checkpoint_ticks", "truncation_psi", "metric_samples",
                     "snapshot_metrics", "metrics_at", "feature_extractor", "snapshot_metric_heads"),
                    "reporting: when and what is measured or saved, not what is trained"),
}  # fmt: skip


def run_name(cfg: LaunchConfig) -> str:
    """Deterministic: the same config (and tag) always names the same run, so resubmitting the
    same command resumes it (what enters it: NOT_IN_RUN_NAME)."""
    values = to_dict(core_config(cfg))
    values["train"] = {k: v for k, v in values["train"].items() if k not in NOT_IN_RUN_NAME}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    base = f"cgsgan-{cfg.model.resolution}px-{cfg.model.camera_mode}-v{cfg.loss.num_views}"
    return f"{cfg.name}-{digest}" if cfg.name else f"{base}-{digest}"


def absolute_path(path: str) -> str:
    """A local path against this process's folder (~ expanded, .. folded); "" and URIs as given."""
    return path if not path or "://" in path else os.path.abspath(os.path.expanduser(path))


def resolve_paths(cfg: LaunchConfig) -> LaunchConfig:
    """Every path of the config made absolute on the driver, once, before it is checked or named:
    Ray's workers and Tune's trials run in other folders, and the run name then says the dataset
    the same way however it was written. Returns cfg, changed in place."""
    cfg.output_dir = absolute_path(cfg.output_dir)
    cfg.data.path = absolute_path(cfg.data.path)
    if cfg.data.index_list != "auto":
        cfg.data.index_list = absolute_path(cfg.data.index_list)
    if cfg.train.feature_extractor not in ("synthetic", "random"):  # else a file of weights
        cfg.train.feature_extractor = absolute_path(cfg.train.feature_extractor)
    if cfg.storage.kind == StorageKind.local:
        cfg.storage.path = absolute_path(cfg.storage.path)
    cfg.slurm.folder = absolute_path(cfg.slurm.folder)
    return cfg


def local_store(output_dir: str | Path) -> str:
    """The MLflow store of tracking=local: a SQLite file under output_dir."""
    return f"sqlite:///{Path(absolute_path(str(output_dir))) / 'mlflow.db'}"


def is_tracking_server(uri: str) -> bool:
    """An MLflow server (it may not answer; it keeps the artifacts itself) rather than a store on
    disk (sqlite:, file:, a folder: always there, artifacts beside it). The one place this is decided."""
    return uri.startswith(("http://", "https://", "databricks"))


@dataclass
class Plan:
    """Everything resolved before Ray starts: plain values only. What kind of storage and tracking
    a run has is decided here once; everything after reads these fields."""

    name: str
    storage_path: str
    tracking_uri: str
    output_dir: str
    core: dict  # CGSGANConfig as plain values
    storage_kind: str = StorageKind.local.value
    data_notices: list = field(default_factory=list)  # what the data check said (workers stay quiet about it)
    data_checked: bool = False  # a dataset folder was checked whole (headers) before Ray started

    @property
    def tracking_server(self) -> bool:
        return is_tracking_server(self.tracking_uri)

    @property
    def artifact_root(self) -> str | None:
        """A store on disk: <output_dir>/mlartifacts (a file URI); a server keeps its own: None."""
        return None if self.tracking_server else (Path(self.output_dir) / "mlartifacts").as_uri()

    @property
    def run_dir(self) -> Path:
        """The run's local folder (metrics.jsonl, samples/, staged checkpoints, tracking spool)."""
        return Path(self.output_dir) / "runs" / self.name


def resolve(cfg: LaunchConfig) -> Plan:
    out = Path(absolute_path(cfg.output_dir))
    storage = cfg.storage.path
    if cfg.storage.kind == StorageKind.local:
        storage = absolute_path(storage or str(out / "ray_results"))
    tracking = cfg.tracking.uri or local_store(out)
    return Plan(run_name(cfg), storage, tracking, str(out), to_dict(core_config(cfg)),
                storage_kind=StorageKind(cfg.storage.kind).value)


def resolve_index_list(cfg: LaunchConfig, say=None) -> LaunchConfig:
    """data.index_list=auto -> the authors' rebalancing list beside the dataset folder (its path), or ""
    when there is none (or the data are the synthetic heads); so the run name tells runs with and
    without it apart. `say` (if given) gets one line on what was found. Returns cfg, changed in place."""
    if cfg.data.index_list == "auto" and cfg.data.source != DataSource.folder:
        cfg.data.index_list = ""
    elif cfg.data.index_list == "auto":
        from cgsgan.data.dataset import REBALANCING_LIST, find_rebalancing_list

        found = find_rebalancing_list(cfg.data.path)
        cfg.data.index_list = str(found.absolute()) if found else ""
        if say is not None:
            say(f"note: data.index_list=auto: {found} (the authors' rebalancing)" if found else
                f"note: data.index_list=auto: no {REBALANCING_LIST} beside {cfg.data.path}; every labelled image "
                "is used once")
    return cfg


def validate_launch(cfg: LaunchConfig) -> LaunchConfig:
    """All checks that need no cluster; raises ConfigError naming the key."""
    validate(core_config(cfg))
    c = cfg.cluster
    for key, value, kind in (("cluster.kind", c.kind, ClusterKind), ("storage.kind", cfg.storage.kind, StorageKind)):
        if value not in set(kind):
            raise ConfigError(f"{key}={value!r}: expected one of {[k.value for k in kind]}")
    check_storage_path(cfg)
    check_ranges(cfg)
    if c.kind == ClusterKind.slurm:
        s = cfg.slurm
        if c.use_gpu and c.num_workers * c.gpus_per_worker > s.nodes * s.gpus_per_node:
            raise ConfigError(
                f"cluster.num_workers={c.num_workers} x cluster.gpus_per_worker={c.gpus_per_worker} GPUs do not fit "
                f"in slurm.nodes={s.nodes} x slurm.gpus_per_node={s.gpus_per_node}"
            )
        from orchestration.ray_nodes import port_block, worker_ports, worker_ports_needed

        per_node, ports = math.ceil(c.num_workers / s.nodes), worker_ports(port_block("0", s.port_base))
        if worker_ports_needed(per_node) > ports:
            raise ConfigError(
                f"cluster.num_workers={c.num_workers} on slurm.nodes={s.nodes}: {per_node} workers a node need "
                f"{worker_ports_needed(per_node)} Ray worker ports, a job's port block has {ports}; use more nodes"
            )
        if c.num_workers * c.cpus_per_worker > s.nodes * s.cpus_per_task:
            raise ConfigError(
                f"cluster.num_workers={c.num_workers} x cluster.cpus_per_worker={c.cpus_per_worker} CPUs do not fit "
                f"in slurm.nodes={s.nodes} x slurm.cpus_per_task={s.cpus_per_task}"
            )
    # The layout workers x chunks x batch_gpu must keep minibatch-std and multi-view (one check, the core's).
    check_batch(core_config(cfg), c.num_workers, workers_key="cluster.num_workers")
    if cfg.data.source == DataSource.folder and cfg.data.path and not os.path.exists(cfg.data.path):
        raise ConfigError(f"data.path={cfg.data.path!r}: no such file or folder")
    if cfg.data.index_list and cfg.data.index_list != "auto" and not os.path.exists(cfg.data.index_list):
        raise ConfigError(f"data.index_list={cfg.data.index_list!r}: no such file")
    from cgsgan.metrics.evaluation import check_metrics

    try:  # metrics that need the synthetic heads' ground truth (novel views, yaw bins) need data=synthetic
        if cfg.train.snapshot_metrics:
            check_metrics(list(cfg.train.snapshot_metrics), ground_truth=cfg.data.source == DataSource.synthetic)
    except ValueError as e:
        raise ConfigError(f"train.snapshot_metrics={list(cfg.train.snapshot_metrics)!r}: {e}") from e
    return cfg


def check_storage_path(cfg: LaunchConfig) -> None:
    """storage.path agrees with storage.kind: an S3 URI for s3 (storage=s3), a folder for local."""
    path = cfg.storage.path
    if cfg.storage.kind == StorageKind.s3:
        bucket = path.removeprefix("s3://").split("/", 1)[0] if path.startswith("s3://") else ""
        if not bucket:
            raise ConfigError(f"storage.path={path!r}: storage.kind=s3 needs s3://bucket/prefix")
    elif "://" in path:
        raise ConfigError(f"storage.path={path!r}: a URI, but storage.kind=local takes a folder "
                          "(for S3 use storage=s3, which sets storage.kind=s3)")


def check_ranges(cfg: LaunchConfig) -> None:
    """The range of every numeric key of the cluster, storage and SLURM settings (whatever
    cluster.kind is, so a bad value is found on the first launch); ConfigError names key and value."""
    c, s = cfg.cluster, cfg.slurm

    def need(ok: bool, key: str, value, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r}: {why}")

    def at_least(key: str, value, lo) -> None:
        need(math.isfinite(value) and value >= lo, key, value, f"must be >= {lo}")

    at_least("cluster.num_workers", c.num_workers, 1)
    need(math.isfinite(c.cpus_per_worker) and c.cpus_per_worker > 0, "cluster.cpus_per_worker", c.cpus_per_worker,
         "must be > 0")
    at_least("cluster.gpus_per_worker", c.gpus_per_worker, 0)
    if c.use_gpu:
        need(c.gpus_per_worker > 0, "cluster.gpus_per_worker", c.gpus_per_worker, "must be > 0 with cluster.use_gpu=true")
        # A worker trains on whole GPUs: two ranks sharing one would each need it all.
        need(float(c.gpus_per_worker).is_integer(), "cluster.gpus_per_worker", c.gpus_per_worker,
             "must be a whole number of GPUs with cluster.use_gpu=true (a worker trains on whole GPUs)")
    at_least("cluster.max_failures", c.max_failures, 0)
    at_least("storage.num_to_keep", cfg.storage.num_to_keep, 1)
    at_least("storage.outage_s", cfg.storage.outage_s, 1)
    at_least("tracking.system_metrics_interval_s", cfg.tracking.system_metrics_interval_s, 0)
    at_least("slurm.nodes", s.nodes, 1)
    at_least("slurm.gpus_per_node", s.gpus_per_node, 0)
    at_least("slurm.cpus_per_task", s.cpus_per_task, 1)
    at_least("slurm.mem_gb", s.mem_gb, 0)
    at_least("slurm.time_min", s.time_min, 1)
    at_least("slurm.max_requeues", s.max_requeues, 0)
    # Each job takes 40 ports from port_base + (job id % 500) * 40: the block must stay below 65536.
    need(1024 <= s.port_base <= 65535 - 500 * 40 + 1, "slurm.port_base", s.port_base,
         f"must be in [1024, {65535 - 500 * 40 + 1}] (each job takes 40 ports of the 20000 above it)")
    need(0 <= s.signal_delay_s < s.time_min * 60, "slurm.signal_delay_s", s.signal_delay_s,
         f"must be >= 0 and below slurm.time_min={s.time_min} minutes")
