"""Every query and path parameter of the API is documented in OpenAPI."""

from __future__ import annotations


def test_every_parameter_has_a_description(server):
    spec = server.get("/openapi.json").json()
    undocumented = [
        f"{method.upper()} {path} {parameter['name']}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        for parameter in operation.get("parameters", [])
        if not (parameter.get("description") or parameter.get("schema", {}).get("description"))
    ]
    assert undocumented == []
    tile = spec["paths"]["/collections/{collection_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}"]["get"]
    names = {p["name"] for p in tile["parameters"]}
    assert {"method", "cloud_mask", "datetime", "max_items", "assets", "expression", "index", "rescale"} <= names


def test_healthz(server):
    """The catalog's collections: the four of ../shared/data, plus `exports` once this session's server has
    finished an export (the tests share one server, in any order)."""
    body = server.get("/healthz").json()
    listed = {c["id"] for c in server.get("/collections").json()["collections"]}
    assert listed - {"exports"} == {"sentinel-2-l2a-timeseries", "sentinel-2-l2a-allbands", "sentinel-2-l1c-10m",
                                    "landsat-8-l1"}
    assert body["status"] == "ok" and body["collections"] == len(listed)
