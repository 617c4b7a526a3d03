"""The registries of composite methods, cloud masks and corrections are the only source: every entry works end to
end through a tile, and the OpenAPI enums and docs are their keys."""

from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest

from mosaics.cloudmasks import MASKS
from mosaics.corrections import CORRECTIONS
from mosaics.methods import METHODS

WM = morecantile.tms.get("WebMercatorQuad")
L2A = "sentinel-2-l2a-timeseries"
# (collection, tile) where each correction applies: Sentinel-2 L2A, or Landsat 8 Level-1
WHERE = {"none": (L2A, WM.tile(15.9, 46.45, 10)), "s2_harmonize": (L2A, WM.tile(15.9, 46.45, 10)),
         "toa": ("landsat-8-l1", WM.tile(-87.4, 30.73, 13)), "dos": ("landsat-8-l1", WM.tile(-87.4, 30.73, 13))}
MASK_WHERE = {"scl": (L2A, WM.tile(15.9, 46.45, 10)), "cloud_probability": ("sentinel-2-l1c-10m", WM.tile(14.5578, 45.8705, 15)),
              "qa": ("landsat-8-l1", WM.tile(-87.4, 30.73, 13))}


def composite(server, collection: str, tile, **params) -> np.ndarray:
    url = f"/collections/{collection}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"
    response = server.get(url, params=params)
    assert response.status_code == 200, (params, response.text)
    return np.load(io.BytesIO(response.content))[:-1]  # without the mask band


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_composites_a_tile(server, name):
    method = METHODS[name]
    params = {"assets": "red,nir", "method": name, "max_items": 3} | ({"p": 25} if method.needs_p else {})
    values = composite(server, L2A, WHERE["none"][1], **params)
    assert values.shape[0] == (1 if method.output else 2)
    assert np.isfinite(values).any()
    if method.selects:
        provenance = composite(server, L2A, WHERE["none"][1], **params, provenance="true")
        assert set(np.unique(provenance[np.isfinite(provenance)])) <= {0, 1, 2}


@pytest.mark.parametrize("name", list(CORRECTIONS))
def test_every_correction_corrects_a_tile(server, name):
    collection, tile = WHERE[name]
    values = composite(server, collection, tile, assets="red", method="first", correction=name, cloud_mask="none")
    assert np.isfinite(values).any()


@pytest.mark.parametrize("name", list(MASKS))
def test_every_cloud_mask_masks_a_tile(server, name):
    collection, tile = MASK_WHERE[name]
    values = composite(server, collection, tile, assets="red", method="first", cloud_mask=name)
    assert np.isfinite(values).any()


def test_openapi_enums_are_the_registry_keys(server):
    spec = server.get("/openapi.json").json()
    operation = spec["paths"]["/collections/{collection_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["method"]["schema"]["enum"] == list(METHODS)
    assert params["correction"]["schema"]["enum"] == list(CORRECTIONS)
    for name in (*METHODS, *CORRECTIONS):
        assert f"{name} (" in params["method"]["description"] + params["correction"]["description"]
    for name in MASKS:
        assert f"`{name}" in params["cloud_mask"]["description"]
