"""Shared fixtures: the real data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real Sentinel-2 / Landsat 8 STAC catalog; tests fail (not skip) without it."""
    if not (SHARED_DATA / "catalog.json").exists():
        pytest.fail(f"real test data missing: {SHARED_DATA}/catalog.json")
    return SHARED_DATA
