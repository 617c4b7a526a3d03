"""Window reads through pixel maps against an independent nearest-neighbour read (real data)."""

from __future__ import annotations

import morecantile
import numpy as np
import pytest
import rasterio

from mosaics.catalog import Catalog
from mosaics.grid import Grid
from mosaics.pixelmap import SourceGrid, pixel_map
from mosaics.reader import read_window
from tests.reference import nearest_tile

C = "sentinel-2-l2a-timeseries"
ITEM = "S2B_33TWM_20230810_0_L2A"  # has a no-data wedge on the west side
CLEAR = "S2B_33TWM_20230813_0_L2A"  # has data up to the raster's west edge
WM = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def catalog(jeo_home):
    return Catalog(jeo_home / "catalog.db")


@pytest.fixture(scope="module")
def item(catalog):
    return catalog.item(C, ITEM)


def _source(path) -> SourceGrid:
    with rasterio.open(path) as src:
        shapes = []
        for level in range(len(src.overviews(1))):
            with rasterio.open(path, overview_level=level) as overview:
                shapes.append(overview.shape)
        return SourceGrid(src.crs.to_wkt(), tuple(src.transform)[:6], src.height, src.width,
                          tuple(src.overviews(1)), tuple(shapes))


@pytest.mark.parametrize("item_id,z,lon,lat", [
    (ITEM, 13, 15.9, 46.45),  # finer than the 120 m data
    (ITEM, 10, 15.9, 46.45),
    (ITEM, 8, 15.9, 46.45),  # overview level
    (ITEM, 6, 15.9, 46.45),  # coarser still; the raster is a small part of the tile
    (ITEM, 10, 15.2, 46.75),  # across the no-data wedge
    (CLEAR, 12, 14.99, 46.95),  # across the raster's west edge
])
@pytest.mark.parametrize("asset,file", [("red", "B04"), ("scl", "SCL")])
def test_read_window_equals_nearest_reference(shared_data, catalog, item_id, z, lon, lat, asset, file):
    tile = WM.tile(lon, lat, z)
    actual = read_window(catalog.item(C, item_id), [asset], Grid.for_tile(WM, tile))[0]
    expected = nearest_tile(shared_data / C / item_id / f"{file}.tif", WM, tile)
    np.testing.assert_array_equal(np.ma.getmaskarray(actual), expected.mask)
    np.testing.assert_array_equal(actual.data[~expected.mask], expected.data[~expected.mask])
    assert 0.05 < (~expected.mask).mean()


def test_overview_is_the_coarsest_not_coarser_than_the_output(shared_data):
    source = _source(shared_data / C / ITEM / "B04.tif")
    assert source.overviews, "the test needs a raster with overviews"
    levels = {z: pixel_map(Grid.for_tile(WM, WM.tile(15.9, 46.45, z)), source).level for z in (12, 10, 8, 7, 6)}
    # 120 m pixels; WebMercator pixels at 46.45° N: z10 ≈ 105 m, z8 ≈ 421 m, z7 ≈ 842 m, z6 ≈ 1685 m
    factors = {z: 1 if level is None else source.overviews[level] for z, level in levels.items()}
    assert factors[12] == factors[10] == 1
    assert all(factors[a] <= factors[b] for a, b in ((10, 8), (8, 7), (7, 6)))
    assert factors[6] > 1


def test_overviews_rounded_down_read_right(shared_data, item, tmp_path):
    """GDAL's COG driver rounds overview sizes down (915 px → 457), rio-cogeo/gdaladdo up (458): both read right."""
    import dataclasses

    path = tmp_path / "B04.tif"
    with rasterio.open(shared_data / C / ITEM / "B04.tif") as src:
        profile, data = src.profile, src.read()
    for key in ("tiled", "blockxsize", "blockysize", "interleave"):
        profile.pop(key, None)
    with rasterio.open(path, "w", **{**profile, "driver": "COG", "blocksize": 256, "overview_resampling": "average"}) as dst:
        dst.write(data)
    with rasterio.open(path, overview_level=0) as overview:
        assert overview.shape == (457, 457)
    moved = dataclasses.replace(item, assets={**item.assets, "red": dataclasses.replace(item.assets["red"], href=str(path))})
    for z in (8, 7, 6):
        tile = WM.tile(15.9, 46.45, z)
        actual = read_window(moved, ["red"], Grid.for_tile(WM, tile))[0]
        expected = nearest_tile(path, WM, tile)
        np.testing.assert_array_equal(np.ma.getmaskarray(actual), expected.mask)
        np.testing.assert_array_equal(actual.data[~expected.mask], expected.data[~expected.mask])


def test_grid_off_the_raster_reads_nothing(item):
    far = Grid.for_tile(WM, WM.tile(-120.0, 40.0, 10))
    actual = read_window(item, ["red"], far)
    assert np.ma.getmaskarray(actual).all()


def test_other_resampling_goes_through_the_warped_read(item):
    grid = Grid.for_tile(WM, WM.tile(15.9, 46.45, 12))
    nearest = read_window(item, ["red"], grid)
    bilinear = read_window(item, ["red"], grid, reproject_method="bilinear")
    assert nearest.shape == bilinear.shape == (1, 256, 256)
    assert not np.array_equal(nearest.data, bilinear.data)
    assert np.corrcoef(nearest.data.ravel(), bilinear.data.ravel())[0, 1] > 0.9


def test_utm_grid_in_the_raster_crs_is_a_plain_window(shared_data, item):
    with rasterio.open(shared_data / C / ITEM / "B04.tif") as src:
        transform, crs, band = src.transform, src.crs, src.read(1)
    left, top = transform * (100, 200)
    right, bottom = transform * (164, 248)
    actual = read_window(item, ["red"], Grid((left, bottom, right, top), crs, 64, 48))[0]
    np.testing.assert_array_equal(actual.data, band[200:248, 100:164])


def test_read_window_skips_blocks_without_wanted_pixels(shared_data, catalog):
    """A read of only some wanted pixels: the same values there, masked elsewhere; blocks holding no wanted pixel
    are not part of the read."""
    path = shared_data / C / CLEAR / "B04.tif"
    with rasterio.open(path) as src:
        grid = Grid(tuple(src.bounds), src.crs, src.width, src.height)  # the raster's own grid: 4 × 4 blocks
        block = src.block_shapes[0]
        source = SourceGrid(src.crs.to_wkt(), tuple(src.transform)[:6], src.height, src.width)
    wanted = np.zeros((grid.height, grid.width), dtype=bool)
    wanted[:100, :100] = True  # one block
    wanted[600:, 300:700] = True  # two block rows × two block columns
    item = catalog.item(C, CLEAR)
    full = read_window(item, ["red"], grid)[0]
    part = read_window(item, ["red"], grid, wanted=wanted)[0]
    np.testing.assert_array_equal(np.ma.getmaskarray(part), np.ma.getmaskarray(full) | ~wanted)
    np.testing.assert_array_equal(part.data[~part.mask], full.data[~part.mask])
    parts = pixel_map(grid, source).parts(wanted, block)
    assert sum(p.width * p.height for p in parts) == 256 * 256 + 2 * 256 * (915 - 512)  # 5 of the 16 blocks
    assert pixel_map(grid, source).parts(np.zeros_like(wanted), block) == []


def _grids(bounds, zooms, per_zoom=6, sizes=(256, 512)):
    """Tiles over lon/lat `bounds` at `zooms` (their corners and spread inside), at each tile size."""
    west, south, east, north = bounds
    for z in zooms:
        points = [(west + (east - west) * i / (per_zoom - 1), south + (north - south) * ((i * 7) % per_zoom) / (per_zoom - 1))
                  for i in range(per_zoom)]
        for tile in dict.fromkeys(WM.tile(lon, lat, z) for lon, lat in points):
            for size in sizes:
                yield Grid.for_tile(WM, tile, size)


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326", "EPSG:3035"])
def test_interpolated_centres_give_the_map_of_projecting_every_centre(shared_data, monkeypatch, crs):
    """PROJ projects a lattice of the tile's pixel centres, the rest are interpolated: the pixel maps are those
    of projecting every centre, from coarse zooms (where the lattice is not accurate enough) to fine ones."""
    from rasterio.warp import transform_bounds

    from mosaics import pixelmap

    real = _source(shared_data / C / ITEM / "B04.tif")
    if crs == "EPSG:32633":  # the raster's own
        source = real
    else:  # the same raster's footprint on a grid in another CRS, pixels of about the same size
        left, bottom, right, top = transform_bounds(real.crs, crs, *rasterio.transform.array_bounds(
            real.height, real.width, rasterio.Affine(*real.transform)))
        size = (right - left) / real.width
        source = SourceGrid(rasterio.crs.CRS.from_user_input(crs).to_wkt(), (size, 0.0, left, 0.0, -size, top),
                            round((top - bottom) / size), real.width, real.overviews, real.overview_shapes)
    bounds = transform_bounds(real.crs, "EPSG:4326", *rasterio.transform.array_bounds(
        real.height, real.width, rasterio.Affine(*real.transform)))
    interpolated = []
    for grid in _grids(bounds, (3, 6, 8, 10, 12, 14, 16)):
        pixelmap._pixel_map.cache_clear()
        approx = pixelmap._pixel_map(grid, source)
        interpolated.append(pixelmap._centres(grid, source.crs).error > 0)
        with monkeypatch.context() as patch:
            patch.setattr(pixelmap, "_centres", pixelmap._projected)
            pixelmap._pixel_map.cache_clear()
            exact = pixelmap._pixel_map(grid, source)
        assert (approx.level, approx.window) == (exact.level, exact.window), grid
        np.testing.assert_array_equal(approx.inside, exact.inside)
        np.testing.assert_array_equal(approx.rows[exact.inside], exact.rows[exact.inside])
        np.testing.assert_array_equal(approx.cols[exact.inside], exact.cols[exact.inside])
    pixelmap._pixel_map.cache_clear()
    assert sum(interpolated) > len(interpolated) / 2  # the lattice is used at most zooms
