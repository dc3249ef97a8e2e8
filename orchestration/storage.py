"""Checks the checkpoint storage before any worker starts, and builds Ray's view of it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlparse


class StorageError(RuntimeError):
    """The storage location cannot be used; the message says which and why."""


def s3_endpoint(endpoint_url: str = "") -> str | None:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def check_storage(path: str, endpoint_url: str = "", create_bucket: bool = False) -> None:
    """Local folder: create it. S3: the bucket exists (or is created) and accepts a write."""
    if not path.startswith("s3://"):
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            probe = Path(path) / f".write-probe-{uuid.uuid4().hex}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise StorageError(f"storage.path={path!r} is not writable: {e}") from e
        return

    import boto3
    import botocore.config
    import botocore.exceptions

    parsed = urlparse(path)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    endpoint = s3_endpoint(endpoint_url)
    where = f"s3://{bucket}" + (f" at {endpoint}" if endpoint else "")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
    )
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.EndpointConnectionError as e:
        raise StorageError(f"storage.path={path!r}: cannot reach the S3 endpoint {endpoint or 'AWS'}: {e}") from e
    except botocore.exceptions.NoCredentialsError as e:
        raise StorageError(f"storage.path={path!r}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance profile)") from e
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound") and create_bucket:
            try:
                client.create_bucket(Bucket=bucket)
            except botocore.exceptions.ClientError as e2:
                raise StorageError(f"storage.path={path!r}: could not create bucket {where}: {e2}") from e2
        elif code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(
                f"storage.path={path!r}: bucket {where} does not exist (create it, e.g. infra/s3/bootstrap.py, "
                "or pass storage.create_bucket=true)"
            ) from e
        else:
            raise StorageError(f"storage.path={path!r}: cannot access bucket {where}: {e}") from e
    except Exception as e:  # e.g. connection refused surfaces as other botocore errors
        raise StorageError(f"storage.path={path!r}: cannot reach {where}: {type(e).__name__}: {e}") from e
    key = f"{prefix}/.write-probe-{uuid.uuid4().hex}".lstrip("/")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"ok")
        client.delete_object(Bucket=bucket, Key=key)
    except Exception as e:
        raise StorageError(f"storage.path={path!r}: bucket {where} is not writable: {e}") from e


def ray_storage(path: str, endpoint_url: str = "") -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) for Ray's RunConfig; a custom endpoint needs a pyarrow FS
    (the same one the workers read checkpoints through: cgsgan.training.checkpoint)."""
    endpoint = s3_endpoint(endpoint_url)
    if not path.startswith("s3://") or not endpoint:
        return path, None
    from cgsgan.training.checkpoint import checkpoint_filesystem

    fs, fs_path = checkpoint_filesystem(path, endpoint)
    return fs_path, fs
