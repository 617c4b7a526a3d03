"""Tile rendering: titiler's `render_image` semantics, with 8-bit PNG, JPEG and WebP encoded by imagecodecs.

What is rendered is decided exactly as in `titiler.core.utils.render_image`: `rescale`, then `color_formula`,
then the colormap (its alpha combined with the mask), PNG when a pixel is masked and JPEG otherwise if no
format is asked, data types a format cannot hold rescaled with a warning, and the mask as the alpha band
(none in JPEG). Only the encoding differs: 8-bit PNG, JPEG and WebP are compressed in memory by imagecodecs
(libpng, libjpeg-turbo, libwebp) instead of a GDAL driver writing a `MemoryFile`. PNG uses zlib level 1 and
the Up filter on every row: the pixels are the same, the encoder ≈ 10× faster than GDAL's level 6 with
adaptive filters, the files 5-20 % larger (benchmarks/README.md, "Rendering"). WebP gets GDAL's libwebp
settings (same pixels); JPEG the same quality with libjpeg-turbo instead of GDAL's libjpeg 9 (same PSNR,
pixels within a few levels). Other formats, data types and band counts still go through rio-tiler's `render`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import imagecodecs
import numpy as np
from rasterio.dtypes import dtype_ranges
from rio_tiler.colormap import apply_cmap
from rio_tiler.errors import InvalidDatatypeWarning
from rio_tiler.models import ImageData
from rio_tiler.types import ColorMapType, IntervalTuple
from rio_tiler.utils import render
from titiler.core.resources.enums import ImageType
from titiler.core.utils import rescale_array

PNG_LEVEL = 1
PNG_FILTER_UP = 0x20  # libpng's PNG_FILTER_UP: each row stored as its difference to the row above
# data types each format holds (titiler's table); with an automatic format PNG is 8-bit like JPEG
FORMAT_DTYPES = {
    ImageType.png: ("uint8", "uint16"),
    ImageType.jpeg: ("uint8",),
    ImageType.jpg: ("uint8",),
    ImageType.webp: ("uint8",),
    ImageType.jp2: ("uint8", "int16", "uint16"),
}


def render_image(
    image: ImageData,
    colormap: ColorMapType | None = None,
    output_format: ImageType | None = None,
    add_mask: bool = True,
    rescale: Sequence[IntervalTuple] | None = None,
    color_formula: str | None = None,
    **creation_options: Any,
) -> tuple[bytes, str]:
    """`image` as bytes of `output_format` (default PNG when any pixel is masked, else JPEG) and its media type."""
    if rescale:
        image.rescale(rescale)
    if color_formula:
        image.apply_color_formula(color_formula)
    data, mask = image.data, image.mask
    input_range = dtype_ranges[str(data.dtype)]
    output_range = image.dataset_statistics or (input_range,)
    if colormap:
        data, alpha = apply_cmap(data, colormap)
        output_range = (dtype_ranges[str(data.dtype)],)
        mask = np.where(mask != input_range[0], alpha, output_range[0][0]).astype(data.dtype)
    valid_dtypes = FORMAT_DTYPES.get(output_format, ())
    if output_format is None:
        output_format = ImageType.png if (mask == dtype_ranges[str(mask.dtype)][0]).any() else ImageType.jpeg
        valid_dtypes = ("uint8",)
    if valid_dtypes and data.dtype not in valid_dtypes:
        warnings.warn(
            f"Invalid type: `{data.dtype}` for the `{output_format}` driver. "
            "Data will be rescaled using min/max type bounds or dataset_statistics.",
            InvalidDatatypeWarning,
            stacklevel=2,
        )
        data = rescale_array(data.copy(), mask, in_range=output_range)
    options = {**creation_options, **output_format.profile}
    if output_format.driver == "GTiff":
        options.setdefault("transform", image.transform)
        if image.crs:
            options.setdefault("crs", image.crs)
    content = encode(data, mask if add_mask else None, output_format, **options)
    return content, output_format.mediatype


def encode(data: np.ndarray, mask: np.ndarray | None, output_format: ImageType, **options: Any) -> bytes:
    """`data` (bands, rows, columns) with `mask` as alpha band, as bytes of `output_format`."""
    driver = output_format.driver
    if output_format is ImageType.jpeg or output_format is ImageType.jpg:
        mask = None
    if driver == "WEBP" and data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    channels = data.shape[0] + (mask is not None)
    fast = {"PNG": (1, 2, 3, 4), "JPEG": (1, 3), "WEBP": (3, 4)}.get(driver, ())
    if (
        output_format is ImageType.pngraw
        or data.dtype != np.uint8
        or channels not in fast
        or options.keys() - {"zlevel", "quality", "lossless"}
    ):
        return render(data, mask, img_format=driver, **options)
    pixels = interleave(data, mask)
    if driver == "PNG":
        return imagecodecs.png_encode(pixels, level=PNG_LEVEL, filter=PNG_FILTER_UP)
    if driver == "JPEG":
        return imagecodecs.jpeg8_encode(pixels, level=options.get("quality", 75))
    return imagecodecs.webp_encode(pixels, level=options.get("quality", 75), lossless=bool(options.get("lossless")))


def interleave(data: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(rows, columns[, channels]) pixels: the bands of `data`, then `mask` if given."""
    count, height, width = data.shape
    channels = count + (mask is not None)
    pixels = np.empty((height, width, channels), np.uint8)
    pixels[..., :count] = data.transpose(1, 2, 0)
    if mask is not None:
        pixels[..., count] = mask
    return pixels[..., 0] if channels == 1 else pixels
