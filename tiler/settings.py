"""Settings from `JEO_*` environment variables, or from a dotenv-style file named by `JEO_CONFIG`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Every setting is `JEO_<NAME>` in the environment (e.g. `JEO_HOME`, `JEO_PORT`).

    Settings that change tile responses are part of the tile cache keys by their name prefix
    (`tiler.cache.TILE_SETTINGS`: `composite_`, `max_`, `cache_control_`, …).
    """

    model_config = SettingsConfigDict(env_prefix="JEO_", env_file=os.environ.get("JEO_CONFIG"), extra="ignore")

    home: Path = Field(Path.home() / ".local" / "share" / "jeo-tiler", description="State directory.")
    database: Path | None = Field(None, description="Catalog SQLite file; default `$JEO_HOME/catalog.db`.")
    catalog_url: str | None = Field(
        None, description="`postgresql://user:password@host:port/db`: catalog (pgSTAC), access tables and export "
        "records in PostgreSQL, shared by every server using the same URL; default: the SQLite `database`."
    )
    presets: Path | None = Field(None, description="TOML file of extra presets, merged over the shipped ones.")
    static_dir: Path = Field(REPO_ROOT / "node_modules", description="npm packages served under /static (Leaflet, OpenLayers).")
    host: str = Field("127.0.0.1", description="`jeo serve` bind address.")
    port: int = Field(8000, description="`jeo serve` port.")
    workers: int = Field(1, description="`jeo serve` worker processes.")
    root_path: str = Field(
        "", description="Public path prefix when served behind a reverse proxy that strips it (e.g. `/jeo`): "
        "links, TileJSON and WMTS URLs carry it (uvicorn's `root_path`)."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Comma-separated proxy addresses or networks whose `X-Forwarded-Proto`/`-For` "
        "are trusted (uvicorn's `forwarded_allow_ips`; `*` trusts every client)."
    )
    attribution: str = Field("Contains modified Copernicus Sentinel data", description="TileJSON/WMTS attribution.")
    cors_origins: str = Field(
        "*", description="Comma-separated origins that may read (GET, HEAD: tiles, STAC, WMTS) cross-origin; `*` = any."
    )
    cors_write_origins: str = Field(
        "", description="Comma-separated origins that may POST/DELETE (exports) cross-origin; empty = same origin only."
    )
    composite_max_items: int = Field(20, description="Default number of scenes per composite tile (`max_items`).")
    composite_max_items_cap: int = Field(100, description="Largest `max_items` a request may ask for.")
    composite_minzoom: int = Field(6, description="Lowest zoom served for composites (WebMercatorQuad-like zooms).")
    max_buffer: float = Field(64, description="Largest tile `buffer` (pixels on each side).")
    max_padding: int = Field(64, description="Largest tile `padding` (pixels).")
    max_tile_size: int = Field(1024, description="Largest tile in pixels: `tilesize`, or 256 × `scale`.")
    max_image_size: int = Field(4096, description="Largest preview/part `width`, `height` and `max_size` (pixels).")
    max_output_bands: int = Field(16, description="Most output bands of a recipe (`assets`, `;`-separated `expression`).")
    request_max_bytes: int = Field(
        512 * 2**20,
        description="Memory bound of one tile, point, preview or part: (scenes × bands read incl. masks + output "
        "bands) × pixels incl. buffer and mask-dilation margin × 4 bytes (`mosaics.limits`).",
    )
    request_budget_bytes: int = Field(
        2 * 2**30,
        description="Per-process budget: the memory bounds of the requests computed at once add up to at most this; "
        "further requests wait their turn.",
    )
    request_budget_wait: float = Field(
        10.0, description="Seconds a request waits for budget before it is answered 503 with `Retry-After`."
    )
    cache_dir: Path | None = Field(None, description="Tile cache directory; default `$JEO_HOME/tile-cache`.")
    cache_size_mb: int = Field(1024, description="Tile cache size limit in MiB (0 disables the cache).")
    cache_write_queue_mb: int = Field(
        64, ge=1, description="Rendered tiles waiting to be stored in the tile cache, in MiB; beyond it tiles are served unstored."
    )
    cache_control_item: str = Field(
        "public, max-age=86400", description="Cache-Control of single-item tiles (immutable per item version)."
    )
    cache_control_fixed: str = Field(
        "public, max-age=86400", description="Cache-Control of composite tiles with a closed datetime interval."
    )
    cache_control_latest: str = Field(
        "public, max-age=300", description="Cache-Control of composite tiles over open or default date ranges."
    )
    s3_version_ttl: float = Field(
        30.0, description="Seconds an S3 asset's ETag/LastModified (part of tile cache keys) is reused before asking again."
    )
    read_threads: int = Field(8, description="Threads per process reading scene windows (GDAL releases the GIL).")
    processing_max_pixels: int = Field(
        4096 * 4096, description="Largest output grid of an area subset, statistics or time series (width × height)."
    )
    jwt_issuer: str | None = Field(
        None, description="Also accept JWTs of this issuer (`iss`) from a site identity provider, e.g. "
        "`https://sso.example.org/realms/jeo`; needs `JEO_JWT_JWKS_URL` or `JEO_JWT_PUBLIC_KEY` (extra `sso`)."
    )
    jwt_jwks_url: str | None = Field(
        None, description="JWKS URL of the issuer's signing keys (Keycloak: `<issuer>/protocol/openid-connect/certs`)."
    )
    jwt_public_key: str | None = Field(None, description="PEM public key verifying JWTs (instead of `JEO_JWT_JWKS_URL`).")
    jwt_audience: str | None = Field(None, description="Required `aud` of JWTs (not checked when unset).")
    jwt_algorithms: str = Field("RS256,ES256", description="Comma-separated JWT signature algorithms accepted.")
    jwt_collections_claim: str = Field(
        "jeo_collections", description="JWT claim listing the restricted collections granted (list, or space- or "
        "comma-separated; `*` = every collection)."
    )
    jwt_exports_claim: str = Field("jeo_exports", description="JWT claim that, when true, lets the caller submit exports.")
    anonymous_exports: bool = Field(
        True, description="Callers without a token may submit exports (shared by all of them); "
        "set false on a shared server so that only tokens created with `--exports` can."
    )
    ingest_allowed_roots: str = Field(
        "", description="Comma-separated folders and `s3://bucket[/prefix]` URLs where `jeo ingest` also accepts "
        "asset hrefs and links (besides the ingested document's own folder or prefix); symlinks count by their target.",
    )
    stac_asset_base_url: str | None = Field(
        None, description="Base URL that STAC responses join asset hrefs (relative to their ingest root) to, "
        "e.g. `https://data.example.org/eo/`; unset: the relative hrefs, so no server path is shown.",
    )

    # --- exports (tiler/exports) ---
    export_root: Path | None = Field(None, description="Export results named by a plain `destination`; default `$JEO_HOME/exports`.")
    export_work_dir: Path | None = Field(
        None, description="Per-export chunks, logs and batch scripts (shared with SLURM nodes); default `$JEO_HOME/exports-work`."
    )
    export_executor: str = Field("local", description="Default export executor: `local` or `slurm`.")
    export_executors: str = Field("local,slurm", description="Comma-separated executors a request may choose.")
    export_local_workers: int = Field(2, description="Worker processes of the `local` export executor.")
    export_chunk_size: int = Field(2048, description="Chunk width and height in output pixels (a multiple of 256).")
    export_max_chunk_size: int = Field(8192, description="Largest `chunk_size` a request may ask for.")
    export_chunk_max_bytes: int = Field(
        4 * 2**30, description="Memory bound per chunk, same formula as `JEO_REQUEST_MAX_BYTES` (`mosaics.limits`)."
    )
    export_max_pixels: int = Field(1_600_000_000, description="Largest export in output pixels (width × height).")
    export_max_area_km2: float = Field(1_000_000.0, description="Largest export area in km².")
    export_max_bytes: int = Field(
        256 * 2**30, description="Largest export in uncompressed bytes (width × height × bands × 4, `estimate.bytes`)."
    )
    export_on_error: Literal["skip", "fail"] = Field(
        "skip", description="Default `on_error`: an unreadable scene is skipped and named (skip), or fails the export (fail)."
    )
    export_resume_local: bool = Field(True, description="Resume `local` exports interrupted by a restart (else fail them).")
    export_lease_timeout: float = Field(
        60.0, description="Seconds without a heartbeat after which a process on another host that runs or merges an "
        "export counts as dead, and another server takes the export over.",
    )
    export_slurm_retries: int = Field(
        2, description="Times a chunk or merge job that ends NODE_FAIL or PREEMPTED is resubmitted before the export fails."
    )
    export_poll_interval: float = Field(2.0, description="Seconds between export status reconciliations.")
    export_slurm_partition: str | None = Field(None, description="sbatch --partition for export jobs.")
    export_slurm_account: str | None = Field(None, description="sbatch --account for export jobs.")
    export_slurm_time: str | None = Field(None, description="sbatch --time per chunk job (e.g. 01:00:00).")
    export_slurm_merge_time: str | None = Field(None, description="sbatch --time of the merge job.")
    export_slurm_mem: str | None = Field(None, description="sbatch --mem per chunk job (e.g. 8G).")
    export_slurm_merge_mem: str | None = Field(None, description="sbatch --mem of the merge job.")
    export_slurm_cpus_per_task: int = Field(
        1, description="sbatch --cpus-per-task per chunk job; its kernel and read threads (JEO_READ_THREADS) follow."
    )
    export_slurm_max_parallel: int = Field(4, description="Array throttle: at most this many chunk jobs at once (`%N`).")
    export_slurm_extra: str = Field("", description="Extra sbatch options, shell-quoted (e.g. `--qos=low --nice=10`).")
    export_s3_endpoint_url: str | None = Field(None, description="S3 endpoint for `s3://` destinations (default: boto3's).")
    export_s3_region: str | None = Field(None, description="S3 region for `s3://` destinations (default: boto3's).")
    export_s3_presign_seconds: int = Field(3600, description="Lifetime of presigned result URLs.")

    @field_validator("catalog_url")
    @classmethod
    def _postgres_only(cls, url: str | None) -> str | None:
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"JEO_CATALOG_URL must be a postgresql:// URL, not {url.split(':', 1)[0]}://…")
        return url or None

    @property
    def cache_path(self) -> Path:
        """Where the tile cache lives."""
        return self.cache_dir or self.home / "tile-cache"

    @property
    def database_path(self) -> Path:
        """Where the SQLite catalog lives."""
        return self.database or self.home / "catalog.db"

    @property
    def allowed_roots(self) -> tuple[str, ...]:
        """`ingest_allowed_roots` as a tuple."""
        return tuple(root.strip() for root in self.ingest_allowed_roots.split(",") if root.strip())

    @property
    def catalog_location(self) -> str | Path:
        """The catalog and records database: `catalog_url`, else the SQLite file."""
        return self.catalog_url or self.database_path

    @property
    def export_root_path(self) -> Path:
        """Where exports with a plain destination name are written."""
        return self.export_root or self.home / "exports"

    @property
    def export_work_path(self) -> Path:
        """Where export chunks, logs and batch scripts live."""
        return self.export_work_dir or self.home / "exports-work"


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings (read once)."""
    return Settings()
