"""The pool of open datasets: handles lent one at a time, idle ones closed beyond its bound."""

from __future__ import annotations

import shutil

import pytest
from rasterio.errors import RasterioIOError

from mosaics.datasets import DatasetPool
from tests.test_catalog_safety import geotiff_naming

C = "sentinel-2-l2a-timeseries/S2B_33TWM_20230813_0_L2A"


def test_handles_beyond_the_bound_are_closed_while_others_are_lent(shared_data):
    """A key whose only idle handle is lent stays usable when the pool evicts (it was once an empty list first in
    line: IndexError, a 500 for a 40-scene composite)."""
    pool = DatasetPool(max_open=2)
    paths = [str(shared_data / C / f"{band}.tif") for band in ("B02", "B03", "B04", "B08")]
    with pool.open(paths[0]):
        pass
    with pool.open(paths[0]) as lent:  # its key's last idle handle
        for path in paths[1:]:
            with pool.open(path) as dataset:
                assert dataset.read(1, window=((0, 1), (0, 1))).shape == (1, 1)
        assert pool.idle() == 2
        assert not lent.closed
    assert pool.idle() == 2
    with pool.open(paths[0]) as again:
        assert again.read(1, window=((0, 1), (0, 1))).shape == (1, 1)


def test_a_returned_handle_is_lent_again(shared_data):
    pool = DatasetPool(max_open=4)
    path = str(shared_data / C / "B04.tif")
    with pool.open(path) as first:
        pass
    with pool.open(path) as second:
        assert second is first
        with pool.open(path) as third:  # lent out: another handle
            assert third is not first
    assert pool.idle() == 2


def test_overview_levels_of_a_replaced_file_are_checked_again(shared_data, tmp_path):
    """The pool checks a file version once and then opens its overview levels directly; a file replaced by one
    that names other files is checked again, and refused."""
    real = shared_data / C / "B04.tif"
    path = tmp_path / "B04.tif"
    shutil.copy(real, path)
    pool = DatasetPool(max_open=4)
    with pool.open(str(path)) as dataset:
        assert dataset.overviews(1)
    with pool.open(str(path), overview_level=0) as overview:
        assert overview.width < dataset.width
    geotiff_naming(real, path, "/vsicurl/http://127.0.0.1:9/overview.tif")
    with pytest.raises(RasterioIOError, match="names another file"), pool.open(str(path), overview_level=0):
        pass
