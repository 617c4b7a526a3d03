"""Schemathesis over the real server's /openapi.json: no generated request gets a 5xx or a traceback.

Every operation is fuzzed three ways with a fixed seed (hypothesis `derandomize`): valid values with the path
pinned to a real item, tile and point (so that the query parameters reach the readers, kernels and renderer),
valid values everywhere, and schema-violating values. The server may only run exports on the local
executor with tiny limits, so that generated POST /exports never reach the shared SLURM cluster.
"""

from __future__ import annotations

import collections

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import start_server, stop_server

EXAMPLES = 20  # per operation and way: ~2,400 requests in all
C, ITEM = "sentinel-2-l2a-timeseries", "S2B_33TWM_20230813_0_L2A"
EXPORT_LIMITS = {
    "JEO_EXPORT_EXECUTOR": "local",
    "JEO_EXPORT_EXECUTORS": "local",
    "JEO_EXPORT_LOCAL_WORKERS": "1",
    "JEO_EXPORT_MAX_PIXELS": "250000",
    "JEO_EXPORT_MAX_AREA_KM2": "100",
}


@pytest.fixture(scope="module")
def fuzzed(shared_data, tmp_path_factory):
    """A server over the test data whose exports are local and tiny."""
    from mosaics.catalog import Catalog

    home = tmp_path_factory.mktemp("fuzz-home")
    Catalog(home / "catalog.db").ingest(shared_data)
    server = start_server(home, env=EXPORT_LIMITS)
    yield server
    stop_server(server)


def real_path(names: set[str]) -> dict[str, object]:
    """Path parameters of a real item, tile and point for the parameters an operation has."""
    pins: dict[str, object] = {}
    if "collection_id" in names:
        pins["collection_id"] = C
    if "item_id" in names:
        pins["item_id"] = ITEM
    if "tileMatrixSetId" in names:
        pins["tileMatrixSetId"] = "WebMercatorQuad"
    if {"z", "x", "y"} <= names:
        pins.update(dict(z=11, x=1113, y=727) if "item_id" in names else dict(z=10, x=555, y=363))
    if {"lon", "lat"} <= names:
        pins.update(lon=15.8, lat=46.5)
    return pins


def test_generated_requests_get_no_server_error(fuzzed):
    schema = schemathesis.openapi.from_url(fuzzed.url + "/openapi.json")
    session = requests.Session()
    sent: collections.Counter[str] = collections.Counter()
    failures: list[str] = []

    for result in schema.get_all_operations():
        operation = result.ok()
        pins = real_path({parameter.name for parameter in operation.path_parameters})
        ways = [(GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        if pins:
            ways.insert(0, (GenerationMode.POSITIVE, pins))
        for mode, path_parameters in ways:

            @given(case=operation.as_strategy(mode, path_parameters=path_parameters))
            @settings(
                max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
            )
            def send(case):
                response = case.call(base_url=fuzzed.url, session=session, timeout=120)
                sent[operation.label] += 1
                if response.status_code >= 500 or "Traceback (most recent call last)" in response.text:
                    failures.append(f"{response.status_code} {case.method} {response.request.url}: {response.text[:300]}")

            try:
                send()
            except Unsatisfiable:  # nothing can violate the schema of an operation without parameters
                assert mode is GenerationMode.NEGATIVE

    total = sum(sent.values())
    print(f"{total} requests over {len(sent)} operations: {dict(sent)}")
    assert not failures, f"{len(failures)} of {total} requests failed:\n" + "\n".join(failures[:30])
    assert total >= 2000
