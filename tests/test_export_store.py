"""The export store on both backends (issue 15): the catalog's SQLite file and PostgreSQL (`catalog_location`
in conftest.py). Records, destination claims, chunk claims and leases behave the same on both; several stores
(connections, as several servers and workers have) claim chunks and destinations concurrently without
taking one twice."""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tiler.exports.leases import MERGE, RUN, process_token
from tiler.exports.plan import DestinationConflict, ExportPlan, ExportRecord, now
from tiler.exports.store import EVERYONE, ExportStore

C = "sentinel-2-l2a-timeseries"


def record(export_id: str, tmp_path, destination: str | None = None, chunks: int = 2, created_by: str | None = None):
    """A queued local export of `chunks` 256² chunks writing `destination` (default `<id>.tif`)."""
    name = destination or f"{export_id}.tif"
    plan = ExportPlan(
        id=export_id, collection=C, recipe={}, compositing={}, selection={}, read_options={}, crs="EPSG:32633",
        transform=[120.0, 0.0, 0.0, 0.0, -120.0, 0.0], width=256 * chunks, height=256, chunk_size=256, format="cog",
        destination={"kind": "local", "path": str(tmp_path / name), "name": name}, descriptions=["red"],
        executor="local", work_dir=str(tmp_path / "work" / export_id),
    )  # fmt: skip
    return ExportRecord(id=export_id, status="queued", collection=C, executor="local", request={"collection": C},
                        plan=plan, created=now(), chunks_total=plan.chunks_total, created_by=created_by)


def test_records_round_trip_and_list_by_status_and_caller(catalog_location, tmp_path):
    store = ExportStore(catalog_location)
    store.insert(record("a", tmp_path))
    store.insert(record("b", tmp_path, created_by="token:1"))
    store.chunk_started("a", 0, "pid:1")
    assert store.chunk_finished("a", 0, "pid:1", "done", 1.5, {"S2B_X": "item 'S2B_X' asset 'red': unreadable"})
    assert store.chunk_states("a") == {0: "done"} and store.chunks_done("a") == 1
    got = store.require("a")
    assert (got.status, got.chunks_done, got.chunks_total, got.run, got.merges) == ("running", 1, 2, None, 0)
    assert got.skipped == {"S2B_X": "item 'S2B_X' asset 'red': unreadable"} and got.plan == record("a", tmp_path).plan
    assert [r.id for r in store.list(created_by=None)] == ["a"]
    assert [r.id for r in store.list(created_by="token:1")] == ["b"]
    assert {r.id for r in store.list(created_by=EVERYONE)} == {r.id for r in store.active()} == {"a", "b"}
    assert store.transition("b", "canceled", error="canceled by request")
    assert not store.transition("b", "running")  # terminal states are final
    assert [r.id for r in store.list("canceled")] == ["b"] and store.require("b").finished is not None
    assert store.add_retry(store.require("a"), {"chunks": [1]}, ["7"]) and store.require("a").jobs == ["7"]
    assert not store.add_retry(record("a", tmp_path), {"chunks": [1]}, ["8"])  # read before the first retry
    store.delete("a")
    assert store.get("a") is None


def test_concurrent_stores_claim_each_chunk_once(catalog_location, tmp_path):
    """Four stores (own connections) take chunks of one export at once, as a pool's workers do."""
    ExportStore(catalog_location).insert(record("e", tmp_path, chunks=24))
    token = ExportStore(catalog_location).acquire("e", RUN, process_token())
    stores = [ExportStore(catalog_location) for _ in range(4)]
    start = threading.Barrier(len(stores))

    def take(store: ExportStore) -> list[int]:
        start.wait()
        taken = []
        while (chunk := store.claim_chunk("e", 24, f"pid:{id(store)}", token)) is not None:
            taken.append(chunk)
        return taken

    with ThreadPoolExecutor(len(stores)) as pool:
        claims = list(pool.map(take, stores))
    assert sorted(c for taken in claims for c in taken) == list(range(24)), claims
    assert stores[0].require("e").status == "running"


def test_concurrent_inserts_claim_a_destination_once(catalog_location, tmp_path):
    stores = [ExportStore(catalog_location) for _ in range(6)]
    start = threading.Barrier(len(stores))

    def insert(i: int) -> str:
        start.wait()
        try:
            stores[i].insert(record(f"d{i}", tmp_path, destination="shared.tif"))
            return "inserted"
        except DestinationConflict as error:
            assert "another export" in str(error)
            return "refused"

    with ThreadPoolExecutor(len(stores)) as pool:
        outcomes = list(pool.map(insert, range(len(stores))))
    assert sorted(outcomes) == ["inserted"] + ["refused"] * 5
    winner = next(f"d{i}" for i, outcome in enumerate(outcomes) if outcome == "inserted")
    assert stores[0].transition(winner, "failed", error="x")  # ending the export releases the destination
    stores[0].insert(record("again", tmp_path, destination="shared.tif"))


def test_leases_fence_a_process_that_lost_its_lease(catalog_location, tmp_path):
    """A lease held by a live process cannot be taken; once the process is gone it can, with a new token, and the
    old token can no longer record chunks, claim chunks or finish the export. Another host's lease is taken over
    once its heartbeat is older than the lease timeout."""
    store = ExportStore(catalog_location, lease_timeout=4)
    store.insert(record("e1", tmp_path))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        first = store.acquire("e1", RUN, process_token(sleeper.pid))
        assert first == 1 and store.acquire("e1", RUN, process_token()) is None
        assert store.claim_chunk("e1", 2, "pid:1", first) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    second = store.acquire("e1", RUN, process_token(), resume=True)
    assert second == 2 and store.get("e1").attempts == 1
    assert store.get("e1").run.token == 2 and store.get("e1").run.holder == process_token()
    assert store.claim_chunk("e1", 2, "pid:1", first) is None  # the old holder's workers stop
    assert not store.chunk_finished("e1", 0, "pid:1", "done", fence=(RUN, first))
    assert store.chunk_finished("e1", 0, "pid:1", "done", fence=(RUN, second))
    assert store.acquire("e1", MERGE, "another-host.example:1:1") == 1
    assert store.acquire("e1", MERGE, process_token()) is None  # fresh heartbeat from another host
    time.sleep(0.2)
    impatient = ExportStore(catalog_location, lease_timeout=0.1)  # its heartbeat is older than 0.1 s: taken over
    assert impatient.acquire("e1", MERGE, process_token()) == 2
    assert not store.transition("e1", "finished", fence=(MERGE, 1), result="x")
    assert store.transition("e1", "finished", fence=(MERGE, 2), result="x") and store.get("e1").merges == 2
    assert store.acquire("e1", MERGE, process_token()) is None  # finished: no more merges


@pytest.mark.parametrize("catalog_location", ["postgres"], indirect=True)
def test_postgres_records_live_beside_pgstac_in_the_jeo_schema(catalog_location, tmp_path):
    import psycopg

    ExportStore(catalog_location).insert(record("p", tmp_path))
    with psycopg.connect(catalog_location) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'jeo'")}
        assert {"exports", "export_chunks", "export_leases"} <= tables
        assert conn.execute("SELECT id FROM jeo.exports").fetchall() == [("p",)]
