"""One line per tick on the console (README): Ray's and MLflow's routine chatter kept off it,
their warnings and errors left on. Called where a launch starts (`quiet_console`, before Ray or
MLflow start there) and in every worker (`quiet_worker_loggers`)."""

from __future__ import annotations

import logging
import os

# Settings read when Ray / MLflow start (setdefault: a value the user exported wins).
QUIET_ENV = {
    # MLflow logs its database creation and migrations at INFO in every new SQLite store.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # Ray Train's PreemptionWatcher actor (max_restarts=-1, constructor arguments holding actor
    # handles) makes Ray's core worker log an error line on every run. It only feeds
    # `ray.train.get_preemption_info`, which this project never reads: a preempted node still
    # fails its workers and Ray retries them under FailureConfig. Read by Ray Train's controller,
    # to which Ray passes it from the driver's environment.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}

# Set only when this process starts its own local Ray: Ray warns on every such start that token
# authentication is off unless the mode is set explicitly. Off is what a local Ray is anyway (a
# cluster's own setting is never overridden: a Ray we connect to keeps its mode).
LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled"}


def quiet_console() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    quiet_worker_loggers()


def quiet_worker_loggers() -> None:
    """Ray Train logs every `ray.train.report` ("Reporting training result N: TrainingReport(...)",
    all metrics) and every checkpoint ("Checkpoint successfully created at: ...") at INFO on the
    console: two long lines per tick beside the tick line. MLflow and alembic log the tracking
    store's creation at INFO. Keep them to warnings and above."""
    from ray.train.v2._internal.execution import context, storage

    for name in (context.__file__, storage.__name__):  # the report logger is named after its file
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
