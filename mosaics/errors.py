"""Errors raised by the catalog and the readers; the web layer maps them to HTTP status codes."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TypeVar

# URLs and GDAL virtual paths anywhere; other absolute paths (also quoted ones, which may hold spaces) only
# when their first directory exists on this host, so that URL paths like `/collections/…` stay.
_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|/vsi[a-z0-9_]+/)[^\s'\",;()<>]+", re.IGNORECASE)
_QUOTED_PATH = re.compile(r"(?<=['\"])/[^'\"]+(?=['\"])")
_PATH = re.compile(r"(?<![\w.~/-])/[^\s'\",;:()<>]+")


def _basename(match: re.Match) -> str:
    text = match.group(0)
    if text.startswith("/") and not text.lower().startswith("/vsi"):
        first = text.split("/")[1]
        if not first or not os.path.isdir("/" + first):
            return text
    return text.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "…"


def redact_paths(text: str) -> str:
    """`text` with server file paths and URLs replaced by their last component (for messages sent to clients)."""
    for pattern in (_URL, _QUOTED_PATH, _PATH):
        text = pattern.sub(_basename, text)
    return text


class JeoError(Exception):
    """Base class of jeo-tiler errors."""


class NotFound(JeoError):
    """A named thing (collection, item, asset, preset, ...) does not exist. HTTP 404."""

    def __init__(self, kind: str, name: str, detail: str = ""):
        self.kind, self.name = kind, name
        super().__init__(f"{kind} '{name}' not found" + (f": {detail}" if detail else ""))


class InvalidParameter(JeoError):
    """A request parameter has a bad value. HTTP 400; the message starts with the parameter name."""

    def __init__(self, parameter: str, message: str):
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}")


class CatalogError(JeoError):
    """A STAC document cannot be ingested; names the file and the field."""

    def __init__(self, path: str, field: str, message: str):
        self.path, self.field = path, field
        super().__init__(f"{path}: field '{field}': {message}")


class SceneReadError(JeoError):
    """An item's asset could not be read (missing, truncated or unreadable file). HTTP 502.

    The message names the item and asset; file paths in `cause` are reduced to file names.
    """

    def __init__(self, item_id: str, asset: str, cause: str, skipped: dict[str, str] | None = None):
        self.item_id, self.asset = item_id, asset
        self.skipped = skipped or {}  # with asset "*": each unreadable scene's own error (item id → message)
        super().__init__(f"item '{item_id}' asset '{asset}': {redact_paths(cause)}")


T = TypeVar("T")


def registered(registry: Mapping[str, T], parameter: str, name: str) -> T:
    """`registry[name]`; InvalidParameter naming `parameter` and the registered names otherwise."""
    try:
        return registry[name]
    except KeyError:
        raise InvalidParameter(parameter, f"'{name}' is not one of {', '.join(registry)}") from None
