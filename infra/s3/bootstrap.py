"""Create and harden the S3 bucket that holds checkpoints (Ray Train storage) and MLflow artifacts.

    python infra/s3/bootstrap.py --bucket cgsgan [--endpoint-url URL] [--region us-east-1] \
        [--prefix runs/] [--expire-checkpoints-days 30] [--noncurrent-days 7]

What it does, each step idempotent (a second run changes nothing and raises nothing):

1. creates the bucket if it does not exist (in --region);
2. blocks all public access (the bucket-level PublicAccessBlock, all four flags on);
3. enables versioning, so an overwritten or deleted object stays recoverable for a while;
4. puts one lifecycle rule (ID `cgsgan-expire-checkpoints`) that, under --prefix, expires
   current objects after --expire-checkpoints-days, deletes non-current versions after
   --noncurrent-days and aborts multipart uploads left unfinished for --abort-multipart-days.
   Rules with other IDs already on the bucket are kept.

The default prefix `runs/` is where `storage=s3` puts Ray Train runs
(orchestration/conf/storage/s3.yaml: s3://cgsgan/runs). MLflow artifacts (mlflow/ in the local
stack) are not under it and never expire. Beware: a run paused for longer than the expiry loses
its checkpoints (the current version turns into a delete marker; the data stays recoverable
for --noncurrent-days more).

Credentials come from the usual boto3 chain (instance profile, IRSA, SSO, env); none are taken
on the command line. Endpoints that do not implement an API (MinIO has no PublicAccessBlock, for
one) get a warning and the step is reported as "unsupported"; --strict turns that into an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field

import boto3
from botocore.exceptions import ClientError

RULE_ID = "cgsgan-expire-checkpoints"
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
# Error codes by which an S3-compatible endpoint says "I do not have this API".
UNSUPPORTED_CODES = {"NotImplemented", "NotImplementedError", "MethodNotAllowed", "XNotImplemented"}


class BootstrapError(RuntimeError):
    pass


@dataclass
class BucketState:
    """What bootstrap did or found, step by step: "created"/"exists", "set"/"unchanged", "unsupported"."""

    bucket: str
    bucket_status: str = ""
    public_access_block: str = ""
    versioning: str = ""
    lifecycle: str = ""
    warnings: list[str] = field(default_factory=list)


def error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def make_client(endpoint_url: str | None = None, region: str | None = None):
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)


def lifecycle_rule(prefix: str, expire_days: int, noncurrent_days: int, abort_multipart_days: int) -> dict:
    if expire_days < 1 or noncurrent_days < 1 or abort_multipart_days < 1:
        raise BootstrapError("lifecycle days must be >= 1")
    return {
        "ID": RULE_ID,
        "Filter": {"Prefix": prefix},
        "Status": "Enabled",
        "Expiration": {"Days": expire_days},
        "NoncurrentVersionExpiration": {"NoncurrentDays": noncurrent_days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_multipart_days},
    }


def bucket_exists(client, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except ClientError as e:
        if error_code(e) in ("404", "NoSuchBucket", "NotFound"):
            return False
        if error_code(e) in ("403", "AccessDenied", "Forbidden"):
            raise BootstrapError(f"bucket {bucket} exists but these credentials may not use it (403)") from e
        raise


def ensure_bucket(client, bucket: str, region: str | None) -> str:
    if bucket_exists(client, bucket):
        return "exists"
    kwargs: dict = {"Bucket": bucket}
    if region and region != "us-east-1":  # us-east-1 takes no LocationConstraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as e:
        if error_code(e) == "BucketAlreadyOwnedByYou":  # created in between
            return "exists"
        if error_code(e) == "BucketAlreadyExists":
            raise BootstrapError(f"bucket name {bucket} is taken by another account") from e
        raise
    client.get_waiter("bucket_exists").wait(Bucket=bucket, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    return "created"


def _unsupported(state: BucketState, step: str, e: ClientError, strict: bool) -> str:
    msg = f"{step}: the endpoint does not support it ({error_code(e)}); skipped"
    if strict:
        raise BootstrapError(msg) from e
    print(f"warning: {msg}", file=sys.stderr)
    state.warnings.append(msg)
    return "unsupported"


def block_public_access(client, bucket: str) -> str:
    try:
        current = client.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except ClientError as e:
        if error_code(e) != "NoSuchPublicAccessBlockConfiguration":
            raise
        current = {}
    if all(current.get(k) is True for k in PUBLIC_ACCESS_BLOCK):
        return "unchanged"
    client.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=dict(PUBLIC_ACCESS_BLOCK))
    return "set"


def enable_versioning(client, bucket: str) -> str:
    if client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled":
        return "unchanged"
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return "set"


def get_lifecycle_rules(client, bucket: str) -> list[dict]:
    try:
        return client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as e:
        if error_code(e) == "NoSuchLifecycleConfiguration":
            return []
        raise


def _same_rule(a: dict, b: dict) -> bool:
    keys = ("ID", "Filter", "Status", "Expiration", "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload")
    return all(a.get(k) == b.get(k) for k in keys)


def put_lifecycle(client, bucket: str, rule: dict) -> str:
    """Put our rule, keeping every rule with another ID (PutBucketLifecycleConfiguration replaces
    the whole configuration)."""
    rules = get_lifecycle_rules(client, bucket)
    ours = [r for r in rules if r.get("ID") == rule["ID"]]
    if len(ours) == 1 and _same_rule(ours[0], rule):
        return "unchanged"
    others = [r for r in rules if r.get("ID") != rule["ID"]]
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [*others, rule]})
    return "set"


def bootstrap(
    client,
    bucket: str,
    region: str | None = None,
    prefix: str = "runs/",
    expire_days: int = 30,
    noncurrent_days: int = 7,
    abort_multipart_days: int = 7,
    strict: bool = False,
) -> BucketState:
    """All four steps; returns what each did."""
    rule = lifecycle_rule(prefix, expire_days, noncurrent_days, abort_multipart_days)
    state = BucketState(bucket=bucket)
    state.bucket_status = ensure_bucket(client, bucket, region)
    steps = (
        ("public_access_block", lambda: block_public_access(client, bucket)),
        ("versioning", lambda: enable_versioning(client, bucket)),
        ("lifecycle", lambda: put_lifecycle(client, bucket, rule)),
    )
    for name, step in steps:
        try:
            result = step()
        except ClientError as e:
            if error_code(e) not in UNSUPPORTED_CODES:
                raise
            result = _unsupported(state, name, e, strict)
        setattr(state, name, result)
    return state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bucket", required=True)
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS, or $AWS_ENDPOINT_URL)")
    p.add_argument("--region", default=None, help="bucket region (default: the boto3 default region)")
    p.add_argument("--prefix", default="runs/", help="key prefix the expiry applies to (default: runs/)")
    p.add_argument("--expire-checkpoints-days", type=int, default=30)
    p.add_argument("--noncurrent-days", type=int, default=7, help="delete non-current versions after this many days")
    p.add_argument("--abort-multipart-days", type=int, default=7)
    p.add_argument("--strict", action="store_true", help="fail if the endpoint lacks one of the APIs")
    a = p.parse_args(argv)
    client = make_client(a.endpoint_url, a.region)
    region = a.region or client.meta.region_name
    try:
        state = bootstrap(client, a.bucket, region, a.prefix, a.expire_checkpoints_days, a.noncurrent_days,
                          a.abort_multipart_days, a.strict)  # fmt: skip
    except (BootstrapError, ClientError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(state), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
