"""The EMA generator as a logged MLflow model (orchestration/generator_model.py is its code).

At the end of a run the worker logs it to the run (`log_trained_generator`); on demand, from any
checkpoint (the store: $MLFLOW_TRACKING_URI, else the launcher's default ./outputs/mlflow.db):

    python -m orchestration.model_logging log --checkpoint CKPT --run-id RUN [--register]

It lands at runs:/<run_id>/generator: `mlflow.pyfunc.load_model("runs:/<run_id>/generator")`
(after `mlflow.set_tracking_uri("sqlite:///outputs/mlflow.db")` under local tracking) gives a
model that turns a table of (seed, yaw) into images. Its folder holds the core's code
(code/cgsgan), so it loads wherever torch and mlflow are installed, and a generator-only cgsgan
checkpoint (artifacts/checkpoint-<nimg>.pt), so the core reads it without MLflow:

    python -m cgsgan.generate --checkpoint runs:/<run_id>/generator --out samples

The core does not import MLflow for that: this module registers `downloaded` as the resolver of
runs:/ and models:/ URIs (the entry points "cgsgan.checkpoint_sources" in pyproject.toml), which
the core's open_checkpoint looks up by the URI's scheme. By hand, the same:

    mlflow artifacts download -u runs:/<run_id>/generator -d model
    python -m cgsgan.generate --checkpoint model/generator --out samples   # a folder of checkpoint-*.pt

With a tracking server (tracking=server) each run's model is also registered under
`cgsgan-<preset>` (e.g. cgsgan-tiny), one version per run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

from cgsgan.config import CGSGANConfig, from_dict, to_dict
from cgsgan.training.checkpoint import load_checkpoint, open_checkpoint, save_checkpoint
from orchestration.tracking import redact

MODEL_PATH = "generator"  # the model's artifact path in its run: runs:/<run_id>/generator
CORE = Path(__file__).resolve().parents[1] / "cgsgan"
EXAMPLE = {"seed": [0, 1], "yaw": [0.0, 30.0]}  # the input example: two heads, frontal and turned


def registered_name(cfg: CGSGANConfig) -> str:
    """cgsgan-<preset>: the model preset (orchestration.config.presets) whose architecture the run
    has (the camera mode, an ablation axis, aside), else cgsgan-<resolution>px."""
    from orchestration.config import presets

    def shape(c: CGSGANConfig) -> dict:
        return {k: v for k, v in to_dict(c.model).items() if k != "camera_mode"}

    match = [name for name, preset in presets().items() if shape(preset) == shape(cfg)]
    return f"cgsgan-{match[0] if match else f'{cfg.model.resolution}px'}"


def cli_tracking_uri() -> str:
    """The store a command given a model URI reads: $MLFLOW_TRACKING_URI, else the launcher's
    default local store (tracking=local, output_dir=outputs) under this folder. Never MLflow's own
    default, ./mlflow.db, which it would create empty wherever the command runs. FileNotFoundError
    (one line: where it looked, how to name another) when there is none."""
    import os

    from orchestration.config import LaunchConfig, local_store

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = local_store(LaunchConfig().output_dir)
    if not Path(store.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(f"no MLflow store here: looked for {store} (the default local store, under the "
                                "folder the launch ran in); name another with MLFLOW_TRACKING_URI=sqlite:///<output_dir>"
                                "/mlflow.db or the server's http:// address")
    return store


def log_generator(client, run_id: str, config: dict, g_ema: dict, nimg: int, register: bool) -> str:
    """Log the generator (`config`: the core config as plain values; `g_ema`: the EMA weights) as
    the run's pyfunc model; with `register`, as a new version of cgsgan-<preset>. Returns its URI."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    from orchestration import generator_model

    with tempfile.TemporaryDirectory(prefix="cgsgan-model-") as tmp:
        ckpt = save_checkpoint({"config": config, "G_ema": g_ema}, Path(tmp) / f"checkpoint-{nimg:010d}.pt")
        example = pd.DataFrame(EXAMPLE)
        model = generator_model.GeneratorModel()
        model.load_context(mlflow.pyfunc.PythonModelContext(artifacts={"checkpoint": str(ckpt)}, model_config=None))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's hint on integer columns: seeds are never missing
            signature = infer_signature(example, model.predict(None, example))
        folder = Path(tmp) / MODEL_PATH
        mlflow.pyfunc.save_model(
            folder, python_model=generator_model.__file__, artifacts={"checkpoint": str(ckpt)},
            code_paths=[str(CORE)], signature=signature, input_example=example,
            # Stated, not inferred: inferring loads the model in a subprocess (slow, and it would
            # list this machine's whole environment).
            pip_requirements=["torch", "numpy", "pillow", "pandas", f"mlflow=={mlflow.__version__}"],
            metadata={"nimg": nimg, "resolution": from_dict(config).model.resolution},
        )  # fmt: skip
        client.log_artifacts(run_id, str(folder), MODEL_PATH)
    uri = f"runs:/{run_id}/{MODEL_PATH}"
    if register:
        name = registered_name(from_dict(config))
        try:
            client.create_registered_model(name)
        except Exception:  # registered before (or concurrently, by another trial)
            pass
        client.create_model_version(name, source=uri, run_id=run_id)
    return uri


def log_trained_generator(tracker, trainer) -> str | None:
    """At the end of a run (rank 0): the trainer's EMA generator onto its run; registered when the
    tracking URI is a server. A failure is said in one line and does not fail the finished run."""
    try:
        uri = log_generator(tracker.client, tracker.run_id, to_dict(trainer.cfg), trainer.G_ema.state_dict(),
                            trainer.cur_nimg, register=tracker.server)  # fmt: skip
    except Exception as e:  # noqa: BLE001  (training is done; the checkpoints stay the record)
        print(f"warning: could not log the generator model: {type(e).__name__}: {e}", flush=True)
        return None
    print(f"MLflow model {uri}", flush=True)
    return uri


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The EMA generator as an MLflow model: log one from a checkpoint "
                                "($MLFLOW_TRACKING_URI names the store; unset: ./outputs/mlflow.db, the launcher's "
                                "default). To generate from a logged one: "
                                "python -m cgsgan.generate --checkpoint runs:/<run_id>/generator.")
    sub = p.add_subparsers(dest="command", required=True)
    log = sub.add_parser("log", help="log a checkpoint's EMA generator as the model of a run")
    log.add_argument("--checkpoint", required=True, help="checkpoint file, checkpoint folder or run folder; local or s3://")
    log.add_argument("--run-id", required=True)
    log.add_argument("--register", action="store_true", help="also register it as a version of cgsgan-<preset>")
    args = p.parse_args(argv)
    from mlflow.tracking import MlflowClient

    try:
        store = cli_tracking_uri()
        client = MlflowClient(store)
        try:
            client.get_run(args.run_id)
        except Exception as e:  # noqa: BLE001  (MLflow's own kinds for a missing run)
            raise FileNotFoundError(f"--run-id {args.run_id}: no such run in {redact(store)} ({type(e).__name__}); "
                                    "name another store with MLFLOW_TRACKING_URI") from None
        with open_checkpoint(args.checkpoint, say=lambda msg: print(msg, file=sys.stderr)) as path:
            state = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    nimg = int(state.get("counters", {}).get("cur_nimg", 0))
    print(log_generator(client, args.run_id, state["config"], state["G_ema"], nimg, register=args.register))
    return 0


@contextlib.contextmanager
def downloaded(model_uri: str):
    """The logged model's folder (its checkpoint-*.pt inside), downloaded for as long as the
    context lasts: the core's resolver of runs:/ and models:/ URIs (see the module docstring)."""
    import mlflow
    import mlflow.artifacts

    store = cli_tracking_uri()
    mlflow.set_tracking_uri(store)  # models:/ resolves through the registry, which follows it
    with tempfile.TemporaryDirectory(prefix="cgsgan-model-") as tmp:
        try:
            folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        except Exception as e:  # noqa: BLE001  (MLflow raises its own kinds for a missing run or model)
            raise FileNotFoundError(f"{model_uri} in {redact(store)}: {type(e).__name__}: {str(e).splitlines()[0]} "
                                    "(name another store with MLFLOW_TRACKING_URI)") from None
        yield folder


def logged_model_uri(tracking_uri: str, experiment: str, run_name: str) -> str | None:
    """runs:/<run_id>/generator of the run named `run_name` when its generator was logged, else None."""
    from mlflow.tracking import MlflowClient

    from orchestration.tracking import RUN_NAME_TAG
    from orchestration.tracking_queue import quiet_http

    quiet_http()  # a summary line: a server that does not answer costs one short try, and no console lines
    try:
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        runs = exp and client.search_runs([exp.experiment_id], f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
        if not runs or not client.list_artifacts(runs[0].info.run_id, MODEL_PATH):
            return None
    except Exception:  # noqa: BLE001  (a summary line, not worth failing a finished run for)
        return None
    return f"runs:/{runs[0].info.run_id}/{MODEL_PATH}"


if __name__ == "__main__":
    sys.exit(main())
