"""The catalog on the real STAC catalog in shared/data: ingest, re-ingest, broken catalogs, search; each test on
both backends (SQLite and PostgreSQL/pgSTAC, the `catalog_location` fixture) unless it is about one of them."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mosaics.catalog import Catalog, SQLiteCatalog
from mosaics.errors import CatalogError, InvalidParameter, NotFound
from mosaics.stac import resolve_href

TS = "sentinel-2-l2a-timeseries"
L1C = "sentinel-2-l1c-10m"
LANDSAT = "landsat-8-l1"
S2_0810, S2_0813, S2_0815, S2_0818, S2_0820 = (
    "S2B_33TWM_20230810_0_L2A",
    "S2B_33TWM_20230813_0_L2A",
    "S2A_33TWM_20230815_0_L2A",
    "S2A_33TWM_20230818_0_L2A",
    "S2B_33TWM_20230820_0_L2A",
)
LANDSAT_ITEM = "LC80200392015216LGN00"
# Inside the no-data wedge in the west of tile 33TWM (orbit R079 of 10/15/20 August does not cover it).
WEDGE_UTM = (501000.0, 5190000.0, 505000.0, 5199000.0)
WEDGE_LONLAT = (15.02, 46.85, 15.08, 46.92)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def dump(db_path: Path) -> str:
    """Full SQL dump (schema and rows, R*Tree shadow tables included) through a separate connection."""
    with sqlite3.connect(db_path) as db:
        return "\n".join(db.iterdump())


def snapshot(location: str) -> dict:
    """Everything a catalog answers (collections, versions, items with their JSON), through a new connection."""
    catalog = Catalog(location)
    try:
        return {
            c.id: (c, c.stac, catalog.version(c.id), [(i, i.stac, i.version) for i in catalog.search(c.id)])
            for c in catalog.collections()
        }
    finally:
        catalog.close()


def item_json(root: Path, collection: str, item_id: str) -> Path:
    return root / collection / item_id / f"{item_id}.json"


def ids(items: list) -> list[str]:
    return [item.id for item in items]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def catalog(request, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """Read-only catalog holding the whole shared catalog, on each backend."""
    if request.param == "sqlite":
        catalog = Catalog(tmp_path_factory.mktemp("catalog") / "catalog.db")
    else:
        catalog = Catalog(request.getfixturevalue("postgres").database())
    catalog.ingest(shared_data)
    yield catalog
    catalog.close()


@pytest.fixture
def data_copy(shared_data: Path, tmp_path: Path) -> Path:
    """Copy of the shared catalog: JSON files copied (free to edit), other files symlinked (free to delete).

    The symlinks point outside the copy: ingest it with `allowed_roots=[shared_data]`."""

    def copy(src: str, dst: str) -> None:
        shutil.copy2(src, dst) if src.endswith(".json") else os.symlink(src, dst)

    return Path(shutil.copytree(shared_data, tmp_path / "data", copy_function=copy))


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1))


# --- ingest ------------------------------------------------------------------------------------


def test_ingest_whole_catalog(shared_data: Path, catalog_location: str) -> None:
    catalog = Catalog(catalog_location)
    report = catalog.ingest(shared_data / "catalog.json")
    assert (len(report.collections), report.items_added, report.items_updated, report.items_unchanged) == (4, 12, 0, 0)
    assert [c.id for c in catalog.collections()] == [LANDSAT, L1C, "sentinel-2-l2a-allbands", TS]
    assert sum(len(catalog.search(c.id)) for c in catalog.collections()) == 12

    path = item_json(shared_data, TS, S2_0810)
    source = json.loads(path.read_text())
    item = catalog.item(TS, S2_0810)
    assert item.collection == TS
    assert item.datetime == utc(2023, 8, 10, 9, 57, 57, 166000)
    assert item.cloud_cover == 68.89
    assert item.platform == "sentinel-2b"
    assert item.processing_baseline == "05.09"
    assert item.bbox == tuple(source["bbox"])
    assert item.geometry == source["geometry"]
    assert item.properties == source["properties"]
    assert list(item.assets) == list(source["assets"])
    assert item.stac["id"] == S2_0810 and item.stac["links"] == source["links"]

    red = item.assets["red"]
    assert red.href == str(path.parent / "B04.tif")  # absolute
    assert item.stac["assets"]["red"]["href"] == red.stac["href"] == f"{TS}/{S2_0810}/B04.tif"  # relative to the root
    assert red.roles == ("data", "reflectance")
    assert len(red.bands) == 1
    assert red.bands[0].scale == 0.0001 and red.bands[0].offset == 0.0
    assert red.bands[0].nodata == 0 and red.bands[0].data_type == "uint16"
    assert red.names == ("B04",) and red.common_names == ("red",)
    assert red.transform == tuple(source["assets"]["red"]["proj:transform"]) == (
        120.0, 0.0, 499980.0, 0.0, -120.0, 5200020.0,
    )  # fmt: skip
    assert red.shape == (915, 915)
    assert red.epsg == 32633  # item-level proj:epsg: the assets have none
    assert red.gsd == 120.0
    assert red.is_raster and not item.assets["granule_metadata"].is_raster

    qa = catalog.item(LANDSAT, LANDSAT_ITEM).assets["qa"]
    assert qa.bands[0].nodata is None and qa.bands[0].scale == 1.0
    assert (qa.epsg, qa.shape, qa.names) == (32616, (603, 627), ())
    assert catalog.item("sentinel-2-l2a-allbands", "S2A_29RKH_20200219_0_L2A").processing_baseline == "02.14"
    assert catalog.item(L1C, "eolearn_S2L1C_20150711T100008").processing_baseline is None


def test_sqlite_schema(shared_data: Path, tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.db")
    assert isinstance(catalog, SQLiteCatalog)
    catalog.ingest(shared_data)
    red = catalog.item(TS, S2_0810).assets["red"]
    with sqlite3.connect(tmp_path / "catalog.db") as db:
        schema = {name: sql for name, sql in db.execute("SELECT name, sql FROM sqlite_master")}
        sql = "SELECT cloud_cover, href FROM items JOIN assets ON item = pk WHERE id = ? AND key = 'red'"
        assert db.execute(sql, (S2_0810,)).fetchone() == (68.89, red.href)
    assert "USING rtree" in schema["item_boxes"] and "min_day" in schema["item_boxes"]
    assert {"items_datetime", "items_cloud_cover"} <= schema.keys()


def test_collections(catalog: Catalog, shared_data: Path) -> None:
    source = json.loads((shared_data / TS / "collection.json").read_text())
    collection = catalog.collection(TS)
    assert collection.title == source["title"] and collection.description == source["description"]
    assert collection.bbox == tuple(source["extent"]["spatial"]["bbox"][0])
    assert collection.interval == (utc(2023, 8, 10, 9, 57, 57, 166000), utc(2023, 8, 20, 9, 57, 56, 646000))
    assert collection.stac == source
    with pytest.raises(NotFound, match="collection 'nope'"):
        catalog.collection("nope")
    with pytest.raises(NotFound):
        catalog.version("nope")
    with pytest.raises(NotFound, match="item 'nope'"):
        catalog.item(TS, "nope")
    with pytest.raises(NotFound, match="collection 'nope'"):
        catalog.search("nope")


def test_collection_extent_falls_back_to_items(shared_data: Path, data_copy: Path, catalog_location: str) -> None:
    edit_json(data_copy / L1C / "collection.json", lambda doc: doc.pop("extent"))
    catalog = Catalog(catalog_location)
    catalog.ingest(data_copy / L1C / "collection.json", [shared_data])
    collection = catalog.collection(L1C)
    assert collection.interval == (utc(2015, 7, 11, 10, 0, 8), utc(2015, 9, 9, 10, 0, 17))
    assert collection.bbox == pytest.approx((14.5513398, 45.8658894, 14.5642893, 45.8750272), abs=1e-4)


def test_ingest_directory_collection_and_single_item(shared_data: Path, catalog_location: str) -> None:
    catalog = Catalog(catalog_location)
    report = catalog.ingest(item_json(shared_data, TS, S2_0813))  # brings its collection document along
    assert (report.collections, report.items_added) == ((TS,), 1)
    assert ids(catalog.search(TS)) == [S2_0813]
    assert catalog.item(TS, S2_0813).stac["assets"]["red"]["href"] == "B04.tif"  # relative to the item's folder
    report = catalog.ingest(shared_data / TS / "collection.json")
    # The item's hrefs are now relative to the collection's folder: its STAC document changed.
    assert (len(report.collections), report.items_added, report.items_updated) == (1, 4, 1)
    assert catalog.item(TS, S2_0813).stac["assets"]["red"]["href"] == f"{S2_0813}/B04.tif"
    report = catalog.ingest(str(shared_data))  # a directory: its catalog.json
    assert (len(report.collections), report.items_added, report.items_updated) == (4, 7, 5)
    report = catalog.ingest(shared_data)
    assert (report.items_added, report.items_updated, report.items_unchanged) == (0, 0, 12)


def test_reingest_changes_nothing(shared_data: Path, catalog_location: str) -> None:
    catalog = Catalog(catalog_location)
    catalog.ingest(shared_data)
    before = snapshot(catalog_location)
    versions = {c.id: catalog.version(c.id) for c in catalog.collections()}
    item_versions = {i.id: i.version for c in versions for i in catalog.search(c)}
    report = catalog.ingest(shared_data)
    assert (len(report.collections), report.items_added, report.items_updated, report.items_unchanged) == (4, 0, 0, 12)
    assert snapshot(catalog_location) == before
    assert {c.id: catalog.version(c.id) for c in catalog.collections()} == versions == catalog.versions()
    assert {i.id: i.version for c in versions for i in catalog.search(c)} == item_versions


def test_changed_item_gets_new_version(shared_data: Path, data_copy: Path, catalog_location: str) -> None:
    catalog = Catalog(catalog_location)
    catalog.ingest(data_copy, [shared_data])
    old = {i.id: i.version for i in catalog.search(TS)}
    versions = {c.id: catalog.version(c.id) for c in catalog.collections()}
    edit_json(item_json(data_copy, TS, S2_0818), lambda doc: doc["properties"].pop("eo:cloud_cover"))

    report = catalog.ingest(data_copy, [shared_data])
    assert (report.items_added, report.items_updated, report.items_unchanged) == (0, 1, 11)
    new = {i.id: i.version for i in catalog.search(TS)}
    assert new[S2_0818] != old[S2_0818]
    assert {k: v for k, v in new.items() if k != S2_0818} == {k: v for k, v in old.items() if k != S2_0818}
    changed = {c.id for c in catalog.collections() if catalog.version(c.id) != versions[c.id]}
    assert changed == {TS}
    # Without cloud cover: dropped by max_cloud (documented), sorted last by eo:cloud_cover either way.
    assert catalog.item(TS, S2_0818).cloud_cover is None
    assert S2_0818 not in ids(catalog.search(TS, max_cloud=100))
    assert ids(catalog.search(TS, sortby=["eo:cloud_cover"]))[-1] == S2_0818
    assert ids(catalog.search(TS, sortby=["-eo:cloud_cover"]))[-1] == S2_0818


def _bad_json(root: Path) -> tuple[Path, str]:
    path = item_json(root, LANDSAT, LANDSAT_ITEM)
    path.write_text(path.read_text()[:-20])
    return path, "(document)"


def _no_datetime(root: Path) -> tuple[Path, str]:
    path = item_json(root, LANDSAT, LANDSAT_ITEM)
    edit_json(path, lambda doc: doc["properties"].pop("datetime"))
    return path, "properties.datetime"


def _missing_asset_file(root: Path) -> tuple[Path, str]:
    path = item_json(root, LANDSAT, LANDSAT_ITEM)
    (path.parent / "B4.tif").unlink()
    return path, "assets.red.href"


def _no_id(root: Path) -> tuple[Path, str]:
    path = item_json(root, LANDSAT, LANDSAT_ITEM)
    edit_json(path, lambda doc: doc.pop("id"))
    return path, "id"


def _no_asset_href(root: Path) -> tuple[Path, str]:
    path = item_json(root, TS, S2_0820)
    edit_json(path, lambda doc: doc["assets"]["nir"].pop("href"))
    return path, "assets.nir.href"


def _no_geometry(root: Path) -> tuple[Path, str]:
    path = item_json(root, L1C, "eolearn_S2L1C_20150909T100017")
    edit_json(path, lambda doc: doc.pop("geometry"))
    return path, "geometry"


def _dangling_child(root: Path) -> tuple[Path, str]:
    shutil.rmtree(root / LANDSAT)
    return root / "catalog.json", "links[4].href"


@pytest.mark.parametrize(
    "corrupt",
    [_bad_json, _no_datetime, _missing_asset_file, _no_id, _no_asset_href, _no_geometry, _dangling_child],
)
def test_broken_catalog_leaves_database_unchanged(corrupt, shared_data: Path, data_copy: Path, catalog_location: str) -> None:
    catalog = Catalog(catalog_location)
    catalog.ingest(shared_data)
    before = snapshot(catalog_location)
    # The copy lives elsewhere, so every item would be rewritten (new hrefs) if the ingest were not atomic.
    path, field = corrupt(data_copy)
    with pytest.raises(CatalogError) as raised:
        catalog.ingest(data_copy, [shared_data])
    assert (raised.value.path, raised.value.field) == (str(path), field)
    assert str(path) in str(raised.value) and field in str(raised.value)
    assert snapshot(catalog_location) == before


def test_failure_while_writing_rolls_back(
    shared_data: Path, data_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog(tmp_path / "catalog.db")
    catalog.ingest(shared_data)
    before = dump(tmp_path / "catalog.db")
    replace, written = SQLiteCatalog._replace_item, []

    def fail_on_the_sixth(self: SQLiteCatalog, db: sqlite3.Connection, pk: int, item) -> None:
        written.append(item.id)
        if len(written) == 6:
            raise sqlite3.OperationalError("disk I/O error")
        replace(self, db, pk, item)

    monkeypatch.setattr(SQLiteCatalog, "_replace_item", fail_on_the_sixth)
    with pytest.raises(sqlite3.OperationalError):
        catalog.ingest(data_copy, [shared_data])  # every item changes: its hrefs point into the copy
    assert dump(tmp_path / "catalog.db") == before
    monkeypatch.undo()
    assert catalog.ingest(data_copy, [shared_data]).items_updated == 12


def test_failure_while_writing_rolls_back_pgstac(
    shared_data: Path, data_copy: Path, postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mosaics.pgstac import PgstacCatalog

    location = postgres.database()
    catalog = Catalog(location)
    catalog.ingest(shared_data)
    before = snapshot(location)
    refresh, refreshed = PgstacCatalog._refresh_version, []

    def fail_on_the_third(conn, collection_id: str) -> None:
        refreshed.append(collection_id)
        if len(refreshed) == 3:  # after pgSTAC has loaded every item and two collections were refreshed
            raise RuntimeError("connection lost")
        refresh(conn, collection_id)

    monkeypatch.setattr(PgstacCatalog, "_refresh_version", staticmethod(fail_on_the_third))
    with pytest.raises(RuntimeError):
        catalog.ingest(data_copy, [shared_data])  # every item changes: its hrefs point into the copy
    assert snapshot(location) == before
    monkeypatch.undo()
    assert catalog.ingest(data_copy, [shared_data]).items_updated == 12
    assert snapshot(location) != before


def test_item_of_unknown_collection(shared_data: Path, data_copy: Path, catalog_location: str) -> None:
    path = item_json(data_copy, TS, S2_0810)
    edit_json(path, lambda doc: doc.update(links=[]))
    catalog = Catalog(catalog_location)
    with pytest.raises(CatalogError) as raised:
        catalog.ingest(path, [shared_data])
    assert (raised.value.path, raised.value.field) == (str(path), "collection")
    assert catalog.collections() == []
    catalog.ingest(shared_data / TS / "collection.json")
    assert catalog.ingest(path, [shared_data]).items_updated == 1  # now its collection is known


def test_resolve_href() -> None:
    assert resolve_href("s3://bucket/cat/c1/item.json", "../c2/./B04.tif") == "s3://bucket/cat/c2/B04.tif"
    assert resolve_href("s3://bucket/catalog.json", "s3://other/x.json") == "s3://other/x.json"
    assert resolve_href("/data/cat/c1/item.json", "./B04.tif") == "/data/cat/c1/B04.tif"
    assert resolve_href("/data/cat/c1/item.json", "/elsewhere/B04.tif") == "/elsewhere/B04.tif"


# --- search ------------------------------------------------------------------------------------


def test_search_bbox_lonlat(catalog: Catalog) -> None:
    assert ids(catalog.search(TS, bbox=WEDGE_LONLAT)) == [S2_0818, S2_0813]
    assert ids(catalog.search(TS, bbox=(15.5, 46.3, 15.6, 46.4))) == [S2_0820, S2_0818, S2_0815, S2_0813, S2_0810]
    assert catalog.search(TS, bbox=(-87.4, 30.7, -87.3, 30.8)) == []
    assert ids(catalog.search(LANDSAT, bbox=(-87.4, 30.7, -87.3, 30.8))) == [LANDSAT_ITEM]
    # Crossing the antimeridian (west > east): the area is split, nothing here lies there.
    assert catalog.search(TS, bbox=(170, 40, -170, 50)) == []
    assert len(catalog.search(TS, bbox=(16, 40, 15.5, 50))) == 5  # covers all longitudes but 15.5..16


def test_search_bbox_utm(catalog: Catalog) -> None:
    assert ids(catalog.search(TS, bbox=WEDGE_UTM, bbox_crs="EPSG:32633")) == [S2_0818, S2_0813]
    whole_tile = (499980, 5090220, 609780, 5200020)
    assert len(catalog.search(TS, bbox=whole_tile, bbox_crs="EPSG:32633")) == 5
    assert ids(catalog.search(L1C, bbox=(465500, 5079500, 465600, 5079600), bbox_crs="EPSG:32633", limit=1)) == [
        "eolearn_S2L1C_20150909T100017"
    ]


def test_search_intersects(catalog: Catalog) -> None:
    west, south, east, north = WEDGE_LONLAT
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    wedge = {"type": "Polygon", "coordinates": [ring]}
    assert ids(catalog.search(TS, intersects=wedge)) == [S2_0818, S2_0813]
    point = {"type": "Point", "coordinates": [15.5, 46.5]}
    assert len(catalog.search(TS, intersects=point)) == 5


def test_search_datetime(catalog: Catalog) -> None:
    end_0818 = utc(2023, 8, 18, 10, 7, 54, 167000)  # exactly the datetime of 18 August: inclusive
    assert ids(catalog.search(TS, datetime=(utc(2023, 8, 13), end_0818))) == [S2_0818, S2_0815, S2_0813]
    assert ids(catalog.search(TS, datetime=(end_0818, None))) == [S2_0820, S2_0818]
    assert ids(catalog.search(TS, datetime=(None, datetime(2023, 8, 12)))) == [S2_0810]  # naive = UTC
    assert ids(catalog.search(TS, bbox=WEDGE_LONLAT, datetime=(utc(2023, 8, 14), None))) == [S2_0818]
    assert len(catalog.search(TS, datetime=(None, None))) == 5


def test_search_max_cloud(catalog: Catalog) -> None:
    assert ids(catalog.search(TS, max_cloud=1.22)) == [S2_0820, S2_0815, S2_0813]
    assert ids(catalog.search(TS, max_cloud=0)) == []
    assert ids(catalog.search(L1C, max_cloud=0, sortby=["datetime"])) == [
        "eolearn_S2L1C_20150711T100008", "eolearn_S2L1C_20150830T100547", "eolearn_S2L1C_20150909T100017",
    ]  # fmt: skip


def test_search_sortby_limit_ids(catalog: Catalog) -> None:
    newest_first = [S2_0820, S2_0818, S2_0815, S2_0813, S2_0810]
    assert ids(catalog.search(TS)) == newest_first
    assert ids(catalog.search(TS, sortby=["datetime"])) == newest_first[::-1]
    assert ids(catalog.search(TS, sortby=["eo:cloud_cover"])) == [S2_0815, S2_0813, S2_0820, S2_0818, S2_0810]
    assert ids(catalog.search(TS, sortby="-eo:cloud_cover,id")) == [S2_0810, S2_0818, S2_0820, S2_0813, S2_0815]
    assert ids(catalog.search(TS, sortby=["id"])) == sorted(newest_first)
    # Ties (three clear L1C dates at 0 %) are broken by id.
    assert ids(catalog.search(L1C, sortby=["eo:cloud_cover"], limit=3)) == [
        "eolearn_S2L1C_20150711T100008", "eolearn_S2L1C_20150830T100547", "eolearn_S2L1C_20150909T100017",
    ]  # fmt: skip
    assert ids(catalog.search(TS, limit=2)) == newest_first[:2]
    assert ids(catalog.search(TS, ids=[S2_0810, S2_0815, "nope"])) == [S2_0815, S2_0810]
    assert catalog.search(TS, ids=[]) == []


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"sortby": ["cloud_cover"]}, "sortby"),
        ({"sortby": ["-platform"]}, "sortby"),
        ({"bbox": (1, 2, 3)}, "bbox"),
        ({"bbox": (0, 10, 1, 5)}, "bbox"),
        ({"bbox": (0, 0, 1, 1), "bbox_crs": "EPSG:999999"}, "bbox_crs"),
        ({"bbox": (0, 0, 1, 1), "intersects": {"type": "Point", "coordinates": [0, 0]}}, "intersects"),
        ({"intersects": {"type": "Polygon"}}, "intersects"),
        ({"datetime": (utc(2023, 8, 20), utc(2023, 8, 10))}, "datetime"),
        ({"datetime": ("2023-08-10", None)}, "datetime"),
        ({"max_cloud": "10"}, "max_cloud"),
        ({"limit": 0}, "limit"),
    ],
)
def test_search_invalid_parameters(catalog: Catalog, kwargs: dict, parameter: str) -> None:
    with pytest.raises(InvalidParameter) as raised:
        catalog.search(TS, **kwargs)
    assert raised.value.parameter == parameter and str(raised.value).startswith(parameter)


def test_concurrent_searches(catalog: Catalog) -> None:
    def search(i: int) -> list[str]:
        return ids(catalog.search(TS, bbox=WEDGE_UTM, bbox_crs="EPSG:32633", max_cloud=50 + i % 2))

    with ThreadPoolExecutor(4) as pool:
        assert set(map(tuple, pool.map(search, range(40)))) == {(S2_0818, S2_0813)}


def test_sqlite_catalog_before_item_boxes_is_migrated(shared_data: Path, tmp_path: Path) -> None:
    """A database made with the 2-D footprint index (no time axis) gets item_boxes filled when it is opened."""
    path = tmp_path / "catalog.db"
    Catalog(path).ingest(shared_data)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE item_boxes")
        db.execute("CREATE VIRTUAL TABLE item_footprints USING rtree (id, min_lon, max_lon, min_lat, max_lat)")
        db.execute("INSERT INTO item_footprints SELECT pk, west, east, south, north FROM items")
    catalog = Catalog(path)
    with sqlite3.connect(path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "item_footprints" not in tables and db.execute("SELECT count(*) FROM item_boxes").fetchone() == (12,)
    assert ids(catalog.search(TS, bbox=WEDGE_LONLAT)) == [S2_0818, S2_0813]
    assert ids(catalog.search(TS, bbox=WEDGE_LONLAT, datetime=(utc(2023, 8, 14), None))) == [S2_0818]
