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
