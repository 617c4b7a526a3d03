#!/usr/bin/env python3
"""Rendering: titiler's `render_image` (GDAL drivers) vs jeo-tiler's `tiler/render.py`, and PNG encoders, on real tiles.

    .venv/bin/python benchmarks/render.py [--quick] [--synthetic /tmp/jeo-benchdata-quick]

The inputs are what the tile endpoints render: their own `.npy` output (bands + mask, before rendering) for
true colour and NDVI item tiles and median composites of the real Sentinel-2 L2A set (../shared/data), and
with `--synthetic <make_data.py folder converted by stac_from_bench.py>` median composites of that set too
(noisier pixels: larger PNGs). They come from the app in this process (starlette's TestClient, tile cache off).

Reported per input and format: median ms of the whole rendering (rescale, colormap, encoding) with titiler's
`render_image` and with jeo-tiler's, the speed-up, and the bytes of each; then, for 8-bit RGBA PNG, the
encoders alone (GDAL at zlib level 6 = titiler's, GDAL level 1, Pillow, imagecodecs/libpng with filter
choices) with size relative to titiler's. Each timing is the median of `--repeat` runs on a copy of the input.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"
REAL = "sentinel-2-l2a-timeseries"
REAL_ITEM = "S2B_33TWM_20230813_0_L2A"
REAL_TILES = [(9, 277, 181), (10, 555, 363), (11, 1113, 727), (11, 1112, 728), (12, 2227, 1455)]


def inputs(client, synthetic: dict | None, quick: bool) -> list[tuple[str, object, dict]]:
    """(label, ImageData, render options) from the endpoints' `.npy` tiles."""
    from rio_tiler.colormap import cmap
    from rio_tiler.models import ImageData

    def fetch(path: str, params: dict) -> ImageData | None:
        response = client.get(path + ".npy", params=params)
        if response.status_code != 200:
            return None
        stacked = np.load(io.BytesIO(response.content))
        valid = stacked[-1] > 0
        return ImageData(np.ma.MaskedArray(stacked[:-1], mask=np.broadcast_to(~valid, stacked[:-1].shape)))

    cases = {
        "real true colour": (f"/collections/{REAL}/items/{REAL_ITEM}/tiles/WebMercatorQuad",
                             {"assets": "B04,B03,B02"}, {"rescale": [(0, 0.3)]}),
        "real NDVI + colormap": (f"/collections/{REAL}/items/{REAL_ITEM}/tiles/WebMercatorQuad",
                                 {"index": "ndvi"}, {"rescale": [(-1, 1)], "colormap": cmap.get("rdylgn")}),
        "real median composite": (f"/collections/{REAL}/tiles/WebMercatorQuad",
                                  {"assets": "red,green,blue", "method": "median", "cloud_mask": "scl"},
                                  {"rescale": [(0, 0.3)]}),
    }
    tiles = {label: REAL_TILES[:3] if quick else REAL_TILES for label in cases}
    if synthetic:
        label = f"synthetic median composite ({synthetic['collection']})"
        cases[label] = (f"/collections/{synthetic['collection']}/tiles/WebMercatorQuad",
                        {"assets": "red,green,blue", "method": "median", "cloud_mask": "cloud_probability:0.5"},
                        {"rescale": [(0, 0.3)]})
        tiles[label] = synthetic["tiles"][: 3 if quick else 8]
    out = []
    for label, (base, params, options) in cases.items():
        for z, x, y in tiles[label]:
            image = fetch(f"{base}/{z}/{x}/{y}", params)
            if image is not None:
                out.append((label, image, options))
    return out


def timed(function, image, repeat: int) -> tuple[float, bytes]:
    """Median ms of `function(copy of image)` and its bytes."""
    times, content = [], b""
    for _ in range(repeat):
        work = copy.deepcopy(image)
        start = time.perf_counter()
        content = function(work)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), content


def png_encoders() -> dict:
    """8-bit PNG encoders: (bands, rows, cols) data + alpha mask -> bytes."""
    import imagecodecs
    from rio_tiler.utils import render

    def hwc(data, mask):
        return np.ascontiguousarray(np.concatenate([data, mask[None]]).transpose(1, 2, 0))

    encoders = {
        "GDAL zlevel 6, adaptive filters (titiler)": lambda d, m: render(d, m, img_format="PNG", zlevel=6),
        "GDAL zlevel 1, adaptive filters": lambda d, m: render(d, m, img_format="PNG", zlevel=1),
        "libpng level 6, adaptive (imagecodecs)": lambda d, m: imagecodecs.png_encode(hwc(d, m), level=6),
        "libpng level 1, adaptive (imagecodecs)": lambda d, m: imagecodecs.png_encode(hwc(d, m), level=1),
        "libpng level 1, Paeth (imagecodecs)": lambda d, m: imagecodecs.png_encode(hwc(d, m), level=1, filter=0x80),
        "libpng level 1, none (imagecodecs)": lambda d, m: imagecodecs.png_encode(hwc(d, m), level=1, filter=0x08),
        "libpng level 1, Up (imagecodecs) = jeo-tiler": lambda d, m: imagecodecs.png_encode(hwc(d, m), level=1,
                                                                                            filter=0x20),
        "libpng level 3, Up (imagecodecs)": lambda d, m: imagecodecs.png_encode(hwc(d, m), level=3, filter=0x20),
    }
    try:
        from PIL import Image

        def pillow(level):
            def encode(d, m):
                buffer = io.BytesIO()
                Image.fromarray(hwc(d, m)).save(buffer, "PNG", compress_level=level)
                return buffer.getvalue()
            return encode

        encoders["Pillow level 6 (zlib-ng, adaptive)"] = pillow(6)
        encoders["Pillow level 1 (zlib-ng, adaptive)"] = pillow(1)
    except ImportError:
        pass
    return encoders


def run(images: list, repeat: int) -> dict:
    from titiler.core.resources.enums import ImageType
    from titiler.core.utils import render_image as titiler_render

    from tiler.render import render_image

    formats = {"png": ImageType.png, "jpeg": ImageType.jpeg, "webp": ImageType.webp}
    rows: dict[tuple[str, str], list] = {}
    encoders = png_encoders()
    png: dict[str, list] = {name: [] for name in encoders}
    for label, image, options in images:
        for fmt, image_type in formats.items():
            theirs_ms, theirs = timed(lambda im: titiler_render(im, output_format=image_type, **options)[0], image,
                                      repeat)
            ours_ms, ours = timed(lambda im: render_image(im, output_format=image_type, **options)[0], image, repeat)
            rows.setdefault((label, fmt), []).append((theirs_ms, ours_ms, len(theirs), len(ours)))
        prepared = copy.deepcopy(image)
        prepared.rescale(options["rescale"])
        data, mask = prepared.data, prepared.mask
        if "colormap" in options or data.shape[0] != 3:
            continue
        for name, encode in encoders.items():
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                content = encode(data, mask)
                times.append((time.perf_counter() - start) * 1000)
            png[name].append((statistics.median(times), len(content)))
    table = []
    for (label, fmt), values in rows.items():
        a = np.array(values)
        table.append(dict(input=label, format=fmt, tiles=len(values), titiler_ms=round(float(np.median(a[:, 0])), 2),
                          jeo_ms=round(float(np.median(a[:, 1])), 2),
                          speedup=round(float(np.median(a[:, 0]) / np.median(a[:, 1])), 1),
                          titiler_kb=round(float(a[:, 2].mean()) / 1024, 1), jeo_kb=round(float(a[:, 3].mean()) / 1024, 1),
                          size_ratio=round(float(a[:, 3].sum() / a[:, 2].sum()), 3)))
    base = np.array([s for _, s in png["GDAL zlevel 6, adaptive filters (titiler)"]], float)
    encoder_table = []
    for name, values in png.items():
        if values:
            a = np.array(values, float)
            encoder_table.append(dict(encoder=name, tiles=len(values), ms=round(float(np.median(a[:, 0])), 2),
                                      kb=round(float(a[:, 1].mean()) / 1024, 1),
                                      size_vs_titiler=round(float(a[:, 1].sum() / base.sum()), 3)))
    return dict(rendering=table, png_encoders=encoder_table)


def markdown(result: dict) -> str:
    lines = ["| input | format | tiles | titiler render_image ms | jeo-tiler ms | speed-up | titiler KB | jeo-tiler KB "
             "| size jeo/titiler |", "|" + "---|" * 9]
    for r in result["rendering"]:
        lines.append(f"| {r['input']} | {r['format']} | {r['tiles']} | {r['titiler_ms']} | {r['jeo_ms']} | "
                     f"×{r['speedup']} | {r['titiler_kb']} | {r['jeo_kb']} | {r['size_ratio']} |")
    lines += ["", "8-bit RGBA PNG encoders alone (rescaled true colour and composite tiles):", "",
              "| encoder | tiles | median ms | mean KB | size vs titiler's |", "|---|---|---|---|---|"]
    for r in result["png_encoders"]:
        lines.append(f"| {r['encoder']} | {r['tiles']} | {r['ms']} | {r['kb']} | {r['size_vs_titiler']} |")
    return "\n".join(lines)


def synthetic_collection(data: Path) -> dict | None:
    """The STAC of a make_data.py folder (stac_from_bench.py) and composite tiles inside it, or None."""
    if not (data / "scenes.json").exists():
        return None
    sys.path.insert(0, str(Path(__file__).parent))
    import tiles as T
    from stac_from_bench import convert

    summary = convert(str(data), log=lambda *a: None)
    zooms = "12-14" if (summary.get("size") or 4096) >= 4096 else "12-13"
    return dict(catalog=summary["catalog"], collection=summary["collection"],
                tiles=T.tile_paths(summary["bounds"], zooms, 4))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tiles and repeats")
    ap.add_argument("--synthetic", type=Path, default=None, help="make_data.py folder to add synthetic composites")
    ap.add_argument("--repeat", type=int, default=None, help="runs per timing (default 15, quick 5)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="jeo-bench-render-"))
    os.environ.update(JEO_HOME=str(home), JEO_CACHE_SIZE_MB="0")
    from mosaics.catalog import Catalog
    from starlette.testclient import TestClient

    from tiler.app import create_app

    synthetic = synthetic_collection(a.synthetic) if a.synthetic else None
    catalog = Catalog(home / "catalog.db")
    catalog.ingest(SHARED_DATA)
    if synthetic:
        catalog.ingest(Path(synthetic["catalog"]), allowed_roots=[a.synthetic])
    warnings.simplefilter("ignore")
    with TestClient(create_app()) as client:
        images = inputs(client, synthetic, a.quick)
    result = run(images, a.repeat or (5 if a.quick else 15))
    print(markdown(result))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
