"""The MLflow tracker against a local SQLite store: one run per run name, found again on
resume; a finished run's last metrics come back under the names they were reported with; the
experiment's kind, snapshot grids as step images, params added to a continued run, tables."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from orchestration.tracking import (EXPERIMENT_KIND, GRID_IMAGE_KEY, NEWEST_GRID_KEY, ChartSection, Tracker, bar_chart,
                                    image_card_height, image_chart)


def test_a_run_name_maps_to_one_run_and_its_finished_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = Tracker(uri, "cgsgan", "run-a")
    run_id = first.start(params={"train": {"g_lr": 0.002}, "storage": {"secret_key": "x"}})
    first.log_metrics({"metrics/fid_synth": 0.5, "progress/kimg": 1.0}, step=1000, timestamp_ms=1)
    assert first.finished_metrics() is None  # still running: a sweep must train it
    first.log_metrics({"metrics/fid_synth": 0.25, "progress/kimg": 2.0}, step=2000, timestamp_ms=2)
    first.finish()

    again = Tracker(uri, "cgsgan", "run-a")
    assert again.finished_metrics() == {"metrics/fid_synth": 0.25, "progress/kimg": 2.0}
    assert again.start() == run_id  # resumed, not a second run
    assert Tracker(uri, "cgsgan", "run-b").finished_metrics() is None
    params = again.client.get_run(run_id).data.params
    assert params == {"train.g_lr": "0.002"}  # the credential-looking key is not logged

    failed = Tracker(uri, "cgsgan", "run-c")
    failed.start()
    failed.finish("FAILED")
    assert failed.finished_metrics() is None


def test_a_restart_from_an_older_checkpoint_never_logs_a_step_backwards(tmp_path):
    """A kill between a tick's log and Ray recording its checkpoint restarts the run from the
    checkpoint before: the ticks it trains again must not put steps back into the history."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = Tracker(uri, "cgsgan", "run-r")
    run_id = first.start()
    for step in (16, 32, 48):
        first.log_metrics({"progress/kimg": step / 1000, "loss/G": 1.0}, step=step, timestamp_ms=step)

    again = Tracker(uri, "cgsgan", "run-r")  # the restarted worker, resumed from the checkpoint at 16
    assert again.start(run_id) == run_id
    for step in (32, 48, 64):
        again.log_metrics({"progress/kimg": step / 1000, "loss/G": 2.0}, step=step, timestamp_ms=1000 + step)

    for name in ("progress.kimg", "loss.G"):
        history = sorted(again.client.get_metric_history(run_id, name), key=lambda m: m.timestamp)
        assert [m.step for m in history] == [16, 32, 48, 64]
    loss = {m.step: m.value for m in again.client.get_metric_history(run_id, "loss.G")}
    assert loss == {16: 1.0, 32: 1.0, 48: 1.0, 64: 2.0}  # the first attempt's values stand


def test_experiments_open_as_model_training_in_the_ui(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "cgsgan", "run-k")
    assert tracker.client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND[0]] == "custom_model_development"


def test_snapshot_grids_are_step_images_and_samples_stay_artifacts(tmp_path):
    """Each snapshot's grid under one image key at the run's kimg step (the UI's image chart and
    step slider read the images/ folder's <key>+step+<step>+... names); the files stay artifacts."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "cgsgan", "run-i", (tmp_path / "mlartifacts").as_uri())
    run_id = tracker.start()
    for kimg in (0.0, 0.048):
        grid = tmp_path / f"grid-{kimg:08.3f}kimg.png"
        Image.fromarray(np.full((8, 16, 3), int(kimg * 1000), np.uint8)).save(grid)
        info = {"artifacts/grid": str(grid), "progress/kimg": kimg}
        if kimg:
            (tmp_path / "turntable.gif").write_bytes(b"GIF89a")
            info["artifacts/turntable"] = str(tmp_path / "turntable.gif")
        tracker.log_snapshot(info)
    images = [a.path for a in tracker.client.list_artifacts(run_id, "images")]
    steps = sorted(int(p.split("+step+")[1].split("+")[0]) for p in images
                   if p.startswith(f"images/{GRID_IMAGE_KEY.replace('/', '~')}+") and p.endswith(".png"))  # fmt: skip
    assert steps == [0, 48]
    # The newest grid: at step 0, where the UI's card opens; of the files there it shows the last
    # listed (the artifact listing is sorted, and the names carry the time they were logged).
    newest = [p for p in images if p.startswith(f"images/{NEWEST_GRID_KEY.replace('/', '~')}+step+0+")
              and p.endswith(".png")]  # fmt: skip
    assert len(newest) == 2 and newest == sorted(newest)
    shown = tracker.client.download_artifacts(run_id, newest[-1], str(tmp_path))
    assert np.asarray(Image.open(shown)).max() == 48  # the grid of kimg 0.048, not the first one
    samples = {a.path for a in tracker.client.list_artifacts(run_id, "samples")}
    assert samples == {"samples/grid-0000.000kimg.png", "samples/grid-0000.048kimg.png", "samples/turntable.gif"}

    again = Tracker(uri, "cgsgan", "run-i")  # a restart: the steps logged before are not logged again
    tracker.log_metrics({"progress/kimg": 0.048}, step=48, timestamp_ms=1)
    again.start(run_id)
    again.log_snapshot({"artifacts/grid": str(tmp_path / "grid-0000.048kimg.png"), "progress/kimg": 0.048})
    assert len(again.client.list_artifacts(run_id, "images")) == len(images)


def test_a_continued_run_gains_the_params_it_lacks_and_keeps_its_values(tmp_path):
    """A sweep's trial creates its child run with the axes as params; the worker continues it
    with the config's params (and a raised total_kimg does not clash with the value logged); the
    config file is logged once, like the params."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = Tracker(uri, "cgsgan", "trial").start(params={"camera_mode": "d_none", "seed": "0"})
    worker = Tracker(uri, "cgsgan", "trial")
    assert worker.start(params={"train": {"total_kimg": 4.0}, "camera_mode": "d_none"}) == run_id
    Tracker(uri, "cgsgan", "trial").start(run_id, params={"train": {"total_kimg": 8.0}})
    params = worker.client.get_run(run_id).data.params
    assert params == {"camera_mode": "d_none", "seed": "0", "train.total_kimg": "4.0"}
    # and the whole config, config.yaml, the first attempt's
    worker.log_config("a: 1\n")
    worker.log_config("a: 2\n")
    assert worker.client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl")) and \
        (tmp_path / "dl" / "config.yaml").read_text() == "a: 1\n"  # fmt: skip


def test_tables_are_mlflow_tables(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "cgsgan", "sweep", (tmp_path / "mlartifacts").as_uri())
    run_id = tracker.start()
    tracker.log_table([{"trial": "a", "fid": 1.5, "verdict": "reference"}, {"trial": "b", "fid": None}], "c/t.json")
    table = json.loads((tmp_path / "mlartifacts" / run_id / "artifacts" / "c" / "t.json").read_text())
    assert table["columns"] == ["trial", "fid", "verdict"] and table["data"][0] == ["a", 1.5, "reference"]
    assert "c/t.json" in tracker.client.get_run(run_id).data.tags.get("mlflow.loggedArtifacts", "")


def test_a_shared_view_lists_runs_with_their_axis_params_grouped(tmp_path):
    """The UI opens #/experiments/<id>/runs?viewStateShareKey=<key> from the experiment tag
    mlflow.sharedViewState.<key> (JSON): the filter, the columns, the grouping."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "cgsgan", "sweep-x")
    sections = [ChartSection("sweep x: FID by trial", [bar_chart("metrics/fid_synth")]),
                ChartSection("sweep x: the newest grids", [image_chart(NEWEST_GRID_KEY)], image_card_height(3))]
    path = tracker.share_view("sweep-x", "tags.sweep = 'x'", ["views", "seed"], ["metrics/fid_synth"], ["views"],
                              sections)  # fmt: skip
    assert path == f"#/experiments/{tracker.experiment_id}/runs?viewStateShareKey=sweep-x&workflowType=machine_learning"
    state = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags["mlflow.sharedViewState.sweep-x"])
    assert state["searchFilter"] == "tags.sweep = 'x'"
    assert state["selectedColumns"] == ["params.`views`", "params.`seed`", "metrics.`metrics.fid_synth`"]
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "views"}]
    # The chart view's sections (kept first: isAccordionReordered), in order: the headline metric,
    # then the newest grids in a card tall enough for two rows of pictures; drawn run by run (the
    # UI's groups carry no images), the run list hidden so that the cards have the page's width.
    assert state["isAccordionReordered"] and not state["useGroupedValuesInCharts"] and state["runListHidden"]
    assert [(s["name"], s["cardHeight"], s["columns"]) for s in state["compareRunSections"]] == \
        [("sweep x: FID by trial", 440, 1), ("sweep x: the newest grids", 110 + 2 * 380, 1)]  # fmt: skip
    shown = [[(c["type"], c.get("metricKey"), c.get("imageKeys")) for c in state["compareRunCharts"]
              if c["metricSectionId"] == s["uuid"] and not c["deleted"]] for s in state["compareRunSections"]]  # fmt: skip
    assert shown == [[("BAR", "metrics.fid_synth", None)], [("IMAGE", None, [NEWEST_GRID_KEY])]]
    assert len({c["uuid"] for c in state["compareRunCharts"]}) == len(state["compareRunCharts"])


def test_an_image_card_is_as_tall_as_its_rows_of_pictures():
    assert image_card_height(1) == image_card_height(2) == 490
    assert image_card_height(3) == image_card_height(4) == 870
    assert image_card_height(50) == image_card_height(10)  # the UI shows the newest 10 runs


def test_links_open_the_training_layout():
    from orchestration.tracking import training_link

    assert training_link("http://h:5000/#/experiments/1/runs?a=b") == \
        "http://h:5000/#/experiments/1/runs?a=b&workflowType=machine_learning"  # fmt: skip
    assert training_link("#/experiments/1/runs/r") == "#/experiments/1/runs/r?workflowType=machine_learning"
