"""A copy of the real 33TWM time series whose items also have a 3-band 8-bit `visual` asset (Sentinel-2's TCI layout).

`../shared/data` holds one band per file; the L2A products' own `TCI.tif` was not taken. The `visual` COG of each
item is made here from the item's real B04, B03, B02: DN 1–2000 map linearly onto 1–255 (brighter clip at 255),
nodata 0 where the reflectance band has no data, DEFLATE, 256² internal tiles and overviews like the sources. Its
STAC asset has `roles: ["visual"]`, `eo:bands` B04/B03/B02 (red, green, blue) and `raster:bands` uint8, nodata 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

COLLECTION = "sentinel-2-l2a-timeseries"
SOURCES = (("B04", "red"), ("B03", "green"), ("B02", "blue"))


def tci(dn: np.ndarray) -> np.ndarray:
    """8-bit true-colour values of uint16 reflectance DN (0 = nodata stays 0)."""
    scaled = np.clip(np.round(dn.astype(np.float64) * 254 / 2000) + 1, 1, 255).astype(np.uint8)
    return np.where(dn == 0, 0, scaled).astype(np.uint8)


def write_visual(folder: Path) -> None:
    """`folder/visual.tif` from the folder's B04, B03, B02 COGs, written by rio-cogeo like them."""
    import rasterio
    from rasterio.io import MemoryFile
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    with rasterio.open(folder / "B04.tif") as red:
        profile, levels = red.profile, len(red.overviews(1))
    bands = []
    for name, _ in SOURCES:
        with rasterio.open(folder / f"{name}.tif") as src:
            bands.append(tci(src.read(1)))
    profile.update(driver="GTiff", count=3, dtype="uint8", nodata=0)
    with MemoryFile() as memory, memory.open(**profile) as stacked:
        stacked.write(np.stack(bands))
        stacked.descriptions = tuple(name for name, _ in SOURCES)
        cog = cog_profiles.get("deflate")
        cog.update(blockxsize=256, blockysize=256, predictor=2)
        cog_translate(stacked, str(folder / "visual.tif"), cog, overview_level=levels, overview_resampling="average",
                      in_memory=True, quiet=True)  # fmt: skip


def visual_asset(template: dict) -> dict:
    """The STAC asset of `visual.tif`, its grid fields taken from a reflectance asset of the same item."""
    return {
        "href": "./visual.tif",
        "type": template["type"],
        "title": "True colour image (TCI-like, 8-bit)",
        "roles": ["visual"],
        "eo:bands": [{"name": name, "common_name": common} for name, common in SOURCES],
        "gsd": template["gsd"],
        "proj:shape": template["proj:shape"],
        "proj:transform": template["proj:transform"],
        "raster:bands": [{"nodata": 0, "data_type": "uint8"} for _ in SOURCES],
    }


def make_visual_catalog(shared_data: Path, out: Path) -> Path:
    """Copy the time series collection to `out/<collection>` with a `visual` asset per item; returns the folder."""
    folder = out / COLLECTION
    shutil.copytree(shared_data / COLLECTION, folder)
    for path in sorted(folder.glob("*/*_L2A.json")):
        write_visual(path.parent)
        doc = json.loads(path.read_text())
        doc["assets"]["visual"] = visual_asset(doc["assets"]["red"])
        path.write_text(json.dumps(doc, indent=1))
    return folder
