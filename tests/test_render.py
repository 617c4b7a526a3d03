"""Tile rendering (tiler/render.py) against titiler's `render_image` on real tiles: same pixels, same formats."""

from __future__ import annotations

import copy
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from rasterio.io import MemoryFile
from rio_tiler.colormap import cmap
from rio_tiler.errors import InvalidDatatypeWarning
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from titiler.core.resources.enums import ImageType
from titiler.core.utils import render_image as titiler_render_image

from tiler.render import render_image

COLLECTION = "sentinel-2-l2a-timeseries"
WEDGE_ITEM = "S2B_33TWM_20230810_0_L2A"  # orbit R079: no data over the western ~11 % of the tile
CLEAR_ITEM = "S2B_33TWM_20230813_0_L2A"
TILE = (11, 1113, 727)


def read_bands(shared_data, item: str, bands: tuple[str, ...], tile: tuple[int, int, int] | None = None) -> ImageData:
    """DN of `bands` of a real item: a 256 px preview of the whole scene, or one WebMercatorQuad tile."""
    images = []
    for band in bands:
        with Reader(str(shared_data / COLLECTION / item / f"{band}.tif")) as src:
            images.append(src.tile(tile[1], tile[2], tile[0]) if tile else src.preview(max_size=256))
    return ImageData.create_from_list(images)


@pytest.fixture(scope="module")
def images(shared_data) -> dict[str, ImageData]:
    """Real inputs of the kinds the tile endpoints render (DN, physical values, an index; masked and not)."""
    rgb = read_bands(shared_data, WEDGE_ITEM, ("B04", "B03", "B02"))
    red, nir = (read_bands(shared_data, WEDGE_ITEM, (b,)) for b in ("B04", "B08"))
    reflectance = rgb.array.astype("float32") * 0.0001
    ndvi = (nir.array.astype("float32") - red.array) / (nir.array.astype("float32") + red.array)
    out = {
        "rgb_dn": rgb,
        "rgb_reflectance": ImageData(reflectance, bounds=rgb.bounds, crs=rgb.crs),
        "ndvi": ImageData(ndvi, bounds=rgb.bounds, crs=rgb.crs),
        "red_nir": read_bands(shared_data, WEDGE_ITEM, ("B04", "B08")),
        "rgb_clear": read_bands(shared_data, CLEAR_ITEM, ("B04", "B03", "B02"), TILE),
    }
    assert out["rgb_dn"].array.mask.any() and not out["rgb_clear"].array.mask.any()
    return out


RDYLGN = cmap.get("rdylgn")
FORMATS = [None, ImageType.png, ImageType.jpeg, ImageType.jpg, ImageType.webp, ImageType.tif, ImageType.npy,
           ImageType.pngraw]
CASES = {
    "dn rescaled": ("rgb_dn", dict(rescale=[(0, 3000)])),
    "reflectance rescaled": ("rgb_reflectance", dict(rescale=[(0, 0.3)])),
    "color formula": ("rgb_reflectance", dict(rescale=[(0, 0.3)], color_formula="gamma RGB 1.5 saturation 1.1")),
    "per-band rescale": ("rgb_reflectance", dict(rescale=[(0, 0.3), (0, 0.25), (0, 0.2)])),
    "index with colormap": ("ndvi", dict(rescale=[(-1, 1)], colormap=RDYLGN)),
    "index grey": ("ndvi", dict(rescale=[(-1, 1)])),
    "two bands": ("red_nir", dict(rescale=[(0, 5000)])),
    "unmasked tile": ("rgb_clear", dict(rescale=[(0, 3000)])),
    "uint16 as is": ("rgb_dn", {}),
}


def decode(content: bytes) -> tuple[np.ndarray, tuple]:
    """Pixels and colour interpretation of an image, decoded by GDAL (not by the encoder under test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with MemoryFile(content) as memfile, memfile.open() as dataset:
            return dataset.read(), dataset.colorinterp


def both(image: ImageData, **options) -> tuple[tuple[bytes, str] | Exception, tuple[bytes, str] | Exception]:
    """(ours, titiler's) rendering of the same input, each on its own copy (rendering rescales in place); an
    exception is returned, not raised."""
    results = []
    for render in (render_image, titiler_render_image):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InvalidDatatypeWarning)
            try:
                results.append(render(copy.deepcopy(image), **options))
            except Exception as error:  # noqa: BLE001 - compared below
                results.append(error)
    return results[0], results[1]


def psnr(pixels: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((pixels.astype(float) - reference) ** 2)))


@pytest.mark.parametrize("add_mask", [True, False], ids=["mask", "no-mask"])
@pytest.mark.parametrize("output_format", FORMATS, ids=lambda f: f.value if f else "auto")
@pytest.mark.parametrize("case", CASES)
def test_same_image_as_titiler(images, case, output_format, add_mask):
    name, options = CASES[case]
    ours, theirs = both(images[name], output_format=output_format, add_mask=add_mask, **options)
    if isinstance(theirs, Exception):  # e.g. two bands as JPEG: the same error (a 400 at the endpoints)
        assert type(ours) is type(theirs)
        return
    (ours, our_type), (theirs, their_type) = ours, theirs
    assert our_type == their_type
    if output_format is ImageType.npy:
        assert ours == theirs
        return
    (pixels, interp), (expected, expected_interp) = decode(ours), decode(theirs)
    assert pixels.shape == expected.shape and pixels.dtype == expected.dtype and interp == expected_interp
    if our_type in ("image/jpeg", "image/jpg"):
        # lossy, libjpeg-turbo here and GDAL's libjpeg 9 there at the same quality: as close to the lossless image
        lossless, _ = titiler_render_image(copy.deepcopy(images[name]), output_format=ImageType.png, add_mask=False,
                                           **options)
        reference = decode(lossless)[0]
        if reference.dtype == np.uint8:
            assert abs(psnr(pixels, reference) - psnr(expected, reference)) < 0.5
        else:  # 16-bit data, rescaled to 8 bits for JPEG only: the two encodings against each other
            assert psnr(pixels, expected) > 30
    else:
        np.testing.assert_array_equal(pixels, expected)


def test_automatic_format_follows_the_mask(images):
    """PNG when a pixel is masked (nodata wedge), JPEG for a tile without masked pixels, as in titiler."""
    assert render_image(copy.deepcopy(images["rgb_dn"]), rescale=[(0, 3000)])[1] == "image/png"
    assert render_image(copy.deepcopy(images["rgb_clear"]), rescale=[(0, 3000)])[1] == "image/jpeg"


def test_types_a_format_cannot_hold_are_rescaled_with_titilers_warning(images):
    with pytest.warns(InvalidDatatypeWarning, match="jpeg"):
        render_image(copy.deepcopy(images["rgb_dn"]), output_format=ImageType.jpeg)


def test_smaller_than_twice_gdal_png(images):
    """The fast PNG settings cost some size (the README reports it), not a multiple of it."""
    (ours, _), (theirs, _) = both(images["rgb_reflectance"], output_format=ImageType.png, rescale=[(0, 0.3)])
    assert len(ours) < 1.5 * len(theirs)


def png_row_filters(content: bytes) -> set[int]:
    """The filter type of every row of an 8-bit, non-interlaced PNG."""
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, header = 8, b"", None
    while offset < len(content):
        (length,), kind = struct.unpack(">I", content[offset : offset + 4]), content[offset + 4 : offset + 8]
        body = content[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, _, depth, colour_type, *_ = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    assert depth == 8
    rows = zlib.decompress(idat)
    return set(rows[:: 1 + width * channels])


def test_tile_endpoints_render_with_the_fast_encoder_and_titilers_pixels(server):
    """Item and composite PNG tiles: the endpoint's pixels equal titiler's rendering of the endpoint's own
    values (its .npy), and the PNG is written by the fast encoder (Up filter on every row)."""
    paths = {
        "item": f"/collections/{COLLECTION}/items/{WEDGE_ITEM}/tiles/WebMercatorQuad/10/554/363",
        "composite": f"/collections/{COLLECTION}/tiles/WebMercatorQuad/10/554/363",
    }
    recipes = {
        "item": {"expression": "(B08-B04)/(B08+B04)"},
        "composite": {"assets": "B04,B03,B02", "method": "median", "cloud_mask": "scl"},
    }
    renders = {"item": dict(rescale=[(-1, 1)], colormap=RDYLGN), "composite": dict(rescale=[(0, 0.3)])}
    query = {"item": {"rescale": "-1,1", "colormap_name": "rdylgn"}, "composite": {"rescale": "0,0.3"}}
    for kind, path in paths.items():
        values = server.get(path + ".npy", params=recipes[kind])
        tile = server.get(path + ".png", params={**recipes[kind], **query[kind]})
        assert values.status_code == 200 and tile.status_code == 200, (values.text, tile.text)
        stacked = np.load(io.BytesIO(values.content))  # the bands, then the mask (> 0: valid)
        data, valid = stacked[:-1], stacked[-1] > 0
        assert valid.any() and not valid.all(), "the tile should cover the edge of the nodata wedge"
        image = ImageData(np.ma.MaskedArray(data, mask=np.broadcast_to(~valid, data.shape)))
        expected, media_type = titiler_render_image(image, output_format=ImageType.png, **renders[kind])
        assert tile.headers["content-type"] == media_type
        np.testing.assert_array_equal(decode(tile.content)[0], decode(expected)[0])
        assert png_row_filters(tile.content) == {2}
