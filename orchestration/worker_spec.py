"""What every Ray Train worker is given, and what rank 0 gives back: typed specs, crossing into Ray as plain values
(`to_dict`) and rebuilt on the worker (`from_dict`), as the core config does."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cgsgan.config import CGSGANConfig, from_dict, to_dict


@dataclass
class WorkerSpec:
    core: CGSGANConfig  # the core training config (model, data, loss, train)
    name: str  # the run's name: its folder in storage and its MLflow run name
    use_gpu: bool
    local_dir: str  # where runs/<name>/ (samples, metrics.jsonl, local checkpoints) is written
    storage_uri: str  # the checkpoint storage: a local folder or s3://bucket/prefix
    storage_endpoint: str  # a custom S3 endpoint ("" for AWS or local storage)
    num_to_keep: int | None  # checkpoint folders kept in storage (None: all)
    tracking_uri: str  # MLflow
    experiment: str  # MLflow experiment name
    system_metrics_interval_s: float  # MLflow system metrics (CPU, memory, GPUs) every this many s; 0 = off
    artifact_root: str | None  # MLflow artifact root for a local tracking store (None: the server's)
    outage_s: float = 1800.0  # storage unreachable this long: the run stops (storage.outage_s)
    cluster: dict = field(default_factory=dict)  # the launch's cluster settings, for the MLflow params
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow run tags (e.g. a sweep's parent run)
    data_notices: list[str] = field(default_factory=list)  # what the launcher's data check said already
    data_checked: bool = False  # the launcher read every image header (check_dataset): workers do not again

    @property
    def run_uri(self) -> str:
        """The run's folder in storage: its checkpoint-<nimg>/ folders (and Ray's files)."""
        return f"{self.storage_uri.rstrip('/')}/{self.name}"

    def mlflow_params(self) -> dict[str, str]:
        """The MLflow params of the run: what runs are filtered and grouped on (run_params)."""
        from orchestration.run_params import run_params

        return run_params(self.core, self.name)

    def full_config(self) -> dict:
        """The run's whole config, its config.yaml artifact: the core config, the cluster and the
        storage settings."""
        return {**to_dict(self.core), "cluster": dict(self.cluster),
                "storage": {"path": self.storage_uri, "num_to_keep": self.num_to_keep}}  # fmt: skip

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["core"] = to_dict(self.core)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> WorkerSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"worker spec: unknown keys {sorted(unknown)}")
        return cls(**{**values, "core": from_dict(values["core"])})


@dataclass
class WorkerResult:
    """What rank 0 returns to the driver (as plain values): why the run ended without training."""

    data_error: str = ""  # a broken data file found while the trainer was built
    complete_nimg: int | None = None  # the run had already reached train.total_kimg: images trained
    checkpoint: str = ""  # the newest checkpoint whole on storage at the end
    storage_outage: str = ""  # storage did not answer for storage.outage_s: the run stopped (why, where)

    @classmethod
    def read(cls, returned) -> WorkerResult:
        """The driver's side: what `TorchTrainer.fit()` hands back as `return_value` (rank 0's plain
        values, or None), typed again."""
        return cls(**returned) if isinstance(returned, dict) else cls()
