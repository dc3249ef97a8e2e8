"""Fixtures for the local stack (infra/local/stack.py), shared by every integration test.

- `s3_server`: a moto S3 endpoint on 127.0.0.1 with the bucket `cgsgan-test` (`s3_server.bucket`);
  `s3_server.env()` gives the AWS_* variables a client needs.
- `mlflow_server`: an `mlflow server` on 127.0.0.1 whose artifacts are proxied into
  s3://cgsgan-test/mlflow on that endpoint; `mlflow_server.tracking_uri`.

Both are session-scoped (one of each per test run) and stopped, process groups and all, at the end.
"""

from __future__ import annotations

import pytest

from infra.local.stack import MlflowServer, S3Server, create_bucket, start_mlflow, start_s3

TEST_BUCKET = "cgsgan-test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    server = start_s3(workdir=tmp_path_factory.mktemp("s3"))
    try:
        create_bucket(server.endpoint_url, TEST_BUCKET)
        server.bucket = TEST_BUCKET
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(s3_server: S3Server, tmp_path_factory) -> MlflowServer:
    server = start_mlflow(None, tmp_path_factory.mktemp("mlflow"), s3_server, s3_server.bucket, prefix="mlflow")
    try:
        yield server
    finally:
        server.stop()
