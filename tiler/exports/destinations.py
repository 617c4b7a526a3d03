"""Where results go: a file under the export root, or an S3 object (boto3).

A destination is a plan's `destination` dict: `{"kind": "local", "path", "name", "overwrite"}` or
`{"kind": "s3", "bucket", "key", "overwrite", "endpoint_url", "region"}`. Delivered results carry the id of
their export (a GeoTIFF tag, S3 metadata), so that a result can be told from whatever else is there.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import rasterio
import rasterio.errors

from mosaics.errors import InvalidParameter
from tiler.exports.plan import DestinationConflict, ExportPlan, redact
from tiler.exports.workdir import staged_result

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){0,7}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REFUSE = "; set overwrite: true to replace it"


def resolve(
    text: str | None, export_id: str, overwrite: bool, *, root: Path, s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
) -> dict[str, Any]:
    """The destination named by `text` (a file name under `root`, or `s3://bucket/prefix`; default
    `<export_id>.tif`); InvalidParameter('destination') if it is not a valid one, DestinationConflict if something
    is there already (unless `overwrite`)."""
    text = (text or "").strip()
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://"):].partition("/")
        if not _BUCKET.match(bucket):
            raise InvalidParameter("destination", f"'{bucket}' is not a valid S3 bucket name")
        if ".." in prefix.split("/") or "//" in prefix:
            raise InvalidParameter("destination", f"bad S3 key prefix '{prefix}'")
        if prefix.lower().endswith((".tif", ".tiff")):
            key = prefix
        else:
            key = (prefix.rstrip("/") + "/" if prefix.strip("/") else "") + f"{export_id}.tif"
        destination = {
            "kind": "s3", "bucket": bucket, "key": key, "overwrite": overwrite,
            "endpoint_url": s3_endpoint_url, "region": s3_region,
        }  # fmt: skip
        check_bucket(destination)
        try:
            present = delivered_by(destination)
        except Exception as error:  # noqa: BLE001 - botocore's errors: the message says what
            raise InvalidParameter("destination", f"cannot check 's3://{bucket}/{key}': {redact(str(error))}") from None
        if present is not None and not overwrite:
            raise DestinationConflict("destination", f"'s3://{bucket}/{key}' already exists{_REFUSE}")
        return destination
    if text.startswith("s3:"):
        raise InvalidParameter("destination", f"'{text}': S3 destinations are s3://bucket/prefix")
    name = text or f"{export_id}.tif"
    if not _NAME.match(name):
        raise InvalidParameter(
            "destination", f"'{name}' must be a relative file name (letters, digits, . _ - and /, no '..') or s3://bucket/prefix"
        )
    if not name.lower().endswith((".tif", ".tiff")):
        name += ".tif"
    root = root.resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise InvalidParameter("destination", f"'{name}' is outside the export root")
    if path.is_dir() or any(parent.is_file() for parent in path.parents if root in parent.parents):
        raise InvalidParameter("destination", f"'{name}' is a directory, or inside a file")
    if path.exists() and not overwrite:
        raise DestinationConflict("destination", f"'{name}' already exists{_REFUSE}")
    return {"kind": "local", "path": str(path), "name": name, "overwrite": overwrite}


# --- S3 -------------------------------------------------------------------------------------------


def s3_client(destination: dict[str, Any]):
    """A boto3 S3 client for a destination: endpoint and region from the plan, credentials from boto3's chain."""
    import boto3
    from botocore.config import Config

    endpoint = destination.get("endpoint_url") or None
    config = Config(
        s3={"addressing_style": "path"} if endpoint else {},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=120,
        signature_version="s3v4",
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name=destination.get("region") or None, config=config)


def check_bucket(destination: dict[str, Any]) -> None:
    """InvalidParameter('destination') unless the bucket exists and is reachable with our credentials."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client(destination).head_bucket(Bucket=destination["bucket"])
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        reason = {"404": "does not exist", "NoSuchBucket": "does not exist", "403": "access denied"}.get(code, str(error))
        raise InvalidParameter("destination", f"bucket '{destination['bucket']}' {reason}") from None
    except (BotoCoreError, ValueError) as error:
        raise InvalidParameter("destination", f"bucket '{destination['bucket']}' is not reachable: {error}") from None


def presign(destination: dict[str, Any], seconds: int) -> str:
    """A presigned GET URL of the delivered object."""
    return s3_client(destination).generate_presigned_url(
        "get_object", Params={"Bucket": destination["bucket"], "Key": destination["key"]}, ExpiresIn=seconds
    )


# --- results ----------------------------------------------------------------------------------------


def delivered_by(destination: dict[str, Any]) -> str | None:
    """The id of the export whose result is at `destination` ("" if the file is not an export's; None if nothing
    is there)."""
    if destination["kind"] == "local":
        path = Path(destination["path"])
        if not path.exists():
            return None
        try:
            with rasterio.open(path) as src:
                return src.tags().get("JEO_EXPORT_ID", "")
        except rasterio.errors.RasterioError:
            return ""
    from botocore.exceptions import ClientError

    try:
        head = s3_client(destination).head_object(Bucket=destination["bucket"], Key=destination["key"])
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head.get("Metadata", {}).get("jeo-export-id", "")


def delete_result(plan: ExportPlan) -> None:
    """Remove a delivered result (after a cancel that raced the merge)."""
    destination = plan.destination
    if destination["kind"] == "local":
        Path(destination["path"]).unlink(missing_ok=True)
    else:
        s3_client(destination).delete_object(Bucket=destination["bucket"], Key=destination["key"])


def _link(part: Path, target: Path, conflict: Exception) -> None:
    """Put `part` at `target` unless something is there (a hard link fails if the target exists)."""
    try:
        os.link(part, target)
    except FileExistsError:
        raise conflict from None
    except OSError:  # a file system without hard links: check, then rename
        if target.exists():
            raise conflict from None
        os.replace(part, target)


def deliver(plan: ExportPlan, output: Path) -> str:
    """Move the result into the export root, or upload it to S3; its href. Without `overwrite`, whatever appeared
    at the destination meanwhile stays (DestinationConflict), unless it is this export's own result (delivered by an
    earlier, interrupted merge)."""
    destination = plan.destination
    href = plan.result_href
    shown = destination.get("name") or href
    previous = delivered_by(destination)
    replace = bool(destination.get("overwrite")) or previous == plan.id
    if previous is not None and not replace:
        raise DestinationConflict("destination", f"'{shown}' appeared while the export ran: not overwritten")
    conflict = DestinationConflict("destination", f"'{shown}' appeared during the delivery: not overwritten")
    if destination["kind"] == "local":
        target = Path(destination["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        part = staged_result(plan)
        shutil.move(str(output), part)  # may cross file systems; the rename or link below is atomic
        try:
            if replace:
                os.replace(part, target)
            else:
                _link(part, target, conflict)
        finally:
            part.unlink(missing_ok=True)
        return href
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(destination)
    extra = {"ContentType": plan.media_type, "Metadata": {"jeo-export-id": plan.id}}
    try:
        if replace or output.stat().st_size > 5 * 2**30:  # larger objects need a multipart upload
            client.upload_file(str(output), destination["bucket"], destination["key"], ExtraArgs=extra)
        else:
            with open(output, "rb") as body:
                client.put_object(Bucket=destination["bucket"], Key=destination["key"], Body=body, IfNoneMatch="*", **extra)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise conflict from None
        raise RuntimeError(f"upload to {href} failed: {error}") from None
    except (BotoCoreError, OSError) as error:
        raise RuntimeError(f"upload to {href} failed: {error}") from None
    return href
