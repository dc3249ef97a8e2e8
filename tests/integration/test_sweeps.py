"""sweeps/ablate.py end to end with a real `mlflow server` (artifacts in the local S3) and Ray:
a 2-trial sweep, its MLflow parent/child hierarchy, the trials' params, step images, system
metrics and logged generator, the parent's tables, interrupt + resume without re-running finished
trials, and the MLflow UI (headless Chromium) showing the trials; and a sweep with the defaults
(local tracking) keeping every trial in its own store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestration.tracking import GRID_IMAGE_KEY, NEWEST_GRID_KEY
from tests.integration import mlflow_ui
from tests.integration.procs import kill_tree, ray_tmpdir, stop_ray
from tests.integration.launching import TINY_RUN

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SHORT = [
    *TINY_RUN,
    "train.total_kimg=0.048",
    "train.snapshot_ticks=3", "train.checkpoint_ticks=3",
    "sweep.views=[1,2]", "sweep.camera_mode=[d_projection]", "sweep.seeds=[0]", "sweep.max_concurrent=1",
    "tracking.system_metrics_interval_s=1",
]  # fmt: skip


def sweep_cmd(out: Path, tracking: str, name: str) -> list[str]:
    return [sys.executable, "sweeps/ablate.py", *SHORT, f"output_dir={out}", f"tracking.uri={tracking}",
            f"sweep.name={name}"]  # fmt: skip


def env_for(s3_server, tmp_path, ray_tmp: Path) -> dict:
    """The sweep's local Ray lives in `ray_tmp` (RAY_TMPDIR), so the test can stop it and only it."""
    env = {**os.environ, **s3_server.env(), "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_tmp),
           "CGSGAN_DATA_CACHE": os.environ.get("CGSGAN_DATA_CACHE", str(tmp_path / "cache"))}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    return env


def sweep_runs(tracking: str, name: str):
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("cgsgan")
    parent = client.search_runs([exp.experiment_id], filter_string=f"tags.`cgsgan.sweep` = '{name}'")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.sweep = '{name}'")
    return client, exp, parent, children


@pytest.fixture(scope="module")
def finished_sweep(s3_server, mlflow_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    ray_tmp = ray_tmpdir()
    try:
        out = subprocess.run(sweep_cmd(tmp / "out", mlflow_server.tracking_uri, "itest"), cwd=ROOT,
                             env=env_for(s3_server, tmp, ray_tmp), capture_output=True, text=True, timeout=1200)  # fmt: skip
    finally:
        stop_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    return tmp, out


def test_two_trial_sweep_ends_with_table_and_plot(finished_sweep):
    tmp, out = finished_sweep
    report = tmp / "out" / "sweeps" / "itest"
    table = (report / "comparison.md").read_text()
    assert "v1-avg1-d_projection-bgrandom-s0" in table and "v2-avg1-d_projection-bgrandom-s0" in table
    assert (report / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert table in out.stdout  # printed at the end


def test_mlflow_holds_one_parent_and_a_child_per_trial(finished_sweep, mlflow_server, tmp_path):
    client, exp, parents, children = sweep_runs(mlflow_server.tracking_uri, "itest")
    assert len(parents) == 1 and len(children) == 2
    pid = parents[0].info.run_id
    assert all(c.data.tags["mlflow.parentRunId"] == pid for c in children)
    assert sorted(c.data.tags["axis.views"] for c in children) == ["1", "2"]
    # the params are the few that runs are searched and grouped on; the whole config is config.yaml
    for c in children:
        assert set(c.data.params) == {"views", "grad_averaging", "camera_mode", "background", "seed", "preset",
                                      "run_name", "config_hash"}, sorted(c.data.params)  # fmt: skip
        config = Path(client.download_artifacts(c.info.run_id, "config.yaml", str(tmp_path / c.info.run_id)))
        assert "num_views: " + c.data.params["views"] in config.read_text()
    # every axis and the seed as a param of the same name in every trial: the UI's search finds one
    for c in children:
        assert {k: c.data.params[k] for k in ("views", "grad_averaging", "camera_mode", "background", "seed")} == \
            {"views": c.data.tags["axis.views"], "grad_averaging": "True", "camera_mode": "d_projection",
             "background": "random", "seed": "0"}  # fmt: skip
    found = client.search_runs([exp.experiment_id], filter_string="params.views = '2' and tags.sweep = 'itest'")
    assert [r.info.run_id for r in found] == [c.info.run_id for c in children if c.data.params["views"] == "2"]
    artifacts = {a.path for a in client.list_artifacts(pid, "comparison")}
    assert {"comparison/comparison.csv", "comparison/comparison.md", "comparison/comparison.png",
            "comparison/trials.json", "comparison/differences.json"} <= artifacts  # fmt: skip
    # the parent's MLflow table: one row per trial with its axes, metrics and verdict
    table = json.loads(Path(client.download_artifacts(pid, "comparison/trials.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert sorted(r["views"] for r in rows) == [1, 2] and all(r["metrics/fid_synth"] > 0 for r in rows)
    assert [r["verdict"] for r in rows] == ["reference", "views=2: too few seeds"]  # one seed: no verdict
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens it as model training


def test_trials_log_grids_as_step_images_system_metrics_and_their_generator(finished_sweep, mlflow_server, tmp_path):
    client, exp, _, children = sweep_runs(mlflow_server.tracking_uri, "itest")
    versions = {v.run_id: v for v in client.search_model_versions("name='cgsgan-tiny'")}
    for c in children:
        run_id = c.info.run_id
        steps = {int(a.path.split("+step+")[1].split("+")[0]) for a in client.list_artifacts(run_id, "images")
                 if a.path.startswith(f"images/{GRID_IMAGE_KEY.replace('/', '~')}+") and a.path.endswith(".png")}  # fmt: skip
        assert steps == {0, 48}, f"{c.info.run_name}: grid steps {steps}"  # kimg 0 and 0.048
        assert {"samples/turntable.gif", "samples/sample-seed0.ply"} <= {a.path for a in client.list_artifacts(run_id, "samples")}
        assert "system/worker0/cpu_utilization_percentage" in c.data.metrics
        assert "system/worker0/system_memory_usage_megabytes" in c.data.metrics
        assert versions[run_id].source == f"runs:/{run_id}/generator"  # one registered version per run
    # the logged model loads in a fresh process by its run URI and draws heads from (seed, yaw)
    uri = f"runs:/{children[0].info.run_id}/generator"
    load = ("import mlflow, pandas as pd, sys; m = mlflow.pyfunc.load_model(sys.argv[1]); "
            "print(m.predict(pd.DataFrame({'seed': [0, 1], 'yaw': [0.0, 30.0]})).shape)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", load, uri], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri})  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("(2, 64, 64, 3)"), out.stderr[-3000:]
    # and cgsgan.generate takes the same URI (and the registered model's) as its checkpoint
    for model in (uri, f"models:/cgsgan-tiny/{versions[children[0].info.run_id].version}"):
        gen = subprocess.run([sys.executable, "-m", "cgsgan.generate", "--checkpoint", model, "--seeds", "0-1",
                              "--out", str(tmp_path / "gen")], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri})  # fmt: skip
        assert gen.returncode == 0 and (tmp_path / "gen" / "grid.png").exists(), gen.stderr[-3000:]
        (tmp_path / "gen" / "grid.png").unlink()


def test_mlflow_ui_shows_the_trials_their_params_and_the_sweep_table(finished_sweep, mlflow_server, tmp_path):
    """In a real browser (headless Chromium): the sweep's view of the experiment page lists every
    child run with its axis params (grouped by the axis that varies), its chart view opens on the
    headline metric and then every trial's newest grid, side by side in the screenshot, and the
    parent's MLflow table shows its rows. The screenshots are kept in test-artifacts/."""
    browser = mlflow_ui.chromium()
    pages = mlflow_ui.SweepPages(mlflow_server.tracking_uri, "itest")
    assert len(pages.children) == 2

    runs = mlflow_ui.page(browser, pages.shared_view("itest"), ARTIFACTS / "mlflow-sweep-runs.png", budget_ms=60000,
                          size="2000,700")  # fmt: skip
    text = " ".join(runs.split())
    for c in pages.children:
        assert c.info.run_name in text, f"child run {c.info.run_name} is not on the sweep's page"
    for column in ("views", "grad_averaging", "camera_mode", "background", "seed", "metrics.fid_synth"):
        assert column in text, f"no column {column} on the sweep's page"
    assert "Group: 1" in text and "Group: 2" in text  # grouped by the axis that varies: views

    # The sweep's chart view opens on the sections the sweep chose: the headline metric, then every
    # trial's newest grid (a screenshot; docs/mlflow-chart-view.png comes from here).
    html = mlflow_ui.dom(browser, pages.shared_view("itest", "CHART"), 60000, "1600,1400")
    shot = ARTIFACTS / "mlflow-chart-view.png"
    mlflow_ui.screenshot(browser, pages.shared_view("itest", "CHART"), shot, 60000, "1600,1400")
    first, second = mlflow_ui.sections(html)[:2]
    assert first.startswith("sweep itest: ") and first.endswith(" by trial"), mlflow_ui.sections(html)
    assert second == "sweep itest: the newest grids", mlflow_ui.sections(html)
    # In the screenshot, each trial's newest grid is drawn whole, in one row beside the other's.
    found = []
    for child in pages.children:
        newest = pages.grids(child.info.run_id, NEWEST_GRID_KEY)[0]
        found.append(mlflow_ui.locate(shot, pages.picture(child.info.run_id, newest, tmp_path / child.info.run_id)))
    (score_a, ya, xa), (score_b, yb, xb) = found
    assert min(score_a, score_b) > 0.9 and abs(ya - yb) <= 4 and abs(xa - xb) > 200, found
    assert "Group by: views" in mlflow_ui.text(html)
    assert "Model training" in mlflow_ui.text(html) and "Evaluations" not in mlflow_ui.text(html)
    printed = [line for line in finished_sweep[1].stdout.splitlines() if "viewStateShareKey=sweep-itest" in line]
    assert printed and all(line.endswith("&workflowType=machine_learning") for line in printed), printed
    table = mlflow_ui.page(browser, pages.artifact(pages.parent.info.run_id, "comparison/trials.json"),
                           ARTIFACTS / "mlflow-sweep-table.png", budget_ms=60000, size="1600,900")  # fmt: skip
    text = " ".join(table.split())
    assert "comparison/trials.json" in text and "View as table" in text
    assert "v2-avg1-d_projection-bgrandom-s0" in text  # the parent's MLflow table, row by row


def test_mlflow_ui_run_page_shows_the_newest_grid_first(finished_sweep, mlflow_server, tmp_path):
    """In a real browser (headless Chromium): a trial's run page (model metrics tab) opens on its
    pictures. In the screenshot the first card shows the newest grid: its pixels differ from a
    blank card and correlate with the logged grid of the last snapshot (resized), far better than
    with the first snapshot's. Beside it the history card's step slider spans the snapshots, a
    mark each. The screenshot (cropped to the first rows; the whole page beside it) is kept in
    test-artifacts/."""
    import numpy as np

    browser = mlflow_ui.chromium()
    pages = mlflow_ui.SweepPages(mlflow_server.tracking_uri, "itest")
    run_id = pages.children[0].info.run_id
    grids = pages.grids(run_id)
    assert len(grids) > 1, f"grid steps {sorted(grids)}"

    shot, card, html = mlflow_ui.run_page_shot(browser, pages, run_id, ARTIFACTS)  # None card: fails there
    assert card.index == 0, f"the newest grid is card {card.index}, not the first"
    crop = mlflow_ui.card_crop(ARTIFACTS / "mlflow-run-page-full.png", card)
    assert np.abs(crop.astype(int) - 255).mean() > 5, "the card is blank"  # 11 measured
    newest = mlflow_ui.picture_match(crop, pages.picture(run_id, grids[max(grids)], tmp_path))
    first = mlflow_ui.picture_match(crop, pages.picture(run_id, grids[min(grids)], tmp_path))
    blank = mlflow_ui.picture_match(np.full_like(crop, 255), pages.picture(run_id, grids[max(grids)], tmp_path))
    # measured on a 2-trial sweep: newest 0.87, first 0.61, blank 0.00 (the card hides the grid's lower rows)
    assert newest > 0.8 and newest > first + 0.15 and blank < 0.5, (newest, first, blank)

    history = mlflow_ui.image_card(html, GRID_IMAGE_KEY)
    assert history is not None and history.index == 1
    assert (history.first_step, history.last_step, history.marks) == (min(grids), max(grids), len(grids)), history
    assert pages.children[0].info.run_name in mlflow_ui.text(html)
    assert shot.stat().st_size > 10_000


def test_a_local_sweep_keeps_every_trial_in_its_own_store(tmp_path):
    """The defaults (tracking=local, storage=local, the default sweep name) with a relative
    output_dir, run from another folder: every child run is in the sweep's own SQLite store under
    its parent, with its metrics and its grids (as step images and as files), and nothing the
    project writes lies under Ray's temp dir (where Tune gives each trial its working directory).
    Then another grid under the same name is refused before anything starts, the first sweep's
    files and MLflow runs untouched."""
    ray_tmp = ray_tmpdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_tmp),
           "CGSGAN_DATA_CACHE": os.environ.get("CGSGAN_DATA_CACHE", str(tmp_path / "cache"))}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        out = subprocess.run([sys.executable, str(ROOT / "sweeps" / "ablate.py"), *SHORT, "output_dir=outputs"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)  # fmt: skip
        assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
        results = tmp_path / "outputs" / "sweeps" / "camera"
        kept = {p: p.read_bytes() for p in results.iterdir()}
        runs = sweep_runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "camera")
        before = {r.info.run_id: (r.info.status, r.info.end_time) for r in [*runs[2], *runs[3]]}
        other = [*[a for a in SHORT if not a.startswith("sweep.views=")], "sweep.views=[4,1,2]",
                 "sweep.grad_averaging=[true,false]"]  # fmt: skip
        again = subprocess.run([sys.executable, str(ROOT / "sweeps" / "ablate.py"), *other, "output_dir=outputs"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        written = [p for p in ray_tmp.rglob("*") if p.name == "mlflow.db" or p.name == "metrics.jsonl"
                   or p.suffix in (".png", ".ply", ".gif") or p.name in ("mlartifacts", "outputs")]  # fmt: skip
    finally:
        stop_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not written, f"written under Ray's temp dir: {written[:5]}"
    errors = [ln for ln in again.stderr.splitlines() if ln.startswith("error:")]
    assert again.returncode == 2 and len(errors) == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "sweep.views: [1, 2] -> [4, 1, 2]" in errors[0] and "sweep.name=<name>" in errors[0], errors
    assert "trial" not in again.stdout
    assert {p: p.read_bytes() for p in results.iterdir()} == kept  # the finished sweep's files as they were
    store = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    runs = sweep_runs(store, "camera")
    assert {r.info.run_id: (r.info.status, r.info.end_time) for r in [*runs[2], *runs[3]]} == before
    client, exp, parents, children = sweep_runs(store, "camera")
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    for c in children:
        assert c.info.status == "FINISHED" and "metrics.fid_synth" in c.data.metrics
        assert {"views", "seed", "camera_mode"} <= set(c.data.params)
        steps = {int(a.path.split("+step+")[1].split("+")[0]) for a in client.list_artifacts(c.info.run_id, "images")
                 if a.path.endswith(".png")}  # fmt: skip
        assert len(steps) > 1, f"{c.info.run_name}: grid image steps {steps}"
        assert any(a.path.endswith(".png") for a in client.list_artifacts(c.info.run_id, "samples"))
        assert (tmp_path / "outputs" / "runs" / c.info.run_name / "metrics.jsonl").exists()
    assert {e.name for e in client.search_experiments()} <= {"cgsgan", "Default"}  # MLflow makes "Default" itself
    assert (results / "comparison.md").exists()


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(s3_server, mlflow_server, tmp_path):
    ray_tmp = ray_tmpdir()
    try:
        interrupt_and_resume(s3_server, mlflow_server, tmp_path, ray_tmp)
    finally:
        stop_ray(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def interrupt_and_resume(s3_server, mlflow_server, tmp_path, ray_tmp):
    env = env_for(s3_server, tmp_path, ray_tmp)
    cmd = sweep_cmd(tmp_path / "out", mlflow_server.tracking_uri, "resume")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 900
        while True:  # the first trial finished -> interrupt the sweep
            _, _, _, children = sweep_runs(mlflow_server.tracking_uri, "resume")
            if any(c.info.status == "FINISHED" for c in children):
                break
            assert proc.poll() is None and time.time() < deadline, "sweep ended before it could be interrupted"
            time.sleep(2)
    finally:
        kill_tree(proc.pid)  # the sweep driver we started, its local Ray and the trials
        proc.wait(timeout=60)
    stop_ray(ray_tmp)  # anything of that Ray that left the tree
    _, _, _, before = sweep_runs(mlflow_server.tracking_uri, "resume")
    done = {c.info.run_id: c.info.end_time for c in before if c.info.status == "FINISHED"}

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-5000:]
    assert "resuming sweep" in again.stdout
    _, _, parents, after = sweep_runs(mlflow_server.tracking_uri, "resume")
    assert len(after) == 2 and all(c.info.status == "FINISHED" for c in after)
    for c in after:
        if c.info.run_id in done:  # a finished trial was not trained again
            assert c.info.end_time == done[c.info.run_id]
