"""Settings from `JEO_*` environment variables, or from a dotenv-style file named by `JEO_CONFIG`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Every setting is `JEO_<NAME>` in the environment (e.g. `JEO_HOME`, `JEO_PORT`)."""

    model_config = SettingsConfigDict(env_prefix="JEO_", env_file=os.environ.get("JEO_CONFIG"), extra="ignore")

    home: Path = Field(Path.home() / ".local" / "share" / "jeo-tiler", description="State directory.")
    database: Path | None = Field(None, description="Catalog SQLite file; default `$JEO_HOME/catalog.db`.")
    presets: Path | None = Field(None, description="TOML file of extra presets, merged over the shipped ones.")
    static_dir: Path = Field(REPO_ROOT / "node_modules", description="npm packages served under /static (Leaflet, OpenLayers).")
    host: str = Field("127.0.0.1", description="`jeo serve` bind address.")
    port: int = Field(8000, description="`jeo serve` port.")
    workers: int = Field(1, description="`jeo serve` worker processes.")
    attribution: str = Field("Contains modified Copernicus Sentinel data", description="TileJSON/WMTS attribution.")
    cors_origins: str = Field("*", description="Comma-separated allowed CORS origins.")
    composite_max_items: int = Field(20, description="Default number of scenes per composite tile (`max_items`).")
    composite_max_items_cap: int = Field(100, description="Largest `max_items` a request may ask for.")
    composite_minzoom: int = Field(6, description="Lowest zoom served for composites (WebMercatorQuad-like zooms).")
    composite_max_bytes: int = Field(
        512 * 2**20, description="Memory limit per composite request: items × bands × tile pixels × 4 bytes."
    )
    read_threads: int = Field(8, description="Threads per process reading scene windows (GDAL releases the GIL).")

    @property
    def database_path(self) -> Path:
        """Where the catalog lives."""
        return self.database or self.home / "catalog.db"


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings (read once)."""
    return Settings()
