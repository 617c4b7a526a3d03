"""Exports (issue 6) against a real SLURM cluster, a real S3 API on loopback and the real 33TWM scenes.

SLURM: the cluster under $JEO_SLURM_BASE (scripts/test.sh starts it); when it is not running the tests
start it with scripts/slurm-start.sh and FAIL (not skip) if it cannot start. S3: moto's standalone
server as a subprocess on a loopback port. Every export is requested from a real uvicorn.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate

from tests.conftest import REPO_ROOT, S3, Server, start_server, stop_server
from tests.reference import nearest_tile

C = "sentinel-2-l2a-timeseries"
BROKEN = "sentinel-2-l2a-broken"
BROKEN_ITEM = "S2B_33TWM_20230813_0_L2A"
TILE_BBOX = [499980, 5090220, 609780, 5200020]  # the whole 33TWM tile (EPSG:32633, 915 × 915 px at 120 m)
RECIPE = {"assets": ["red", "green", "blue"], "method": "median", "cloud_mask": "scl", "datetime": "2023-08-01/2023-08-31"}
WHOLE = {"collection": C, **RECIPE, "bbox": TILE_BBOX, "bbox_crs": "EPSG:32633", "crs": "EPSG:32633", "resolution": 120}
TERMINAL = ("finished", "failed", "canceled")
WM = morecantile.tms.get("WebMercatorQuad")
RIO = Path(sys.executable).with_name("rio")
pytestmark = pytest.mark.slurm  # the export server is started with the local SLURM cluster (fails without it)


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """The local SLURM cluster (started here if needed); fails when it cannot start."""
    base = os.environ.get("JEO_SLURM_BASE") or os.environ.get("SLURM_BASE") or "/tmp/jeo-slurm"
    env = {**os.environ, "SLURM_BASE": base}
    started = False
    check = subprocess.run(["bash", "scripts/slurm-start.sh", "--check"], env=env, cwd=REPO_ROOT, capture_output=True)
    if check.returncode != 0:
        probe = subprocess.run(
            ["bash", "scripts/slurm-start.sh", "--probe"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        if probe.returncode != 0:
            pytest.fail(f"SLURM could not start (export tests need it):\n{probe.stdout}\n{probe.stderr}")
        started = True
    os.environ["SLURM_CONF"] = f"{base}/etc/slurm.conf"
    yield {"SLURM_CONF": f"{base}/etc/slurm.conf"}
    if started:
        subprocess.run(["bash", "scripts/slurm-stop.sh"], env=env, cwd=REPO_ROOT, capture_output=True)


def make_home(root: Path, shared_data: Path) -> Path:
    """A JEO_HOME with the 33TWM time series and a copy of it whose scene BROKEN_ITEM has an unreadable B04
    (broken after the ingest, which refuses rasters that are not GeoTIFFs)."""
    from mosaics.catalog import Catalog

    home = root / "home"
    home.mkdir(parents=True)
    source = shared_data / C
    broken = root / "data" / BROKEN
    for path in source.rglob("*"):
        target = broken / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            target.write_text(path.read_text().replace(C, BROKEN))
        else:
            target.symlink_to(path)
    catalog = Catalog(home / "catalog.db")
    catalog.ingest(source / "collection.json")
    catalog.ingest(broken / "collection.json", [shared_data])
    catalog.close()
    unreadable = broken / BROKEN_ITEM / "B04.tif"
    unreadable.unlink()
    unreadable.write_bytes(b"this is not a GeoTIFF")
    return home


def server_env(slurm: dict[str, str], s3: S3) -> dict[str, str]:
    return {
        **slurm, **s3.env,
        "JEO_EXPORT_CHUNK_SIZE": "512", "JEO_EXPORT_EXECUTORS": "local,slurm", "JEO_EXPORT_LOCAL_WORKERS": "2",
        "JEO_EXPORT_SLURM_MAX_PARALLEL": "4", "JEO_EXPORT_S3_ENDPOINT_URL": s3.url, "JEO_EXPORT_S3_REGION": "us-east-1",
        "JEO_EXPORT_POLL_INTERVAL": "1",
    }  # fmt: skip


def cancel_active(server: Server) -> None:
    """Leave no export running (and no SLURM job queued) behind."""
    try:
        for export in server.get("/exports", params={"limit": 1000}).json()["exports"]:
            if export["status"] in ("queued", "running"):
                httpx.delete(f"{server.url}/exports/{export['id']}", timeout=60)
    except httpx.HTTPError:
        pass


@pytest.fixture(scope="module")
def xserver(tmp_path_factory, shared_data, slurm, s3) -> Server:
    """A real uvicorn with exports enabled on both executors, small chunks (512 px) and S3 on loopback."""
    home = make_home(tmp_path_factory.mktemp("exports"), shared_data)
    running = start_server(home, env=server_env(slurm, s3))
    yield running
    cancel_active(running)
    stop_server(running)


# --- helpers ---------------------------------------------------------------------------------------


def post(server: Server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/exports", json=body, timeout=120)


def submit(server: Server, body: dict) -> dict:
    response = post(server, body)
    assert response.status_code == 202, response.text
    return response.json()


def wait(server: Server, export_id: str, until=TERMINAL, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = server.get(f"/exports/{export_id}").json()
        if record["status"] in until:
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"export {export_id} still {record['status']} after {timeout} s: {record}")
        time.sleep(0.3)


def finished(server: Server, export_id: str) -> dict:
    record = wait(server, export_id)
    assert record["status"] == "finished", record
    return record


def read(path: str | Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def result_file(server: Server, record: dict) -> Path:
    """The file of a finished local export: the API names it under the export root, never by its server path."""
    assert not Path(record["result"]).is_absolute() and record["destination"] == record["result"], record
    return server.home / "exports" / record["result"]


def validate_cog(path: str | Path) -> None:
    """`rio cogeo validate` (the CLI) and rio-cogeo's API agree that it is a COG."""
    result = subprocess.run([str(RIO), "cogeo", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 0 and "is a valid cloud optimized GeoTIFF" in result.stdout, result.stdout + result.stderr
    assert cog_validate(str(path), quiet=True)[0]


def live_jobs(jobs: list[str]) -> list[str]:
    """Jobs (and array tasks) still pending, running or completing."""
    live = []
    for job in jobs:
        out = subprocess.run(["squeue", "-h", "-t", "PD,R,CG,S,CF", "-j", job, "-o", "%i %T"], capture_output=True, text=True)
        live += out.stdout.split("\n") if out.returncode == 0 and out.stdout.strip() else []
    return [line for line in live if line.strip()]


def job_states(job: str) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%i %T"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(line.split() for line in out.stdout.splitlines() if line.strip())


def ended_states(job: str, timeout: float = 60) -> dict[str, str]:
    """`job_states` once the job has ended: a merge job records the export done shortly before it exits."""
    deadline = time.time() + timeout
    while live_jobs([job]) and time.time() < deadline:
        time.sleep(0.5)
    return job_states(job)


def work_dir(server: Server, export_id: str) -> Path:
    return server.home / "exports-work" / export_id


# --- chunking --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 3000), height=st.integers(1, 3000), size=st.sampled_from([256, 512, 768, 2048]))
def test_chunks_tile_the_output_grid_without_gaps_or_overlaps(width, height, size):
    from tiler.exports.chunks import window_grid, windows

    found = windows(width, height, size)
    assert sum(w.width * w.height for w in found) == width * height
    cover = np.zeros((height, width), np.uint8)
    for w in found:
        assert 0 < w.width <= size and 0 < w.height <= size
        cover[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert (cover == 1).all()
    transform = Affine(120.0, 0, 499980.0, 0, -120.0, 5200020.0)
    grids = {(w.col_off, w.row_off): window_grid(transform, CRS.from_epsg(32633), w) for w in found}
    for (col, row), grid in grids.items():
        assert grid.transform.almost_equals(transform @ Affine.translation(col, row))
        if (col + size, row) in grids:  # right neighbour starts where this chunk ends
            assert grids[(col + size, row)].bounds[0] == grid.bounds[2]
        if (col, row + size) in grids:
            assert grids[(col, row + size)].bounds[3] == grid.bounds[1]


# --- bad input -------------------------------------------------------------------------------------

BASE = {"collection": C, "assets": ["red", "green", "blue"], "bbox": [15.5, 46.2, 15.6, 46.3], "datetime": "2023-08-01/2023-08-31"}
SQUARE = {"type": "Polygon", "coordinates": [[[15.5, 46.2], [15.6, 46.2], [15.6, 46.3], [15.5, 46.3], [15.5, 46.2]]]}
BAD = [  # (changes to BASE (None removes a field), status, text the message must contain)
    ({"collection": "nope"}, 404, "collection"),
    ({"preset": "nosuchpreset"}, 404, "preset"),
    ({"assets": None}, 400, "assets"),
    ({"assets": ["B99"]}, 400, "assets"),
    ({"assets": None, "expression": "(B08-B04"}, 400, "expression"),
    ({"assets": None, "index": "ndxx"}, 400, "index"),
    ({"method": "mode"}, 400, "method"),
    ({"method": "percentile"}, 400, "p"),
    ({"cloud_mask": "fog"}, 400, "cloud_mask"),
    ({"correction": "magic"}, 400, "correction"),
    ({"correction": "toa"}, 400, "correction"),
    ({"datetime": "yesterday"}, 400, "datetime"),
    ({"datetime": "2020-01-01/2020-02-01"}, 400, "datetime"),
    ({"max_items": 100000}, 400, "max_items"),
    ({"bbox": None}, 400, "bbox"),
    ({"bbox": [15.5, 46.2, 15.6]}, 400, "bbox"),
    ({"bbox": [15.6, 46.2, 15.5, 46.3]}, 400, "bbox"),
    ({"bbox": [-80.0, 10.0, -79.0, 11.0]}, 400, "bbox"),  # outside the collection
    ({"bbox": [5.0, 40.0, 25.0, 55.0]}, 400, "bbox"),  # area above the maximum
    ({"bbox": "15,46,16,47"}, 422, "bbox"),
    ({"bbox_crs": "EPSG:999999"}, 400, "bbox_crs"),
    ({"geometry": SQUARE}, 400, "geometry"),  # with bbox
    ({"bbox": None, "geometry": {"type": "Point", "coordinates": [15.5, 46.2]}}, 400, "geometry"),
    ({"crs": "EPSG:0"}, 400, "crs"),
    ({"crs": "not a crs"}, 400, "crs"),
    ({"resolution": -10}, 400, "resolution"),
    ({"resolution": 1e-300}, 400, "resolution"),  # tiny: too many pixels (no overflow)
    ({"resolution": 5e-324}, 400, "resolution"),
    ({"resolution": 1e300}, 400, "resolution"),  # huge: coarser than the area
    ({"resolution": [10, 1e308]}, 400, "resolution"),
    ({"on_error": "ignore"}, 422, "on_error"),
    ({"overwrite": "maybe"}, 422, "overwrite"),
    ({"crs": "EPSG:32633", "resolution": 0.01}, 400, "resolution"),  # too many pixels
    ({"format": "png"}, 400, "format"),
    ({"destination": "../../etc/passwd"}, 400, "destination"),
    ({"destination": "/tmp/absolute.tif"}, 400, "destination"),
    ({"destination": "s3://Bad_Bucket/x"}, 400, "destination"),
    ({"destination": "s3://no-such-bucket/exports/"}, 400, "destination"),
    ({"executor": "kubernetes"}, 400, "executor"),
    ({"chunk_size": 300}, 400, "chunk_size"),
    ({"resampling": "magic"}, 400, "resampling"),
    ({"colour": "red"}, 422, "colour"),
]


def test_bad_requests_are_refused_naming_the_field_and_nothing_is_submitted(xserver):
    before = xserver.get("/exports", params={"limit": 1000}).json()["numberReturned"]
    failures = []
    for changes, status, text in BAD:
        body = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
        response = post(xserver, body)
        if response.status_code != status or text not in response.text:
            failures.append(f"{changes}: {response.status_code} {response.text[:300]}")
    assert not failures, "\n".join(failures)
    assert len(BAD) >= 15
    assert xserver.get("/exports", params={"limit": 1000}).json()["numberReturned"] == before
    assert xserver.get("/exports", params={"status": "bogus"}).status_code == 400
    assert xserver.get("/exports/nope").status_code == 404
    assert httpx.delete(f"{xserver.url}/exports/nope").status_code == 404
    ok = post(xserver, {**BASE, "executor": "local", "destination": "ok/base.tif"})  # the base request itself is fine
    assert ok.status_code == 202, ok.text


# --- the whole 33TWM tile, local and SLURM ----------------------------------------------------------


@pytest.fixture(scope="module")
def whole(xserver, s3) -> dict[str, dict]:
    """Three exports of the whole tile, submitted together: local in 4 chunks; local in 1 chunk to S3; SLURM in
    4 chunks (through the cloudfree-truecolor preset and the native grid defaults)."""
    return {
        "local": submit(xserver, {**WHOLE, "executor": "local"}),
        "single": submit(xserver, {**WHOLE, "executor": "local", "chunk_size": 1024,
                                   "destination": f"s3://{s3.bucket}/exports/"}),
        "slurm": submit(xserver, {"collection": C, "preset": "cloudfree-truecolor", "bbox": TILE_BBOX,
                                  "bbox_crs": "EPSG:32633", "executor": "slurm"}),
    }


def test_submit_answers_202_with_id_links_and_estimate(whole):
    answer = whole["local"]
    assert answer["status"] in ("queued", "running") and answer["id"]
    assert {link["rel"] for link in answer["links"]} >= {"self"}
    estimate = answer["estimate"]
    assert (estimate["width"], estimate["height"], estimate["pixels"]) == (915, 915, 915 * 915)
    assert estimate["chunks"] == 4 and estimate["bytes"] == 915 * 915 * 3 * 4
    assert estimate["items"] == 5 and estimate["item_reads"] == 20
    assert whole["single"]["estimate"]["chunks"] == 1
    assert whole["slurm"]["estimate"]["chunks"] == 4 and whole["slurm"]["estimate"]["crs"] == "EPSG:32633"


def test_server_restart_during_exports(xserver, whole, slurm, s3):
    """The server stops while the exports run and a new one starts on the same home: every export is still
    listed; the SLURM export keeps running and finishes; the interrupted local ones are resumed."""
    assert xserver.get(f"/exports/{whole['slurm']['id']}").json()["status"] in ("queued", "running")
    stop_server(xserver)
    restarted = start_server(xserver.home, env=server_env(slurm, s3))
    xserver.url, xserver.process = restarted.url, restarted.process  # later tests use the new server
    listed = {e["id"]: e for e in xserver.get("/exports", params={"limit": 1000}).json()["exports"]}
    assert {whole[name]["id"] for name in whole} <= set(listed)
    record = finished(xserver, whole["slurm"]["id"])
    assert record["jobs"] == whole["slurm"]["jobs"] and record["progress"]["chunks_done"] == 4
    for name in ("local", "single"):
        assert finished(xserver, whole[name]["id"])["error"] is None


def test_local_export_is_a_cog_equal_to_the_composite_tiles(xserver, whole, tmp_path):
    record = finished(xserver, whole["local"]["id"])
    assert record["progress"] == {"chunks_done": 4, "chunks_total": 4, "fraction": 1.0}
    assert record["created"] <= record["started"] <= record["finished"]
    path = result_file(xserver, record)
    assert record["result"] == f"{record['id']}.tif"
    validate_cog(path)
    with rasterio.open(path) as src:
        assert (src.crs.to_epsg(), src.width, src.height, src.count, src.dtypes[0]) == (32633, 915, 915, 3, "float32")
        assert src.transform.almost_equals(Affine(120, 0, 499980, 0, -120, 5200020))
        assert src.descriptions == ("red", "green", "blue")
    download = httpx.get(f"{xserver.url}/exports/{record['id']}/result", timeout=60)
    assert download.status_code == 200 and download.content == path.read_bytes()
    # The export, resampled (nearest) onto WebMercator z10 tiles, equals the composite tile endpoint's npy.
    query = {"assets": "red,green,blue", "method": "median", "cloud_mask": "scl", "datetime": RECIPE["datetime"]}
    for lon, lat in ((15.9, 46.45), (15.2, 46.75), (16.3, 46.1), (15.5, 46.9)):
        tile = WM.tile(lon, lat, 10)
        response = xserver.get(f"/collections/{C}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy", params=query)
        assert response.status_code == 200, response.text
        npy = np.load(io.BytesIO(response.content))
        image = np.ma.stack([nearest_tile(path, WM, tile, band=b) for b in (1, 2, 3)])
        exported, exported_valid = image.data, ~image.mask[0]
        tile_valid = npy[3] > 0
        assert (exported_valid == tile_valid).all(), tile
        assert exported_valid.sum() > 20000
        np.testing.assert_allclose(exported[:, exported_valid], npy[:3, exported_valid], rtol=0, atol=1e-5)


def test_chunked_export_has_no_seams(xserver, whole, s3, tmp_path):
    chunked = read(result_file(xserver, finished(xserver, whole["local"]["id"])))
    single_record = finished(xserver, whole["single"]["id"])
    single_path = tmp_path / "single.tif"
    s3.client.download_file(s3.bucket, single_record["result"].split("/", 3)[3], str(single_path))
    assert np.array_equal(chunked, read(single_path), equal_nan=True)
    # the chunk borders (columns and rows 511/512) are inside the data, and continuous there
    assert np.isfinite(chunked[:, 500:520, 500:520]).all()


def test_slurm_export_runs_an_array_and_a_merge_job(xserver, whole):
    record = finished(xserver, whole["slurm"]["id"])
    assert record["executor"] == "slurm" and len(record["jobs"]) == 2
    array, merge = record["jobs"]
    states = job_states(array)
    assert sorted(states) == [f"{array}_{i}" for i in range(4)] and set(states.values()) == {"COMPLETED"}, states
    assert ended_states(merge) == {merge: "COMPLETED"}
    logs = work_dir(xserver, record["id"]) / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["chunk-0.log", "chunk-1.log", "chunk-2.log", "chunk-3.log", "merge.log"]
    assert "read threads: 1)" in (logs / "chunk-0.log").read_text()  # the task's one CPU (--cpus-per-task=1)
    submitted = (work_dir(xserver, record["id"]) / "jobs.txt").read_text()
    assert "--array=0-3%4" in submitted and f"--dependency=afterok:{array}" in submitted
    times = {}
    for job in (array, merge):
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            times[fields.get("ArrayTaskId") or job] = (fields["StartTime"], fields["EndTime"])
    assert times[merge][0] >= max(end for task, (_, end) in times.items() if task != merge), times
    validate_cog(result_file(xserver, record))
    assert not live_jobs(record["jobs"])
    local = read(result_file(xserver, finished(xserver, whole["local"]["id"])))
    assert np.array_equal(read(result_file(xserver, record)), local, equal_nan=True)


def test_stac_item_and_listing(xserver, whole):
    record = finished(xserver, whole["local"]["id"])
    item = xserver.get(f"/exports/{record['id']}/item").json()
    assert item["type"] == "Feature" and item["properties"]["proj:epsg"] == 32633
    assert item["properties"]["proj:shape"] == [915, 915]
    west, south, east, north = item["bbox"]
    assert west < 15.7 < east and south < 46.45 < north
    asset = item["assets"]["data"]
    assert asset["href"] == f"{xserver.url}/exports/{record['id']}/result" and "cloud-optimized" in asset["type"]
    assert (xserver.home / "exports" / asset["jeo:location"]).is_file()  # relative to the export root
    assert not asset["jeo:location"].startswith("/")
    assert [b["name"] for b in asset["raster:bands"]] == ["red", "green", "blue"]
    listed = xserver.get("/exports", params={"status": "finished"}).json()["exports"]
    assert record["id"] in {e["id"] for e in listed} and {e["status"] for e in listed} == {"finished"}


# --- cancel and failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_cancel_while_running(xserver, executor):
    record = submit(xserver, {**WHOLE, "executor": executor, "chunk_size": 256, "destination": f"cancel/{executor}"})
    assert record["estimate"]["chunks"] == 16
    wait(xserver, record["id"], until=("running", *TERMINAL))
    deadline = time.monotonic() + 120
    while not list((work_dir(xserver, record["id"]) / "logs").glob("chunk-*.log")):  # a chunk job really started
        assert time.monotonic() < deadline
        time.sleep(0.2)
    canceled = httpx.delete(f"{xserver.url}/exports/{record['id']}", timeout=60)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    again = httpx.delete(f"{xserver.url}/exports/{record['id']}", timeout=60)  # idempotent
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    deadline = time.monotonic() + 60
    while work_dir(xserver, record["id"]).exists() or (executor == "slurm" and live_jobs(record["jobs"])):
        assert time.monotonic() < deadline, f"left behind: {list(work_dir(xserver, record['id']).rglob('*'))}"
        time.sleep(0.3)
    if executor == "slurm":
        assert len(record["jobs"]) == 2 and not live_jobs(record["jobs"])
    else:  # the local worker processes are gone
        pids = {int(c["job"][4:]) for c in xserver.get(f"/exports/{record['id']}").json()["chunks"]}
        assert pids and not [pid for pid in pids if Path(f"/proc/{pid}").exists()
                             and "export-worker" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    assert not (xserver.home / "exports" / "cancel" / f"{executor}.tif").exists()
    time.sleep(1.5)
    after = xserver.get(f"/exports/{record['id']}").json()
    assert after["status"] == "canceled" and after["result"] is None
    assert xserver.get(f"/exports/{record['id']}/result").status_code == 409


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_failing_chunk_fails_the_export_with_its_log_tail(xserver, executor):
    """With `on_error: fail`, an unreadable scene fails the export (the default skips it: test_export_faults.py)."""
    body = {**WHOLE, "collection": BROKEN, "executor": executor, "destination": f"broken/{executor}", "on_error": "fail"}
    record = wait(xserver, submit(xserver, body)["id"])
    assert record["status"] == "failed", record
    assert record["error"].startswith("chunk ") and BROKEN_ITEM in record["error"]
    assert BROKEN_ITEM in record["log_tail"] and "Traceback" in record["log_tail"]
    assert "B04.tif" in record["log_tail"] or "red" in record["log_tail"]
    assert str(xserver.home) not in json.dumps(record) and str(REPO_ROOT) not in record["log_tail"]
    assert not (xserver.home / "exports" / "broken" / f"{executor}.tif").exists()
    if executor == "slurm":
        deadline = time.monotonic() + 60
        while live_jobs(record["jobs"]):
            assert time.monotonic() < deadline, live_jobs(record["jobs"])
            time.sleep(0.3)
    assert not list(work_dir(xserver, record["id"]).glob("chunks/*.tif"))


def test_a_chunk_whose_every_scene_is_unreadable_names_each_item_and_asset(xserver):
    """Only the broken scene is selected: its chunk is nodata and the status names the item, the asset and the
    reason (without server paths), as for a scene skipped among readable ones."""
    body = {**WHOLE, "collection": BROKEN, "datetime": "2023-08-13T00:00:00Z/2023-08-13T23:59:59Z", "resolution": 960,
            "executor": "local", "destination": "broken/only"}
    record = finished(xserver, submit(xserver, body)["id"])
    assert list(record["skipped"]) == [BROKEN_ITEM], record
    reason = record["skipped"][BROKEN_ITEM]
    assert reason.startswith(f"item '{BROKEN_ITEM}' asset '") and "red" in reason and "/" not in reason, reason
    assert np.isnan(read(result_file(xserver, record))).all()


# --- S3 --------------------------------------------------------------------------------------------


def test_export_to_s3(xserver, whole, s3, tmp_path):
    record = finished(xserver, whole["single"]["id"])
    key = f"exports/{record['id']}.tif"
    assert record["result"] == f"s3://{s3.bucket}/{key}"
    head = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentType"].startswith("image/tiff") and head["ContentLength"] > 1_000_000
    local = tmp_path / "from-s3.tif"
    s3.client.download_file(s3.bucket, key, str(local))
    validate_cog(local)
    assert read(local).shape == (3, 915, 915)
    redirect = httpx.get(f"{xserver.url}/exports/{record['id']}/result", timeout=60)
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3.url)
    followed = httpx.get(redirect.headers["location"], timeout=60)
    assert followed.status_code == 200 and followed.content == local.read_bytes()
    item = xserver.get(f"/exports/{record['id']}/item").json()
    assert item["assets"]["data"]["jeo:location"] == record["result"]


# --- CLI -------------------------------------------------------------------------------------------


def jeo(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JEO_HOME": str(home), "JEO_EXPORT_LOCAL_WORKERS": "1"}
    return subprocess.run([sys.executable, "-m", "tiler.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_export_waits_or_returns_the_id(xserver, tmp_path):
    """`jeo export` without the server: --no-wait prints the id at once (a raw GeoTIFF here), the default waits
    (a COG clipped to a GeoJSON triangle here); both land in the same store as the server's exports."""
    recipe = ["--assets", "red,green,blue", "--method", "median", "--cloud-mask", "scl", "--datetime", RECIPE["datetime"]]
    grid = ["--crs", "EPSG:32633", "--resolution", "480", "--executor", "local"]
    quick = jeo(xserver.home, "export", C, *recipe, *grid, "--bbox", "15.5,46.2,15.9,46.5", "--format", "gtiff",
                "--destination", "cli/nowait", "--no-wait")
    assert quick.returncode == 0, quick.stderr
    export_id = quick.stdout.strip().splitlines()[-1]
    assert xserver.get(f"/exports/{export_id}").json()["status"] in ("queued", "running")  # --no-wait: at once
    triangle = {"type": "Polygon", "coordinates": [[[15.5, 46.2], [15.9, 46.2], [15.5, 46.5], [15.5, 46.2]]]}
    (tmp_path / "area.json").write_text(json.dumps(triangle))
    waited = jeo(xserver.home, "export", C, *recipe, *grid, "--geometry", str(tmp_path / "area.json"),
                 "--destination", "cli/waited", "--json")
    assert waited.returncode == 0, waited.stderr
    summary = json.loads(waited.stdout)
    assert summary["status"] == "finished" and summary["progress"]["chunks_done"] == summary["progress"]["chunks_total"]
    assert "export " in waited.stderr  # the estimate line
    validate_cog(summary["result"])
    from rasterio.warp import transform as warp

    with rasterio.open(summary["result"]) as src:
        data = src.read()
        (x_in, x_out), (y_in, y_out) = warp("EPSG:4326", src.crs, [15.55, 15.85], [46.25, 46.45])
        inside, outside = src.index(x_in, y_in), src.index(x_out, y_out)
    assert np.isfinite(data[:, inside[0], inside[1]]).all() and np.isnan(data[:, outside[0], outside[1]]).all()
    status = json.loads(jeo(xserver.home, "export-status", export_id, "--wait").stdout)
    assert status["status"] == "finished", status
    with rasterio.open(status["result"]) as src:
        assert src.driver == "GTiff" and src.profile["tiled"] and src.count == 3 and not src.overviews(1)
    assert xserver.get(f"/exports/{export_id}").json()["status"] == "finished"  # the server sees CLI exports
    bad = jeo(xserver.home, "export", C, *recipe, "--bbox", "1,2,3", "--no-wait")
    assert bad.returncode != 0 and "bbox" in bad.stderr
