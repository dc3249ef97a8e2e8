"""MLflow tracking for a run: one MLflow run per (experiment, run name), found again on resume.

Used by rank 0 only. Everything goes through an explicit MlflowClient and run id (no global
active run), so several runs can be tracked from one process (e.g. sweeps).

What a run shows in the MLflow UI: a few params (orchestration/run_params.py; the whole config is
the artifact config.yaml) and its metrics (step = kimg x 1000); its sample grids as step images in
a "samples" section, which the run page shows first: NEWEST_GRID_KEY holds the newest snapshot's
grid (logged at step 0 at every snapshot: the UI's image card opens on step 0 and shows the last
file logged there) and GRID_IMAGE_KEY every snapshot's grid at its kimg step (the card's step
slider); the grids also stay plain artifacts under samples/, with the final turntable and .ply.
The experiments it creates are tagged as model training (EXPERIMENT_KIND); the UI's GenAI / Model
training switch is per browser, so every link this project prints carries TRAINING_VIEW.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestration.config import is_tracking_server

RUN_NAME_TAG = "cgsgan.run_name"
# MLflow's experiment kind for custom model development: the UI (3.x) shows such an experiment's
# runs table and chart view first instead of its GenAI (traces) layout.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key: a runs-page view the UI opens by ?viewStateShareKey=key
# The UI makes a chart section of an image key's part before "/", and puts such sections above
# its "Model metrics": the pictures come first on a run page.
NEWEST_GRID_KEY = "samples/grid"  # the newest snapshot's grid, at step 0
GRID_IMAGE_KEY = "samples/grid_history"  # the snapshot grids, one step image per snapshot
# The UI's query parameter for its model-training layout (the default in a new browser is GenAI).
TRAINING_VIEW = "workflowType=machine_learning"
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


def training_link(path: str) -> str:
    """A UI path or URL (…#/experiments/<id>/…) that opens in the UI's model-training layout."""
    return f"{path}{'&' if '?' in path.split('#')[-1] else '?'}{TRAINING_VIEW}"


CONFIG_ARTIFACT = "config.yaml"  # the run's whole config (core, cluster, storage), at the artifact root

class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifact_root: str | None = None) -> None:
        # MLflow prints its own "View run" links (which open the UI's GenAI layout) when a run on a
        # server ends; finish() prints the training-layout link instead.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = tracking_uri
        self.server = is_tracking_server(tracking_uri)
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

    def log_progress(self, metrics: dict[str, float], kimg: float) -> None:
        """Metrics of a tick or snapshot at the run's step for `kimg`, timestamped now."""
        self.log_metrics(metrics, kimg_step(kimg), int(time.time() * 1000))

    def log_snapshot(self, info: dict) -> None:
        """A snapshot (the trainer's on_snapshot info): its grid as a step image under
        GRID_IMAGE_KEY at the run's kimg step and as the newest grid (NEWEST_GRID_KEY), and its
        sample files as artifacts under samples/."""
        step = kimg_step(info["progress/kimg"])
        if step <= self.logged_through:
            return  # logged by the attempt before a restart (see logged_through)
        if "artifacts/grid" in info:
            from PIL import Image

            with Image.open(info["artifacts/grid"]) as im:
                rgb = im.convert("RGB")
            self.client.log_image(self.run_id, rgb, key=GRID_IMAGE_KEY, step=step)
            self.client.log_image(self.run_id, rgb, key=NEWEST_GRID_KEY, step=0)
        for key in SAMPLE_ARTIFACTS:
            if key in info:
                self.log_artifact(info[key], "samples")

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Rows (dicts with the same keys) as an MLflow table: the UI shows it as a table."""
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = {c: [None if r.get(c) is None else r.get(c) if isinstance(r.get(c), (int, float)) else str(r.get(c))
                    for r in rows] for c in columns}  # fmt: skip
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def share_view(self, key: str, search: str, params: list[str], metrics: list[str], group_by: list[str],
                   sections: Sequence[ChartSection] = ()) -> str:
        """A saved view of the experiment's runs page (what the UI's "Share" button stores: an
        experiment tag holding the view as JSON): the runs matching `search`, with `params` and
        `metrics` (names as reported) as columns, grouped by the params `group_by` (the table shows
        each group's mean). `sections` (of bar_chart, image_chart cards) open the chart view, in
        order, one card a row; the UI adds every other metric's card below them. With sections the
        chart view hides its run list, so that the cards have the page's width (image cards put
        two runs a row in a 1600 px window, not one; the list's toggle at the left edge brings it
        back). The charts draw the runs one by one (the UI's groups carry no images). Returns the
        page's path, #/experiments/<id>/runs?..., in the UI's model-training layout."""
        import json

        state = {"searchFilter": search, "orderByKey": "attributes.start_time", "orderByAsc": True,
                 "selectedColumns": [f"params.`{p}`" for p in params] + [f"metrics.`{mlflow_name(m)}`" for m in metrics],
                 "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": p}
                                                                              for p in group_by]} if group_by else None,
                 "hideEmptyCharts": True}  # fmt: skip
        if sections:
            ids = [f"section-{key}-{i}" for i in range(len(sections))]
            cards = [{**c, "uuid": f"{uuid}-{j}", "metricSectionId": uuid}
                     for uuid, section in zip(ids, sections) for j, c in enumerate(section.charts)]  # fmt: skip
            # The history's card would open on step 0 (the untrained generator): left out here.
            if not any(c.get("imageKeys") == [GRID_IMAGE_KEY] for c in cards):
                cards.append({**image_chart(GRID_IMAGE_KEY), "uuid": f"{ids[0]}-history", "deleted": True,
                              "metricSectionId": ids[0]})  # fmt: skip
            state |= {"isAccordionReordered": True, "useGroupedValuesInCharts": False, "runListHidden": True,
                      "compareRunSections": [{"uuid": uuid, "name": section.name, "display": True, "isReordered": True,
                                              "deleted": False, "isGenerated": False, "columns": 1,
                                              "cardHeight": section.card_height}
                                             for uuid, section in zip(ids, sections)],
                      "compareRunCharts": cards}  # fmt: skip
        self.client.set_experiment_tag(self.experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))
        return training_link(f"#/experiments/{self.experiment_id}/runs?viewStateShareKey={key}")

    def log_config(self, text: str) -> None:
        """The run's whole config as CONFIG_ARTIFACT, once: a continued run keeps the file it has,
        as it keeps its params."""
        if not any(a.path == CONFIG_ARTIFACT for a in self.client.list_artifacts(self.run_id)):
            self.client.log_text(self.run_id, text, CONFIG_ARTIFACT)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in scrub(tags).items()])

    def run_link(self) -> str:
        """The run's page in the UI's model-training layout (a path for a local store)."""
        base = self.tracking_uri.rstrip("/") + "/" if self.server else ""
        return training_link(f"{redact(base)}#/experiments/{self.experiment_id}/runs/{self.run_id}")

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)
            if self.server:
                print(f"MLflow run {self.run_name}: {self.run_link()}", flush=True)


@dataclass(frozen=True)
class ChartSection:
    """A section of a saved view's chart view (Tracker.share_view): its cards, one a row, each
    `card_height` px tall (the UI's height for every card of a section)."""

    name: str
    charts: list[dict]
    card_height: int = 440


IMAGE_CARD_RUNS = 10  # an image card shows the newest 10 runs (MLflow 3.17's chart view)


def image_card_height(runs: int, per_row: int = 2) -> int:
    """The height of an image card that shows `runs` runs' pictures without scrolling: a square
    picture under each run's name, `per_row` a row (two in a 1600 px window with the run list
    hidden; measured: a row takes 380 px, the card's title and step slider 110)."""
    return 110 + 380 * -(-min(runs, IMAGE_CARD_RUNS) // per_row)


def bar_chart(metric: str) -> dict:
    """A chart-view card (Tracker.share_view): `metric`'s last value (name as reported), a bar a run."""
    return {"type": "BAR", "runsCountToCompare": 100, "deleted": False, "isGenerated": False,
            "metricKey": mlflow_name(metric), "displayName": f"{mlflow_name(metric)}, last value"}  # fmt: skip


def image_chart(key: str, step: int = 0) -> dict:
    """A chart-view card (Tracker.share_view): the step image `key` at `step` of every run, side by
    side, under each run's name (without its params)."""
    return {"type": "IMAGE", "runsCountToCompare": 100, "deleted": False, "isGenerated": False, "imageKeys": [key],
            "step": step, "showRunParams": False}  # fmt: skip


if __name__ == "__main__":  # python -m orchestration.tracking sync <run folder>
    import sys

    from orchestration.tracking_queue import main

    sys.exit(main())
