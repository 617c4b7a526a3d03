"""Exports under faults: unreadable scenes, taken destinations, a SIGKILLed server, a dead server on another
host, SLURM nodes failing and slurmctld restarting, and the S3 endpoint dying in the middle of an upload.

Real parts only: the 33TWM scenes (copied, with one COG truncated and one deleted), uvicorn on loopback, a
SLURM cluster of this module's own (started with scripts/slurm-start.sh on free ports, stopped at the end:
the shared one is never touched), moto's S3 server behind a loopback TCP proxy that can drop dead mid-upload.
Every export is small (the 915 × 915 px tile at 120 m, 256–1024 px chunks).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio

from tests.conftest import REPO_ROOT, Server, _free_port, start_server, stop_server
from tests.test_exports import TILE_BBOX, post, read, result_file, submit, validate_cog

C = "sentinel-2-l2a-timeseries"
DAMAGED = "sentinel-2-l2a-damaged"  # the time series with one truncated and one missing COG
PRUNED = "sentinel-2-l2a-pruned"  # the time series without those two scenes
CORRUPT = ("S2B_33TWM_20230813_0_L2A", "B04.tif")  # truncated to its first 16 KiB
MISSING = ("S2A_33TWM_20230815_0_L2A", "B03.tif")  # deleted
RECIPE = {"assets": ["red", "green", "blue"], "method": "median", "cloud_mask": "scl", "datetime": "2023-08-01/2023-08-31"}
WHOLE = {**RECIPE, "collection": C, "bbox": TILE_BBOX, "bbox_crs": "EPSG:32633", "crs": "EPSG:32633", "resolution": 120}
TERMINAL = ("finished", "failed", "canceled")
pytestmark = pytest.mark.slurm


# --- data ------------------------------------------------------------------------------------------


def make_home(root: Path, shared_data: Path) -> Path:
    """A JEO_HOME with the time series, a damaged copy of it and a copy without the damaged scenes."""
    from mosaics.catalog import Catalog

    source = shared_data / C
    for name, drop in ((DAMAGED, ()), (PRUNED, (CORRUPT[0], MISSING[0]))):
        target = root / "data" / name
        for path in source.rglob("*"):
            relative = path.relative_to(source)
            if relative.parts[0] in drop:
                continue
            out = target / relative
            if path.is_dir():
                out.mkdir(parents=True, exist_ok=True)
            elif path.suffix == ".json":
                out.parent.mkdir(parents=True, exist_ok=True)
                document = json.loads(path.read_text().replace(C, name))
                document["links"] = [link for link in document.get("links", [])
                                     if not any(item in link["href"] for item in drop)]
                out.write_text(json.dumps(document))
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.symlink_to(path)
    damaged = root / "data" / DAMAGED
    corrupt = damaged / CORRUPT[0] / CORRUPT[1]
    corrupt.unlink()
    corrupt.write_bytes((source / CORRUPT[0] / CORRUPT[1]).read_bytes()[:16384])
    home = root / "home"
    home.mkdir()
    catalog = Catalog(home / "catalog.db")
    for collection in (source, damaged, root / "data" / PRUNED):
        catalog.ingest(collection / "collection.json", [shared_data])  # rasters are links into the shared data
    catalog.close()
    (damaged / MISSING[0] / MISSING[1]).unlink()  # gone after ingest
    return home


# --- a SLURM cluster of this module's own ------------------------------------------------------------


@dataclass
class Cluster:
    base: Path
    env: dict[str, str]  # SLURM_BASE, SLURM_CONF and the ports: every command here is for this cluster only

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120,
                                cwd=REPO_ROOT)
        assert not check or result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    @property
    def node(self) -> str:
        return self.run("sinfo", "-h", "-o", "%N").stdout.strip()

    def task_states(self, jobs: list[str]) -> dict[str, str]:
        out = self.run("squeue", "-h", "-t", "all", "-j", ",".join(jobs), "-o", "%i %T", check=False).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    base = Path(tempfile.mkdtemp(prefix="jeo-slurm-faults-", dir="/tmp"))  # munged wants every parent dir world-readable
    base.chmod(0o755)
    env = {"SLURM_BASE": str(base), "SLURM_CONF": f"{base}/etc/slurm.conf",
           "JEO_SLURMCTLD_PORT": str(_free_port()), "JEO_SLURMD_PORT": str(_free_port())}
    env["JEO_SLURM_EXTRA_CONF"] = ("PreemptType=preempt/partition_prio\nPreemptMode=CANCEL\n"  # for `preempt`
                                   "PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10")
    own = Cluster(base, env)
    started = own.run("bash", "scripts/slurm-start.sh", "--probe", check=False)
    if started.returncode != 0:
        own.run("bash", "scripts/slurm-stop.sh", check=False)
        pytest.fail(f"a private SLURM cluster could not start:\n{started.stdout}\n{started.stderr}")
    yield own
    own.run("bash", "scripts/slurm-stop.sh", check=False)
    shutil.rmtree(base, ignore_errors=True)


# --- S3 behind a proxy that can die mid-upload ----------------------------------------------------------


class FaultProxy:
    """A loopback TCP proxy to the S3 server. `cut_after(n)`: once n bytes of a PUT went through, every
    connection is dropped and the port refuses connections until `start()`."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cut = threading.Event()
        self._limit: int | None = None
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        self.cut.clear()
        self._limit = None
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut_after(self, limit: int) -> None:
        self._limit = limit

    def stop(self) -> None:
        with self._lock:
            sockets, self._connections = [self._listener, *self._connections], []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.cut.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, outgoing: bool) -> None:
        uploaded = None  # bytes of a PUT sent so far on this connection
        try:
            while data := source.recv(65536):
                if outgoing and (uploaded is not None or b"PUT /" in data):
                    uploaded = (uploaded or 0) + len(data)
                    if self._limit is not None and uploaded > self._limit:
                        self.stop()
                        return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def proxy(s3) -> FaultProxy:
    running = FaultProxy(int(s3.url.rsplit(":", 1)[1]))
    yield running
    running.stop()


# --- the server ----------------------------------------------------------------------------------------


def server_env(cluster: Cluster, s3, proxy: FaultProxy) -> dict[str, str]:
    return {
        "SLURM_CONF": cluster.env["SLURM_CONF"], **s3.env,
        "JEO_EXPORT_CHUNK_SIZE": "512", "JEO_EXPORT_EXECUTORS": "local,slurm", "JEO_EXPORT_LOCAL_WORKERS": "2",
        "JEO_EXPORT_SLURM_MAX_PARALLEL": "4", "JEO_EXPORT_SLURM_RETRIES": "1", "JEO_EXPORT_POLL_INTERVAL": "0.5",
        "JEO_EXPORT_LEASE_TIMEOUT": "4", "JEO_EXPORT_S3_ENDPOINT_URL": proxy.url, "JEO_EXPORT_S3_REGION": "us-east-1",
    }  # fmt: skip


@pytest.fixture(scope="module")
def fserver(tmp_path_factory, shared_data, cluster, s3, proxy) -> Server:
    home = make_home(tmp_path_factory.mktemp("faults"), shared_data)
    running = start_server(home, env=server_env(cluster, s3, proxy))
    yield running
    for export in running.get("/exports", params={"limit": 1000}).json()["exports"]:
        if export["status"] not in TERMINAL:
            httpx.delete(f"{running.url}/exports/{export['id']}", timeout=60)
    stop_server(running)


@pytest.fixture(scope="module")
def reference(fserver) -> np.ndarray:
    """The whole tile in one chunk, computed without interruption: what every interrupted export must equal."""
    record = finished(fserver, submit(fserver, {**WHOLE, "executor": "local", "chunk_size": 1024})["id"])
    return read(result_file(fserver, record))


def wait(server: Server, export_id: str, until=TERMINAL, timeout: float = 300, check=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = server.get(f"/exports/{export_id}").json()
        if record["status"] in until and (check is None or check(record)):
            return record
        assert time.monotonic() < deadline, f"export {export_id} still {record['status']} after {timeout} s: {record}"
        time.sleep(0.2)


def finished(server: Server, export_id: str) -> dict:
    record = wait(server, export_id)
    assert record["status"] == "finished", record
    return record


def merge_starts(server: Server, export_id: str) -> int:
    """Merges that started, as their log tells (one line each)."""
    log = server.home / "exports-work" / export_id / "logs" / "merge.log"
    return log.read_text().count(f"export {export_id}: merge ") if log.exists() else 0


def assert_merged_once(server: Server, record: dict) -> None:
    assert record["merges"] == 1, record
    assert merge_starts(server, record["id"]) in (0, 1)  # 0: the merge log went with the work dir


def workers_of(export_id: str) -> list[int]:
    """Local worker processes of an export."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"export-worker" in cmdline and export_id.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


# --- unreadable scenes -----------------------------------------------------------------------------


def test_corrupt_and_missing_cogs_are_skipped_and_named(fserver):
    """A truncated and a deleted COG: the export finishes without those scenes (pixels equal an export of the
    catalog without them), and names them with reasons (no server paths) in its status and STAC item. With
    `on_error: fail` the export fails naming them (and SLURM chunk jobs run the same code: test_exports.py)."""
    body = {**WHOLE, "collection": DAMAGED, "executor": "local", "destination": "damaged/skipped"}
    record = finished(fserver, submit(fserver, body)["id"])
    assert set(record["skipped"]) == {CORRUPT[0], MISSING[0]}, record["skipped"]
    for reason in record["skipped"].values():
        assert "/" not in reason.replace("s3://", ""), reason
    assert "red" in record["skipped"][CORRUPT[0]] and "green" in record["skipped"][MISSING[0]]
    item = fserver.get(f"/exports/{record['id']}/item").json()
    assert item["properties"]["jeo:skipped"] == record["skipped"]
    pruned = finished(fserver, submit(fserver, {**WHOLE, "collection": PRUNED, "executor": "local", "chunk_size": 1024,
                                                "destination": "damaged/pruned"})["id"])
    assert pruned["skipped"] == {}
    assert np.array_equal(read(result_file(fserver, record)), read(result_file(fserver, pruned)), equal_nan=True)
    failing = wait(fserver, submit(fserver, {**body, "destination": "damaged/strict", "on_error": "fail",
                                             "chunk_size": 1024})["id"])
    assert failing["status"] == "failed" and failing["error"].startswith("chunk "), failing
    assert CORRUPT[0] in failing["error"] or MISSING[0] in failing["error"]
    assert str(fserver.home) not in failing["error"] and "/tmp" not in failing["error"]


# --- destinations ----------------------------------------------------------------------------------

SMALL = {**RECIPE, "collection": C, "bbox": [15.5, 46.2, 15.6, 46.3], "executor": "local"}


def test_existing_destinations_are_refused_unless_overwrite(fserver, s3):
    first = finished(fserver, submit(fserver, {**SMALL, "destination": "taken/one"})["id"])
    before = result_file(fserver, first).read_bytes()
    listed = fserver.get("/exports", params={"limit": 1000}).json()["numberReturned"]
    again = post(fserver, {**SMALL, "destination": "taken/one.tif"})
    assert again.status_code == 409 and again.json()["detail"].startswith("destination:"), again.text
    assert "overwrite" in again.text and str(fserver.home) not in again.text
    assert fserver.get("/exports", params={"limit": 1000}).json()["numberReturned"] == listed  # nothing stored
    assert result_file(fserver, first).read_bytes() == before
    replaced = finished(fserver, submit(fserver, {**SMALL, "index": "ndvi", "assets": None,
                                                  "destination": "taken/one", "overwrite": True})["id"])
    assert replaced["result"] == first["result"]
    with rasterio.open(result_file(fserver, replaced)) as src:
        assert src.tags()["JEO_EXPORT_ID"] == replaced["id"] and src.descriptions == ("ndvi",)
    from tiler.exports.plan import DestinationConflict
    from tiler.exports.service import ExportService
    from tiler.settings import Settings

    with pytest.raises(DestinationConflict, match="another caller's export"):  # overwrite: only one's own results
        ExportService(Settings(home=fserver.home)).submit({**SMALL, "destination": "taken/one", "overwrite": True},
                                                          created_by="somebody-else", run_local=False)
    gone = fserver.get(f"/exports/{first['id']}/result")  # the first export's result is no longer its own
    assert gone.status_code == 410 and replaced["id"] in gone.json()["detail"]
    assert fserver.get(f"/exports/{replaced['id']}/result").content == result_file(fserver, replaced).read_bytes()
    key = f"taken/{first['id']}.tif"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"somebody else's object")
    taken = post(fserver, {**SMALL, "destination": f"s3://{s3.bucket}/{key}"})
    assert taken.status_code == 409 and "destination" in taken.text, taken.text
    assert s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == b"somebody else's object"
    overwritten = finished(fserver, submit(fserver, {**SMALL, "destination": f"s3://{s3.bucket}/{key}", "overwrite": True})["id"])
    head = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert head["Metadata"]["jeo-export-id"] == overwritten["id"] and head["ContentLength"] > 10000


def test_concurrent_posts_cannot_share_a_destination(fserver):
    """Eight POSTs to one new destination at once: one export claims it, seven get 409 naming it. Canceling
    the winner releases the claim."""
    body = {**WHOLE, "executor": "local", "destination": "race/shared"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(fserver, body), range(8)))
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 409]
    assert len(accepted) == 1 and len(refused) == 7, [(a.status_code, a.text[:200]) for a in answers]
    winner = accepted[0].json()["id"]
    assert all(r.json()["detail"].startswith("destination:") and "another export" in r.text for r in refused)
    assert httpx.delete(f"{fserver.url}/exports/{winner}", timeout=60).json()["status"] == "canceled"
    resubmitted = submit(fserver, {**body, "chunk_size": 1024})
    assert finished(fserver, resubmitted["id"])["result"].endswith("race/shared.tif")


def test_a_file_that_appears_during_the_export_is_not_overwritten(fserver):
    record = submit(fserver, {**WHOLE, "executor": "local", "destination": "appeared/x"})
    target = fserver.home / "exports" / "appeared" / "x.tif"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"written by someone else meanwhile")
    failed = wait(fserver, record["id"])
    assert failed["status"] == "failed" and "destination" in failed["error"] and "not overwritten" in failed["error"]
    assert target.read_bytes() == b"written by someone else meanwhile"


# --- SIGKILL of the server -----------------------------------------------------------------------------


def test_sigkill_of_the_server_mid_export_then_restart(fserver, cluster, s3, proxy, reference):
    """The server is SIGKILLed while a local and a SLURM export compute chunks; its local workers end with it.
    A new server on the same home resumes the local export (missing chunks) and reconciles the SLURM one:
    both finish, each merged exactly once, with the pixels of the uninterrupted reference."""
    local = submit(fserver, {**WHOLE, "executor": "local", "chunk_size": 256, "destination": "killed/local"})
    slurm = submit(fserver, {**WHOLE, "executor": "slurm", "destination": "killed/slurm"})
    assert (local["estimate"]["chunks"], slurm["estimate"]["chunks"]) == (16, 4)
    wait(fserver, local["id"], until=("running",), check=lambda r: r["progress"]["chunks_done"] >= 2)
    wait(fserver, slurm["id"], until=("running",))
    workers = workers_of(local["id"])
    assert workers, "no local worker process runs"
    fserver.process.send_signal(signal.SIGKILL)
    fserver.process.wait()
    database = sqlite3.connect(fserver.home / "catalog.db")
    status, = database.execute("SELECT status FROM exports WHERE id = ?", (local["id"],)).fetchone()
    assert status == "running", "the local export ended before the kill: nothing was interrupted"
    deadline = time.monotonic() + 20
    while [pid for pid in workers if Path(f"/proc/{pid}").exists() and b"export-worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]:
        assert time.monotonic() < deadline, "local workers outlived the killed server"
        time.sleep(0.1)
    restarted = start_server(fserver.home, env=server_env(cluster, s3, proxy))
    fserver.url, fserver.process = restarted.url, restarted.process
    for export in (local, slurm):
        record = finished(fserver, export["id"])
        assert_merged_once(fserver, record)
        validate_cog(result_file(fserver, record))
        assert np.array_equal(read(result_file(fserver, record)), reference, equal_nan=True)
    assert fserver.get(f"/exports/{local['id']}").json()["chunks"][0]["status"] == "done"
    resumed = database.execute("SELECT attempts FROM exports WHERE id = ?", (local["id"],)).fetchone()[0]
    assert resumed == 1
    assert not [e for e in fserver.get("/exports", params={"limit": 1000}).json()["exports"] if e["status"] not in TERMINAL]


# --- a dead server on another host -----------------------------------------------------------------------


def test_export_of_a_dead_server_on_another_host_is_taken_over_by_heartbeat_age(fserver):
    """An export whose run lease a server on another host holds: left alone while its heartbeat is fresh,
    taken over once it is older than JEO_EXPORT_LEASE_TIMEOUT (4 s here), then finished and merged once."""
    from tiler.exports.service import ExportService
    from tiler.settings import Settings

    service = ExportService(Settings(home=fserver.home, export_lease_timeout=4), adopt_orphans=False)
    record = service.submit({**WHOLE, "executor": "local", "resolution": 480, "destination": "remote/dead"},
                            run_local=False)
    elsewhere = "another-host.example:4242:777"
    database = sqlite3.connect(fserver.home / "catalog.db", isolation_level=None)
    database.execute("INSERT INTO export_leases VALUES (?, 'run', ?, 1, ?)", (record.id, elsewhere, time.time()))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # the other host's heartbeat is fresh: nobody takes the export over
        database.execute("UPDATE export_leases SET heartbeat = ? WHERE export = ?", (time.time(), record.id))
        assert fserver.get(f"/exports/{record.id}").json()["progress"]["chunks_done"] == 0
        time.sleep(0.5)
    holder, = database.execute("SELECT holder FROM export_leases WHERE export = ? AND name = 'run'", (record.id,)).fetchone()
    assert holder == elsewhere
    done = finished(fserver, record.id)  # no heartbeat any more: taken over after 4 s
    holder, token = database.execute(
        "SELECT holder, token FROM export_leases WHERE export = ? AND name = 'run'", (record.id,)).fetchone()
    assert holder != elsewhere and token == 2
    assert_merged_once(fserver, done)


# --- SLURM faults --------------------------------------------------------------------------------------


def running_task(cluster: Cluster, record: dict, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "RUNNING" not in cluster.task_states(record["jobs"]).values():
        assert time.monotonic() < deadline, cluster.task_states(record["jobs"])
        time.sleep(0.2)


def fail_node(cluster: Cluster) -> None:
    """Set the node DOWN (its running jobs end NODE_FAIL), then back in service."""
    node = cluster.node
    cluster.run("scontrol", "update", f"nodename={node}", "state=down", "reason=jeo-test")
    deadline = time.monotonic() + 30
    while cluster.run("sinfo", "-h", "-o", "%T").stdout.strip() not in ("idle", "mixed", "allocated"):
        cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        assert time.monotonic() < deadline, cluster.run("sinfo", "-h", "-o", "%T").stdout
        time.sleep(0.5)


def preempt(cluster: Cluster) -> None:
    """Run a job in a higher-priority partition that needs every CPU: running chunk jobs end PREEMPTED."""
    cluster.run("sbatch", "--parsable", "-p", "urgent", "-c", "4", f"--chdir={cluster.base}", "-o", "/dev/null",
                "--wrap", "sleep 1")


def test_slurm_node_failure_and_preemption_are_retried_then_fail_the_export(fserver, cluster, reference):
    """Chunk jobs ending NODE_FAIL or PREEMPTED are resubmitted (JEO_EXPORT_SLURM_RETRIES=1): the export finishes,
    equal to the reference and merged once. When the resubmitted jobs are lost again, the export fails with the
    reason."""
    record = submit(fserver, {**WHOLE, "executor": "slurm", "destination": "nodefail/retried"})
    running_task(cluster, record)
    fail_node(cluster)
    done = finished(fserver, record["id"])
    assert len(done["retries"]) == 1 and "NODE_FAIL" in done["retries"][0]["reason"], done["retries"]
    assert len(done["jobs"]) == 4
    assert_merged_once(fserver, done)
    assert np.array_equal(read(result_file(fserver, done)), reference, equal_nan=True)

    record = submit(fserver, {**WHOLE, "executor": "slurm", "destination": "nodefail/exhausted"})
    running_task(cluster, record)
    preempt(cluster)
    retried = wait(fserver, record["id"], until=("running", *TERMINAL), check=lambda r: r["retries"])
    assert "PREEMPTED" in retried["retries"][0]["reason"], retried["retries"]
    deadline = time.monotonic() + 120
    while True:  # until a resubmitted chunk job runs (the preempted jobs may be resubmitted in one or more arrays)
        retries = fserver.get(f"/exports/{record['id']}").json()["retries"]
        if "RUNNING" in cluster.task_states([r["array"] for r in retries]).values():
            break
        assert time.monotonic() < deadline, retries
        time.sleep(0.1)
    fail_node(cluster)
    failed = wait(fserver, record["id"])
    assert failed["status"] == "failed" and "NODE_FAIL (after 1 resubmission(s))" in failed["error"], failed
    assert not (fserver.home / "exports" / "nodefail" / "exhausted.tif").exists()


def test_slurmctld_shutdown_and_restart_mid_export(fserver, cluster, reference):
    """slurmctld stops while the chunk jobs run: the export stays active (status answered, nothing failed), new
    SLURM exports are refused with 400 naming `executor` and not stored; once slurmctld is back the export
    finishes, merged once, equal to the reference."""
    record = submit(fserver, {**WHOLE, "executor": "slurm", "destination": "ctld/restarted"})
    running_task(cluster, record)
    cluster.run("scontrol", "shutdown", "slurmctld")
    deadline = time.monotonic() + 30
    while cluster.run("scontrol", "ping", check=False).returncode == 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    listed = fserver.get("/exports", params={"limit": 1000}).json()["numberReturned"]
    refused = post(fserver, {**WHOLE, "executor": "slurm", "destination": "ctld/refused"})
    assert refused.status_code == 400 and refused.json()["detail"].startswith("executor:"), refused.text
    assert fserver.get("/exports", params={"limit": 1000}).json()["numberReturned"] == listed
    time.sleep(3)  # a few reconciliations without the controller
    assert fserver.get(f"/exports/{record['id']}").json()["status"] in ("queued", "running")
    cluster.run("bash", "scripts/slurm-start.sh")
    done = finished(fserver, record["id"])
    assert_merged_once(fserver, done)
    assert np.array_equal(read(result_file(fserver, done)), reference, equal_nan=True)


def test_missing_slurm_tools_are_a_400_naming_executor(monkeypatch, tmp_path):
    from mosaics.errors import InvalidParameter
    from tiler.exports.executors import SlurmExecutor
    from tiler.settings import Settings

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InvalidParameter) as refused:
        SlurmExecutor(None, Settings(home=tmp_path), {}).check()
    assert str(refused.value).startswith("executor: slurm: sbatch") and str(tmp_path) not in str(refused.value)


# --- S3 endpoint dying mid-upload ------------------------------------------------------------------------


def test_s3_endpoint_stopped_mid_upload_fails_the_export_and_a_resubmission_works(fserver, s3, proxy, reference):
    body = {**WHOLE, "executor": "local", "chunk_size": 1024, "destination": f"s3://{s3.bucket}/cut/result.tif"}
    proxy.cut_after(64 * 1024)
    record = submit(fserver, body)
    failed = wait(fserver, record["id"])
    assert proxy.cut.is_set(), "the upload never started"
    assert failed["status"] == "failed", failed
    assert failed["error"].startswith(f"merge failed: upload to s3://{s3.bucket}/cut/result.tif failed"), failed["error"]
    assert str(fserver.home) not in failed["error"]
    assert "cut/result.tif" not in [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]
    proxy.start()  # the endpoint is back
    again = finished(fserver, submit(fserver, body)["id"])  # the failed export released the destination
    local = Path(fserver.home) / "from-s3.tif"
    s3.client.download_file(s3.bucket, "cut/result.tif", str(local))
    validate_cog(local)
    assert np.array_equal(read(local), reference, equal_nan=True)
    assert_merged_once(fserver, again)


def test_a_database_of_the_previous_schema_is_migrated(tmp_path):
    """Additive ALTERs: the destination of an active export is claimed, its process (`owner`) becomes the run lease."""
    from tiler.exports.leases import RUN
    from tiler.exports.store import ExportStore

    plan = {"id": "old", "collection": C, "recipe": {}, "compositing": {}, "selection": {}, "read_options": {},
            "crs": "EPSG:32633", "transform": [120.0, 0, 0, 0, -120.0, 0], "width": 256, "height": 256, "chunk_size": 256,
            "format": "cog", "destination": {"kind": "local", "path": str(tmp_path / "old.tif"), "name": "old.tif"},
            "descriptions": ["red"], "executor": "local", "work_dir": str(tmp_path / "work"), "strict": True}
    database = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None)
    database.executescript("""
        CREATE TABLE exports (id TEXT PRIMARY KEY, status TEXT NOT NULL, collection TEXT NOT NULL, executor TEXT NOT NULL,
            request TEXT NOT NULL, plan TEXT NOT NULL, created TEXT NOT NULL, started TEXT, finished TEXT,
            jobs TEXT NOT NULL DEFAULT '[]', owner TEXT, error TEXT, log_tail TEXT, result TEXT,
            chunks_total INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, updated TEXT NOT NULL);
        CREATE TABLE export_chunks (export TEXT NOT NULL, chunk INTEGER NOT NULL, status TEXT NOT NULL, started TEXT,
            finished TEXT, job TEXT, seconds REAL, PRIMARY KEY (export, chunk));
    """)
    database.execute("INSERT INTO exports (id, status, collection, executor, request, plan, created, owner, chunks_total, "
                     "updated) VALUES ('old', 'running', ?, 'local', '{}', ?, 'x', 'elsewhere:1:2', 1, 'x')",
                     (C, json.dumps(plan)))
    store = ExportStore(tmp_path / "catalog.db")
    record = store.require("old")
    assert record.plan.on_error == "fail" and record.run.holder == "elsewhere:1:2" and record.run.token == 1
    assert store.lease("old", RUN).holder == "elsewhere:1:2"
    assert database.execute("SELECT owner, destination FROM exports").fetchone() == (None, str(tmp_path / "old.tif"))
    assert ExportStore(tmp_path / "catalog.db").require("old").run.token == 1  # opening it again changes nothing
