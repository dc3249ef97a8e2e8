"""MLflow tracking for a run: one MLflow run per (experiment, run name), found again on resume.

Used by rank 0 only. Everything goes through an explicit MlflowClient and run id (no global
active run), so several runs can be tracked from one process (e.g. sweeps).

What a run shows in the MLflow UI: its params and metrics (step = kimg x 1000), each snapshot's
sample grid as a step image (key GRID_IMAGE_KEY: the run page's image chart with its step slider,
the chart view's side-by-side of several runs) and as a plain artifact under samples/, the final
turntable and .ply under samples/. The experiments it creates are tagged as model training
(EXPERIMENT_KIND), so the UI opens them on the runs table and charts rather than its GenAI layout.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

RUN_NAME_TAG = "cgsgan.run_name"
# MLflow's experiment kind for custom model development: the UI (3.x) shows such an experiment's
# runs table and chart view first instead of its GenAI (traces) layout.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key: a runs-page view the UI opens by ?viewStateShareKey=key
GRID_IMAGE_KEY = "grid"  # the snapshot grids, one step image per snapshot
SAMPLE_ARTIFACTS = ("artifacts/grid", "artifacts/turntable", "artifacts/ply")  # snapshot keys kept as files
_SECRET = re.compile(r"(secret|password|token|access_key|credential)", re.IGNORECASE)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def redact(text: str) -> str:
    """A URI with any user:password@ replaced by ***@ (for printing)."""
    return re.sub(r"(://)[^/@\s]+:[^/@\s]+@", r"\1***@", text)


def scrub(params: dict[str, object]) -> dict[str, object]:
    """Drop anything that looks like a credential (keys) and credentials embedded in URLs."""
    clean = {}
    for k, v in params.items():
        if _SECRET.search(k):
            continue
        if isinstance(v, str):
            v = redact(v)  # user:pass@host
        clean[k] = v
    return clean


def mlflow_name(metric: str) -> str:
    """Reported metric names use "/" (e.g. loss/G); MLflow shows them with "." (no "." is reported)."""
    return metric.replace("/", ".")


PROGRESS_METRIC = mlflow_name("progress/kimg")  # logged at every tick: its history says how far a run has logged


def reported_name(mlflow_metric: str) -> str:
    return mlflow_metric.replace(".", "/")


def kimg_step(kimg: float) -> int:
    """The step a run logs at: kimg x 1000 (thousandths of a kimg), the same for metrics and images."""
    return int(round(kimg * 1000))


def local_artifact_root(output_dir: str | Path, tracking_uri_given: bool) -> str | None:
    """Where a local store's artifacts go (<output_dir>/mlartifacts, as a file URI); None for a
    configured tracking server, which decides itself."""
    return None if tracking_uri_given else (Path(output_dir).absolute() / "mlartifacts").as_uri()


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifact_root: str | None = None) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(experiment, artifact_location=artifact_root)
            except Exception:  # created concurrently by another process
                exp_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = exp.experiment_id
        if exp is None or EXPERIMENT_KIND[0] not in exp.tags:
            self.client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
        self.experiment_id = exp_id
        self.run_name = run_name
        self.run_id: str | None = None
        # The last step an earlier attempt of this run logged. A restart resumes from the last
        # checkpoint Ray recorded, which may be older than the last tick logged (a kill between a
        # tick's log and its checkpoint being recorded): the ticks it trains again up to this
        # step are not logged again, so a metric's steps never go backwards in the run.
        self.logged_through = -1

    def start(self, run_id: str | None = None, params: dict | None = None, tags: dict | None = None) -> str:
        """Continue `run_id`, else the run tagged with this run name, else create one."""
        if run_id is None:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{self.run_name}'", max_results=1
            )
            run_id = found[0].info.run_id if found else None
        logged: dict[str, str] = {}
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags={RUN_NAME_TAG: self.run_name, **(tags or {})})
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, PROGRESS_METRIC)
            self.logged_through = max((m.step for m in history), default=-1)
            logged = self.client.get_run(run_id).data.params
        if params:
            # A param is logged once: a continued run keeps its values (a schedule setting such
            # as total_kimg may have been raised since) and gains the params it lacks (a run a
            # sweep's trial created with its axis params gets the config's from the worker).
            flat = scrub(flatten(params))
            items = [Param(k, str(v)[:500]) for k, v in flat.items() if k not in logged]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i : i + 100])
        self.run_id = run_id
        return run_id

    def finished_metrics(self) -> dict[str, float] | None:
        """The last metrics of the run with this name if it ended FINISHED (names as reported), else None.

        A finished run is complete: the worker marks it FINISHED only after the last step.
        """
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{self.run_name}'", max_results=1
        )
        if not found or found[0].info.status != "FINISHED":
            return None
        return {reported_name(k): v for k, v in found[0].data.metrics.items()}

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int) -> None:
        if step <= self.logged_through:
            return  # logged by the attempt before a restart (see logged_through)
        items = [
            Metric(mlflow_name(k), float(v), timestamp_ms, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and v == v  # skip NaN
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_snapshot(self, info: dict) -> None:
        """A snapshot (the trainer's on_snapshot info): its grid as a step image under
        GRID_IMAGE_KEY at the run's kimg step, and its sample files as artifacts under samples/."""
        step = kimg_step(info["progress/kimg"])
        if step <= self.logged_through:
            return  # logged by the attempt before a restart (see logged_through)
        if "artifacts/grid" in info:
            from PIL import Image

            with Image.open(info["artifacts/grid"]) as im:
                self.client.log_image(self.run_id, im.convert("RGB"), key=GRID_IMAGE_KEY, step=step)
        for key in SAMPLE_ARTIFACTS:
            if key in info:
                self.log_artifact(info[key], "samples")

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Rows (dicts with the same keys) as an MLflow table: the UI shows it as a table."""
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = {c: [None if r.get(c) is None else r.get(c) if isinstance(r.get(c), (int, float)) else str(r.get(c))
                    for r in rows] for c in columns}  # fmt: skip
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def share_view(self, key: str, search: str, params: list[str], metrics: list[str], group_by: list[str]) -> str:
        """A saved view of the experiment's runs page (what the UI's "Share" button stores: an
        experiment tag holding the view as JSON): the runs matching `search`, with `params` and
        `metrics` (names as reported) as columns, grouped by the params `group_by` (the groups'
        mean in the table and charts). Returns the page's path: #/experiments/<id>/runs?...="""
        import json

        state = {"searchFilter": search, "orderByKey": "attributes.start_time", "orderByAsc": True,
                 "selectedColumns": [f"params.`{p}`" for p in params] + [f"metrics.`{mlflow_name(m)}`" for m in metrics],
                 "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": p}
                                                                              for p in group_by]} if group_by else None,
                 "hideEmptyCharts": True}  # fmt: skip
        self.client.set_experiment_tag(self.experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))
        return f"#/experiments/{self.experiment_id}/runs?viewStateShareKey={key}"

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in scrub(tags).items()])

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)


if __name__ == "__main__":  # python -m orchestration.tracking sync <run folder>
    import sys

    from orchestration.tracking_queue import main

    sys.exit(main())
