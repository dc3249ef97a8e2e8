"""The MLflow tracker against a local SQLite store: one run per run name, found again on
resume; a finished run's last metrics come back under the names they were reported with."""

from __future__ import annotations

from orchestration.tracking import Tracker


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
