"""infra/s3/bootstrap.py against stubbed S3 responses (botocore Stubber, no network): the
handling of endpoints that lack an API, and rule merging. The real round trip against a moto
server is in tests/integration/test_infra_local.py."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from infra.s3.bootstrap import RULE_ID, BootstrapError, bootstrap, lifecycle_rule, put_lifecycle

BUCKET = "cgsgan-unit"


@pytest.fixture
def client():
    c = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(c) as stub:
        c.stub = stub
        yield c
        stub.assert_no_pending_responses()


def test_lifecycle_rule_shape_and_validation():
    rule = lifecycle_rule("runs/", 30, 7, 3)
    assert rule == {
        "ID": RULE_ID, "Filter": {"Prefix": "runs/"}, "Status": "Enabled", "Expiration": {"Days": 30},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 7}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3},
    }  # fmt: skip
    with pytest.raises(BootstrapError):
        lifecycle_rule("runs/", 0, 7, 7)


def stub_existing_bucket_without_public_access_block_api(client, rules):
    client.stub.add_response("head_bucket", {}, {"Bucket": BUCKET})
    client.stub.add_client_error("get_public_access_block", "NotImplemented", http_status_code=501)
    client.stub.add_response("get_bucket_versioning", {"Status": "Enabled"}, {"Bucket": BUCKET})
    client.stub.add_response("get_bucket_lifecycle_configuration", {"Rules": rules}, {"Bucket": BUCKET})


def test_an_endpoint_without_public_access_block_is_reported_not_fatal(client):
    """MinIO, for one, answers NotImplemented: the other steps still run."""
    stub_existing_bucket_without_public_access_block_api(client, [lifecycle_rule("runs/", 30, 7, 7)])
    state = bootstrap(client, BUCKET, "us-east-1")
    assert (state.bucket_status, state.public_access_block, state.versioning, state.lifecycle) == (
        "exists", "unsupported", "unchanged", "unchanged",
    )  # fmt: skip
    assert len(state.warnings) == 1 and "public_access_block" in state.warnings[0]


def test_strict_mode_fails_on_a_missing_api(client):
    client.stub.add_response("head_bucket", {}, {"Bucket": BUCKET})
    client.stub.add_client_error("get_public_access_block", "NotImplemented", http_status_code=501)
    with pytest.raises(BootstrapError, match="public_access_block"):
        bootstrap(client, BUCKET, "us-east-1", strict=True)


def test_other_errors_are_not_mistaken_for_a_missing_api(client):
    from botocore.exceptions import ClientError

    client.stub.add_response("head_bucket", {}, {"Bucket": BUCKET})
    client.stub.add_client_error("get_public_access_block", "AccessDenied", http_status_code=403)
    with pytest.raises(ClientError):
        bootstrap(client, BUCKET, "us-east-1")


def test_put_lifecycle_replaces_only_its_own_rule(client):
    other = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 3}}
    old = lifecycle_rule("runs/", 60, 7, 7)
    new = lifecycle_rule("runs/", 30, 7, 7)
    client.stub.add_response("get_bucket_lifecycle_configuration", {"Rules": [other, old]}, {"Bucket": BUCKET})
    client.stub.add_response(
        "put_bucket_lifecycle_configuration", {},
        {"Bucket": BUCKET, "LifecycleConfiguration": {"Rules": [other, new]}},
    )  # fmt: skip
    assert put_lifecycle(client, BUCKET, new) == "set"
