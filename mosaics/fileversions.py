"""Versions of asset files, so that a file replaced under an unchanged item JSON changes the cache keys.

Local files: size, mtime, ctime and inode (`os.stat`, microseconds, every time). S3 objects: ETag and
LastModified from a HEAD request, remembered for `s3_ttl` seconds so that cache hits cost no request.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from mosaics.models import Item
from mosaics.s3 import S3_PREFIX, s3_client, split_s3

MISSING = "missing"


def local_version(path: str) -> str:
    """`size:mtime:ctime:inode` of a local file (its target for a symlink), or `missing`."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return MISSING
    except OSError as error:
        return f"error:{error.errno}"
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


def item_hrefs(items: Iterable[Item]) -> list[str]:
    """Every asset href of the items (metadata files too: corrections read them)."""
    return [asset.href for item in items for asset in item.assets.values()]


class FileVersions:
    """File versions of local paths and s3:// URLs; S3 answers cached for `s3_ttl` seconds (LRU-bounded).

    Within `s3_ttl` of a replaced S3 object, tiles may still be computed and keyed as of its old version.
    """

    def __init__(self, s3_ttl: float = 30.0, max_entries: int = 65536):
        self.s3_ttl = s3_ttl
        self.max_entries = max_entries
        self._s3: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._heads: ThreadPoolExecutor | None = None

    def version(self, href: str) -> str:
        """The version of one file."""
        return self.versions([href])[href]

    def versions(self, hrefs: Iterable[str]) -> dict[str, str]:
        """`{href: version}`; S3 objects not seen within the TTL are asked for in parallel."""
        found = {href: self._remembered(href) if href.startswith(S3_PREFIX) else local_version(href) for href in hrefs}
        missing = [href for href, version in found.items() if version is None]
        if len(missing) == 1:
            found[missing[0]] = self._head(missing[0])
        elif missing:
            with self._lock:
                self._heads = self._heads or ThreadPoolExecutor(16, thread_name_prefix="jeo-head")
            found.update(zip(missing, self._heads.map(self._head, missing)))
        return found

    def _remembered(self, url: str) -> str | None:
        with self._lock:
            entry = self._s3.get(url)
        return entry[1] if entry is not None and time.monotonic() - entry[0] < self.s3_ttl else None

    def _head(self, url: str) -> str:
        bucket, key = split_s3(url)
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
            version = f"{head.get('ETag', '')}:{head.get('LastModified', '')}:{head.get('ContentLength', '')}"
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            version = MISSING if status == 404 else f"error:{status}"
        except BotoCoreError as error:
            version = f"error:{type(error).__name__}"
        with self._lock:
            self._s3[url] = (time.monotonic(), version)
            self._s3.move_to_end(url)
            while len(self._s3) > self.max_entries:
                self._s3.popitem(last=False)
        return version


FILE_VERSIONS = FileVersions()  # process-wide: the tile cache keys and the dataset pool agree on versions
