"""Export plans and records: what an export computes and where it stands, as plain data (no I/O).

An `ExportPlan` is everything a chunk job and the merge job need (recipe, compositing, scene selection,
output grid, chunking, destination), JSON-serialisable and without reference to the request or to the
server's settings. An `ExportRecord` is a stored export: plan, status, progress, times, jobs, error.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from rasterio.crs import CRS
from rasterio.transform import Affine

from mosaics.cloudmasks import CloudMask
from mosaics.composite import Compositing, Selection
from mosaics.errors import InvalidParameter
from mosaics.grid import Grid
from mosaics.limits import MemoryEstimate
from mosaics.recipe import Recipe
from tiler.exports import chunks as chunking
from tiler.exports.leases import Lease

STATUSES = ("queued", "running", "finished", "failed", "canceled")
ACTIVE = ("queued", "running")
FORMATS = ("cog", "gtiff")
EXECUTORS = ("local", "slurm")
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GTIFF_MEDIA_TYPE = "image/tiff; application=geotiff"
_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"`:,;()\[\]{}<>]+/)+(?=[^\s/])")  # directories of an absolute path


class DestinationConflict(InvalidParameter):
    """The destination exists (without `overwrite`) or another active export writes it. HTTP 409."""


def redact(text: str) -> str:
    """`text` with the directories of absolute paths removed (messages and logs name files, never server paths;
    URLs such as `s3://bucket/key` stay)."""
    return _PATH.sub("", text)


def now() -> str:
    """UTC now, RFC 3339 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    """A new export id: sortable by creation time, unguessable enough."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:10]


@dataclass
class ExportPlan:
    """A validated export: what every chunk job and the merge job need, JSON-serialisable."""

    id: str
    collection: str
    recipe: dict[str, Any]
    compositing: dict[str, Any]
    selection: dict[str, Any]
    read_options: dict[str, Any]
    crs: str
    transform: list[float]
    width: int
    height: int
    chunk_size: int
    format: str
    destination: dict[str, Any]
    descriptions: list[str]
    executor: str
    work_dir: str
    on_error: str = "skip"  # skip or fail
    geometry: dict[str, Any] | None = None  # in the output CRS
    preset: str | None = None
    estimate: dict[str, Any] = field(default_factory=dict)
    items_interval: list[str | None] = field(default_factory=lambda: [None, None])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportPlan:
        data = dict(data)
        if "strict" in data:  # plans stored before `on_error`
            data["on_error"] = "fail" if data.pop("strict") else "skip"
        return cls(**data)

    # --- derived objects ---

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def rasterio_crs(self) -> CRS:
        return CRS.from_user_input(self.crs)

    @property
    def windows(self) -> list[chunking.Window]:
        return chunking.windows(self.width, self.height, self.chunk_size)

    @property
    def chunks_total(self) -> int:
        return len(self.windows)

    def chunk_grid(self, chunk: int) -> Grid:
        """The output grid of chunk `chunk` (a window of the full output grid)."""
        return chunking.window_grid(self.affine, self.rasterio_crs, self.windows[chunk])

    def chunk_transform(self, chunk: int) -> Affine:
        """The transform of chunk `chunk`'s window."""
        return chunking.window_transform(self.affine, self.windows[chunk])

    @property
    def grid(self) -> Grid:
        return chunking.window_grid(self.affine, self.rasterio_crs, chunking.Window(0, 0, self.width, self.height))

    def recipe_object(self) -> Recipe:
        return Recipe(
            assets=tuple(self.recipe["assets"]), expression=self.recipe["expression"], index=self.recipe["index"],
            asset_bidx=tuple((name, tuple(bands)) for name, bands in self.recipe.get("asset_bidx", ())),
        )

    def compositing_object(self) -> Compositing:
        c = self.compositing
        return Compositing(
            c["method"], c["p"], CloudMask.parse(c["cloud_mask"]), c["mask_dilation"], correction=c["correction"]
        )

    def selection_object(self) -> Selection:
        s = self.selection
        interval = None
        if s["datetime"] is not None:
            interval = tuple(None if v is None else datetime.fromisoformat(v) for v in s["datetime"])
        return Selection(
            datetime=interval, max_cloud=s["max_cloud"], sortby=tuple(s["sortby"]), max_items=s["max_items"]
        )

    @property
    def bands(self) -> int:
        return len(self.descriptions)

    @property
    def media_type(self) -> str:
        return COG_MEDIA_TYPE if self.format == "cog" else GTIFF_MEDIA_TYPE

    @property
    def result_href(self) -> str:
        d = self.destination
        return d["path"] if d["kind"] == "local" else f"s3://{d['bucket']}/{d['key']}"


def estimate(
    grid: Grid, resolution: tuple[float, float], bands: int, chunk_size: int, items: int, item_reads: int,
    chunk_memory: MemoryEstimate, area_km2: float,
) -> dict[str, Any]:
    """The `estimate` of a plan: output size, chunks, scenes read and memory per chunk."""
    width, height = grid.width, grid.height
    left, top = grid.bounds[0], grid.bounds[3]
    return {
        "width": width,
        "height": height,
        "pixels": width * height,
        "bands": bands,
        "chunks": len(chunking.windows(width, height, chunk_size)),
        "chunk_size": chunk_size,
        "bytes": width * height * bands * 4,
        "items": items,
        "item_reads": item_reads,
        "memory_per_chunk": chunk_memory.bytes,
        "area_km2": round(area_km2, 3),
        "resolution": list(resolution),
        "crs": grid.crs.to_string(),
        "bounds": [left, top - height * resolution[1], left + width * resolution[0], top],
    }


@dataclass
class ExportRecord:
    """A stored export."""

    id: str
    status: str
    collection: str
    executor: str
    request: dict[str, Any]
    plan: ExportPlan
    created: str
    started: str | None = None
    finished: str | None = None
    jobs: list[str] = field(default_factory=list)
    error: str | None = None
    log_tail: str | None = None
    result: str | None = None
    chunks_total: int = 0
    chunks_done: int = 0
    attempts: int = 0  # local resumes
    created_by: str | None = None  # the submitting caller (tiler.tokens.Caller.principal); None = anonymous
    run: Lease | None = None  # local exports: the process hosting the workers
    merges: int = 0  # merges started (the merge lease's token)
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable scenes: item id → reason
    retries: list[dict[str, Any]] = field(default_factory=list)  # SLURM resubmissions

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def summary(self) -> dict[str, Any]:
        """Status, progress, times, jobs, estimate and outcome, as the API and the CLI show them."""
        total = self.chunks_total or 1
        done = total if self.status == "finished" else self.chunks_done
        return {
            "id": self.id,
            "status": self.status,
            "collection": self.collection,
            "executor": self.executor,
            "jobs": self.jobs,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": {"chunks_done": done, "chunks_total": self.chunks_total, "fraction": round(done / total, 4)},
            "estimate": self.plan.estimate,
            "format": self.plan.format,
            "destination": self.plan.result_href,
            "result": self.result,
            "error": self.error,
            "log_tail": self.log_tail,
            "skipped": self.skipped,
            "merges": self.merges,
            "retries": self.retries,
        }
