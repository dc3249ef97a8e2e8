"""What the TorchTrainer is built with: no credential in Ray's runtime env, no retry of
a broken data file, decided by type (14.3, 21.2), no per-report log dumps from the workers (14.7),
a typed worker spec (21.2), Ray's retention off and its run snapshot forgotten (20.1), a finished
run said plainly (20.3)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

from cgsgan.data.dataset import DataError
from orchestration.config import LaunchConfig, Plan, StorageKind, resolve
from orchestration.console import QUIET_ENV, quiet_worker_loggers
from orchestration.ray_trainer import DataErrorStop, StopOnDataError, worker_env
from orchestration.worker import data_error_in

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAPLANTED0000001", "AWS_SECRET_ACCESS_KEY": "planted/secret+value",
           "AWS_SESSION_TOKEN": "planted-session-token", "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-pw",
           "MLFLOW_TRACKING_USERNAME": "planted-user"}  # fmt: skip


def plan(storage: str, tracking: str) -> Plan:
    cfg = LaunchConfig(output_dir="/tmp/out")
    cfg.storage.kind = StorageKind.s3 if storage.startswith("s3://") else StorageKind.local
    cfg.storage.path, cfg.tracking.uri = storage, tracking
    resolved = resolve(cfg)
    resolved.name = "run"
    return resolved


@pytest.mark.parametrize("storage, tracking", [("/tmp/out/ray_results", "sqlite:////tmp/out/mlflow.db"),
                                               ("s3://bucket/runs", "http://127.0.0.1:5000")])
def test_no_credential_goes_into_the_runtime_env(monkeypatch, storage, tracking):
    for k, v in {**SECRETS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1",
                 "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "CGSGAN_DATA_CACHE": "/tmp/cache"}.items():
        monkeypatch.setenv(k, v)
    env = worker_env(plan(storage, tracking))
    assert not set(SECRETS) & set(env) and not any(v in str(env) for v in SECRETS.values())
    assert env["CGSGAN_DATA_CACHE"] == "/tmp/cache"
    if storage.startswith("s3://"):  # what S3 storage needs besides credentials
        assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["AWS_DEFAULT_REGION"] == "eu-west-1"
        assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    else:  # local storage and tracking need nothing of AWS or MLflow (but a quiet console)
        assert not any(k.startswith(("AWS_", "MLFLOW_")) for k in set(env) - set(QUIET_ENV))


def test_a_data_error_in_a_worker_stops_the_run_instead_of_a_retry():
    callback = StopOnDataError()
    error = DataError("/data/64/00009.png: unreadable image (OSError: image file is truncated)")
    wrapped = UserExceptionWithTraceback(error, "Traceback (most recent call last):\n  ...\n"
                                                f"cgsgan.data.dataset.DataError: {error}\n")
    with pytest.raises(DataErrorStop, match=r"rank 1: /data/64/00009.png: unreadable image"):
        callback.after_exception(None, {0: UserExceptionWithTraceback(RuntimeError("gloo: connection reset"), "tb"),
                                        1: wrapped})
    # Anything else is Ray's to retry (a killed worker, a lost node, a flaky store) -- even when
    # a DataError's text is in its traceback (one handled before the failure): decided by type.
    handled = ("Traceback (most recent call last):\n  ...\ncgsgan.data.dataset.DataError: /d/1.png: unreadable\n\n"
               "During handling of the above exception, another exception occurred:\n\n"
               "RuntimeError: gloo: connection reset\n")
    callback.after_exception(None, {0: UserExceptionWithTraceback(RuntimeError("worker died"), "tb"),
                                    1: ConnectionError("S3 endpoint unreachable"),
                                    2: UserExceptionWithTraceback(RuntimeError("gloo: connection reset"), handled)})


def test_a_data_error_wrapped_on_its_way_up_is_found_by_type():
    class Renamed(DataError):  # any subclass, whatever its name
        pass

    error = Renamed("/data/64/00009.png: unreadable image")
    try:
        try:
            raise error
        except DataError as e:
            raise RuntimeError("batch failed") from e
    except RuntimeError as wrapped:
        assert data_error_in(wrapped) is error
    assert data_error_in(RuntimeError("no data error")) is None


def test_ray_train_report_dumps_are_kept_off_the_console():
    from ray.train.v2._internal.execution import context, storage

    quiet_worker_loggers()
    for name in (context.__file__, storage.__name__, "mlflow.store.db.utils", "alembic.runtime.migration"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING
    assert Path(context.__file__).name == "context.py"  # the report line's logger is named after this file


def test_launch_reports_a_failed_or_stopped_run_in_one_line(monkeypatch, capsys):
    """What `cluster.train_on_ray` makes of the ways a fit ends: a data error a worker returned (exit 2), a
    data error met mid-run (exit 2), any other failure (exit 1), each one line without a traceback."""
    from types import SimpleNamespace

    from ray.train import ControllerError, WorkerGroupError

    import orchestration.ray_trainer as ray_trainer
    from orchestration.cluster import train_on_ray

    outcomes = {
        "returned": SimpleNamespace(return_value={"data_error": "/d/64/00009.png: unreadable image"}, checkpoint=None,
                                    error=None),
        "stopped": ControllerError(DataErrorStop("rank 0: /d/64/00003.png: unreadable image")),
        "failed": WorkerGroupError("x", {0: UserExceptionWithTraceback(
            ZeroDivisionError("division by zero"), "Traceback ...\n  File x\nZeroDivisionError: division by zero\n")}),
    }

    class Fit:
        def __init__(self, outcome):
            self.outcome = outcome

        def fit(self):
            if isinstance(self.outcome, Exception):
                raise self.outcome
            return self.outcome

    cfg = SimpleNamespace(tracking=SimpleNamespace(experiment="cgsgan"))
    plan = Plan("run", "/tmp/out/ray_results", "sqlite:////tmp/out/mlflow.db", "/tmp/out", {})
    for kind, expected_rc, fragment in (("returned", 2, "/d/64/00009.png"), ("stopped", 2, "/d/64/00003.png"),
                                        ("failed", 1, "rank 0: ZeroDivisionError: division by zero")):
        monkeypatch.setattr(ray_trainer, "build_trainer", lambda c, p, o=outcomes[kind]: Fit(o))
        assert train_on_ray(cfg, plan) == expected_rc, kind
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err, (kind, err)


def test_the_worker_spec_crosses_as_plain_values_and_gives_the_mlflow_params(tmp_path):
    import pickle

    from cgsgan.config import to_dict
    from orchestration.config import resolve, to_typed
    from orchestration.ray_trainer import worker_spec
    from orchestration.worker_spec import WorkerSpec

    cfg = to_typed({"output_dir": str(tmp_path)})
    plan = resolve(cfg)
    spec = worker_spec(cfg, plan, tags={"sweep": "lr"})
    plain = spec.to_dict()
    assert pickle.loads(pickle.dumps(plain)) == plain and plain["core"] == plan.core
    assert not any(hasattr(v, "__dataclass_fields__") for v in plain.values())
    back = WorkerSpec.from_dict(plain)
    assert back == spec and back.run_uri == f"{plan.storage_path}/{plan.name}"
    full = back.full_config()  # the run's config.yaml; its params are a few (tests/unit/test_run_params.py)
    assert full["storage"] == {"path": plan.storage_path, "num_to_keep": cfg.storage.num_to_keep}
    assert full["cluster"]["num_workers"] == cfg.cluster.num_workers and full["train"] == to_dict(back.core)["train"]
    assert back.mlflow_params()["run_name"] == plan.name
    with pytest.raises(ValueError, match="storage_url"):
        WorkerSpec.from_dict({**plain, "storage_url": "x"})


def test_ray_keeps_every_checkpoint_and_its_run_snapshot_is_forgotten(tmp_path):
    """Retention is the project's (RunCheckpoints.prune): Ray's would delete a checkpoint replayed under
    a reused folder name. Ray's run snapshot, which stops a launch when corrupt or stale, is deleted."""

    from orchestration.config import resolve, to_typed
    from orchestration.ray_trainer import build_trainer

    cfg = to_typed({"output_dir": str(tmp_path)})
    plan = resolve(cfg)
    snapshot = Path(plan.storage_path) / plan.name / "checkpoint_manager_snapshot.json"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_text('{"checkpoint_results": [{"checkpoint_dir_name": "checkpoint-0000000064"')  # cut short
    trainer = build_trainer(cfg, plan)
    assert trainer.run_config.checkpoint_config.num_to_keep is None
    assert not snapshot.exists()
    build_trainer(cfg, plan)  # none there: fine


def test_a_finished_run_is_said_plainly(monkeypatch, capsys):
    from types import SimpleNamespace

    import orchestration.ray_trainer as ray_trainer
    from orchestration.cluster import train_on_ray

    result = SimpleNamespace(return_value={"data_error": "", "complete_nimg": 4}, checkpoint=None, error=None)
    monkeypatch.setattr(ray_trainer, "build_trainer", lambda c, p: SimpleNamespace(fit=lambda: result))
    cfg = SimpleNamespace(tracking=SimpleNamespace(experiment="cgsgan"), train=SimpleNamespace(total_kimg=0.004))
    assert train_on_ray(cfg, plan("/tmp/out/ray_results", "sqlite:////tmp/out/mlflow.db")) == 0
    out = capsys.readouterr().out
    assert "run run is complete at 0.004 kimg" in out and "train.total_kimg=" in out and "name=" in out, out
    assert "done." not in out


def stops(callbacks: list, error: BaseException) -> list[str]:
    """What the trainer's controller callbacks raise for one failed worker ("" = a retry)."""
    said = []
    for callback in callbacks:
        try:
            callback.after_exception(None, {0: UserExceptionWithTraceback(error, "Traceback ...")})
        except Exception as stop:
            said.append(f"{type(stop).__name__}: {stop}")
    return said


def test_cuda_out_of_memory_and_a_backend_that_cannot_run_stop_the_run_instead_of_a_retry(tmp_path):
    """Both fail the same way on every try: Ray Train would repeat the start and the resume from
    storage cluster.max_failures times. A flaky failure is still retried."""
    import torch

    from orchestration.config import resolve, to_typed
    from orchestration.ray_trainer import build_trainer

    cfg = to_typed({"output_dir": str(tmp_path)})
    callbacks = build_trainer(cfg, resolve(cfg)).run_config.callbacks
    oom = stops(callbacks, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert len(oom) == 1 and "rank 0: CUDA out of memory. Tried to allocate 2.00 GiB" in oom[0]
    assert "train.batch_gpu" in oom[0]
    from cgsgan.render.backends import BackendUnavailable

    kernels = stops(callbacks, BackendUnavailable("render backend 'gsplat' cannot run: gsplat is installed without "
                                                  "its compiled CUDA kernels"))
    assert len(kernels) == 1 and "compiled CUDA kernels" in kernels[0]
    assert stops(callbacks, RuntimeError("NCCL: connection reset by peer")) == []


def test_the_worker_trains_on_the_gpu_ray_gave_it(tmp_path, monkeypatch):
    """Ray's device for the worker (ray.train.torch.get_device), not cuda:<local rank>: with two GPUs a
    worker, local rank 1 holds Ray's GPUs 2 and 3 -- cuda:1 is worker 0's second GPU."""
    from types import SimpleNamespace

    import ray.train
    import ray.train.torch
    import torch

    from orchestration.config import resolve, to_typed
    from orchestration.ray_trainer import worker_spec
    from orchestration.worker import train_loop_per_worker

    cfg = to_typed({"output_dir": str(tmp_path), "cluster": {"use_gpu": True, "gpus_per_worker": 2}})
    spec = worker_spec(cfg, resolve(cfg))
    context = SimpleNamespace(get_world_rank=lambda: 1, get_world_size=lambda: 2, get_local_rank=lambda: 1)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cuda:2"))
    chosen = []

    class Chosen(Exception):
        pass

    def set_device(device):
        chosen.append(torch.device(device))
        raise Chosen  # nothing further runs without a GPU

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(Chosen):
        train_loop_per_worker(spec.to_dict())
    assert chosen == [torch.device("cuda:2")]


def test_the_drivers_read_the_workers_result_typed():
    """What rank 0 returns crosses Ray as plain values; the launcher and a sweep's trial read it
    back as a WorkerResult: a run that trained (a checkpoint, no error) is no data error."""
    from dataclasses import asdict

    from orchestration.worker_spec import WorkerResult

    trained = WorkerResult.read(asdict(WorkerResult(checkpoint="s3://b/run/checkpoint-0000000064")))
    assert not trained.data_error and not trained.storage_outage and trained.complete_nimg is None
    assert WorkerResult.read(asdict(WorkerResult(data_error="heads/00001.png: unreadable"))).data_error
    assert WorkerResult.read(None) == WorkerResult()  # a rank 0 that returned nothing
