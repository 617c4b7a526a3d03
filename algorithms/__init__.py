"""Pure array algorithms for Earth-observation tiles: composites, indices, band math, masks,
radiometric corrections and area statistics. No I/O: numpy arrays in, numpy arrays out. Layouts,
dtypes, units and nodata rules are in each module's docstring.

The numba kernels are compiled on first use for each input dtype and cached on disk
(``__pycache__``, or ``NUMBA_CACHE_DIR``); :func:`warmup` compiles or loads them all up front.
"""

from __future__ import annotations

import numpy as np

from algorithms import composite, corrections, expression, indices, masks, statistics

__all__ = ["composite", "corrections", "expression", "indices", "masks", "statistics", "warmup"]


def warmup(
    stack_dtypes: tuple[type, ...] = (np.uint16, np.float32),
    dn_dtypes: tuple[type, ...] = (np.uint8, np.uint16, np.int16, np.float32),
) -> None:
    """Compile (or load from the cache) every kernel by calling it once on tiny arrays.

    Composites are warmed for each of ``stack_dtypes``, DN conversions for ``dn_dtypes``, indices
    and scores for float32; other dtypes compile on first use. Call once at server start so that
    no request pays for compilation (cold cache: about a minute; warm cache: about a second).
    """
    valid = np.ones((2, 2, 2), np.bool_)
    valid[0, 0, 0] = False
    for dtype in stack_dtypes:
        stack = np.ones((2, 2, 2, 2), dtype)
        composite.first_valid(stack, valid)
        composite.max_score(stack, valid, np.ones((2, 2, 2), np.float32))
        composite.median(stack, valid)
        composite.percentile(stack, valid, 25)
        composite.mean(stack, valid)
        composite.medoid(stack, valid)
        composite.geomedian(stack, valid)
    for dtype in dn_dtypes:
        corrections.scale_offset(np.ones((2, 2), dtype), 0.0001, 0.0, 0)
    reflectance = np.full((2, 2), 0.2, np.float32)
    for spec in indices.INDICES.values():
        spec.function(*[reflectance] * len(spec.bands))
    masks.dilate_invalid(valid, 1)
    statistics.band_statistics(reflectance[np.newaxis], bins=2)
    statistics.band_statistics(reflectance[np.newaxis], bins=[0.0, 0.5, 1.0])
    statistics.zonal_summary(reflectance[np.newaxis, np.newaxis], valid[:1], valid[:1], valid[0])
