"""S3 for catalogs and asset versions: `s3://` URLs and one boto3 client per endpoint."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3

S3_PREFIX = "s3://"


@cache
def _s3_client(endpoint_url: str | None) -> Any:
    return boto3.client("s3", endpoint_url=endpoint_url)


def s3_client() -> Any:
    """boto3 S3 client; endpoint from ``JEO_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``, else boto3 defaults."""
    return _s3_client(os.environ.get("JEO_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None)


def split_s3(url: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://bucket/key` URL."""
    bucket, _, key = url[len(S3_PREFIX) :].partition("/")
    return bucket, key
