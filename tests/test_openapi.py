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
    body = server.get("/healthz").json()
    assert body["status"] == "ok" and body["collections"] == 4
