"""Errors raised by the catalog and the readers; the web layer maps them to HTTP status codes."""

from __future__ import annotations


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
    """An item's asset could not be read (missing, truncated or unreadable file)."""

    def __init__(self, item_id: str, asset: str, cause: str):
        self.item_id, self.asset = item_id, asset
        super().__init__(f"item '{item_id}' asset '{asset}': {cause}")
