"""A Python client for jeo-tiler, for notebooks and scripts (`pip install -e '.[client]'`).

    from tiler.client import Client
    client = Client("http://127.0.0.1:8000")
    client.layer("sentinel-2-l2a-timeseries", preset="cloudfree-truecolor")        # ipyleaflet TileLayer
    ndvi = client.timeseries("sentinel-2-l2a-timeseries", point=(15.65, 46.45), index="ndvi")   # pandas
    rgb = client.read("sentinel-2-l2a-timeseries", bbox=(15.6, 46.4, 15.8, 46.5), assets="red,green,blue")
    job = client.export("sentinel-2-l2a-timeseries", bbox=(15.6, 46.4, 15.8, 46.5), preset="cloudfree-truecolor")
    job.wait(); result = job.open()                                                   # xarray
    job.layer()                                                        # the result on the map (ipyleaflet)

Recipe keywords are the tile endpoints' query parameters (`assets`, `expression`, `index`, `preset`, `datetime`,
`method`, `cloud_mask`, `rescale`, `colormap_name`, …); lists and tuples become comma-separated values. Every
HTTP error becomes a `JeoError` (`NotFound`, `InvalidRequest`) whose message is the server's.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

Recipe = Any  # str, number, bool, or a sequence of them


class JeoError(RuntimeError):
    """An error answer from the server; the message is the server's `detail`."""

    def __init__(self, status_code: int, message: str, url: str):
        self.status_code, self.message, self.url = status_code, message, url
        super().__init__(message)

    @property
    def parameter(self) -> str | None:
        """The request parameter the server named (messages start with `name: …`)."""
        head, sep, _ = self.message.partition(":")
        return head.strip() if sep and " " not in head.strip() else None


class NotFound(JeoError, LookupError):
    """404: an unknown collection, item, asset, preset or export."""


class InvalidRequest(JeoError, ValueError):
    """400 or 422: a bad parameter, named at the start of the message."""


class ExportFailed(JeoError):
    """An export ended failed or canceled."""


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text or response.reason_phrase
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg', '')}" for e in detail
        )
    return str(detail)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    return str(value)


def query(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Query parameters: None dropped, sequences comma-separated, a list of pairs (`rescale`) repeated."""
    out = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, list) and value and all(isinstance(v, (list, tuple)) for v in value):
            out += [(key, _value(v)) for v in value]
        else:
            out.append((key, _value(value)))
    return out


def _geometry(geometry: Any) -> dict[str, Any]:
    """A GeoJSON dict from a dict or an object with `__geo_interface__` (shapely, geopandas rows)."""
    return dict(getattr(geometry, "__geo_interface__", geometry))


def _data_array(content: bytes, band_names: Sequence[str] | None = None):
    """An xarray DataArray (band, y, x) with CRS and transform from GeoTIFF bytes."""
    import numpy as np
    import rioxarray
    from rasterio.io import MemoryFile

    with MemoryFile(content) as memory, memory.open() as dataset:
        array = rioxarray.open_rasterio(dataset).load()
    if band_names:
        array = array.assign_coords(band=list(band_names))
    return array.rio.write_nodata(np.nan, encoded=False)


class Client:
    """The HTTP API of one jeo-tiler server. `access_token` is sent as a bearer token (and in tile URLs)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", access_token: str | None = None, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.access_token = access_token
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, follow_redirects=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; an error answer raises `NotFound`, `InvalidRequest` or `JeoError` with its message."""
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            kind = NotFound if response.status_code == 404 else InvalidRequest if response.status_code in (400, 422) else JeoError
            raise kind(response.status_code, _detail(response), str(response.request.url))
        return response

    # --- catalog ---

    def collections(self) -> list[dict[str, Any]]:
        """Every collection (STAC)."""
        return self.request("GET", "/collections").json()["collections"]

    def collection(self, collection: str) -> dict[str, Any]:
        return self.request("GET", f"/collections/{quote(collection)}").json()

    def items(
        self, collection: str, bbox: Sequence[float] | None = None, datetime: str | None = None, limit: int = 100,
        bbox_crs: str | None = None,
    ) -> list[dict[str, Any]]:
        """Items (STAC, newest first) touching `bbox` in `datetime`."""
        params = query({"bbox": bbox, "datetime": datetime, "limit": limit, "bbox-crs": bbox_crs})
        return self.request("GET", f"/collections/{quote(collection)}/items", params=params).json()["features"]

    # --- map layers ---

    def _base(self, collection: str, item: str | None) -> str:
        path = f"/collections/{quote(collection)}"
        return path + (f"/items/{quote(item)}" if item else "")

    def tile_url(
        self, collection: str, item: str | None = None, tile_matrix_set: str = "WebMercatorQuad", format: str = "png",
        **recipe: Recipe,
    ) -> str:
        """An XYZ URL template (`{z}/{x}/{y}`) for Leaflet, folium, leafmap, …: a composite, or one item."""
        params = query({**recipe, "access_token": self.access_token})
        return (f"{self.url}{self._base(collection, item)}/tiles/{tile_matrix_set}/{{z}}/{{x}}/{{y}}.{format}"
                + (f"?{urlencode(params)}" if params else ""))  # fmt: skip

    def layer(self, collection: str, item: str | None = None, name: str | None = None, **recipe: Recipe):
        """An `ipyleaflet.TileLayer` of a composite or of one item."""
        import ipyleaflet

        return ipyleaflet.TileLayer(
            url=self.tile_url(collection, item, **recipe), name=name or item or collection, max_zoom=18,
            attribution="Contains modified Copernicus Sentinel data",
        )  # fmt: skip

    # --- processing ---

    def read(
        self, collection: str, bbox: Sequence[float] | None = None, geometry: Any = None, item: str | None = None,
        bbox_crs: str | None = None, crs: str | None = None, resolution: float | None = None,
        max_size: int | None = None, **recipe: Recipe,
    ):
        """The recipe over `bbox` (in `bbox_crs`, default lon/lat) or a GeoJSON `geometry` (pixels outside are NaN), as
        an `xarray.DataArray` (band, y, x) with CRS and transform; a composite, or one `item` (with a `time` coord).

        The grid is the data's native one unless `crs`, `resolution` or `max_size` say otherwise.
        """
        if (bbox is None) == (geometry is None):
            raise ValueError("give bbox or geometry")
        params = query({**recipe, "coord_crs": bbox_crs, "dst_crs": crs, "resolution": resolution,
                        "max_size": max_size, "return_mask": False})  # fmt: skip
        base = self._base(collection, item)
        if bbox is not None:
            response = self.request("GET", f"{base}/bbox/{_value(list(bbox))}.tif", params=params)
        else:
            response = self.request("POST", f"{base}/feature.tif", params=params, json=_geometry(geometry))
        array = _data_array(response.content, json.loads(response.headers.get("x-band-names", "null")))
        array.attrs["collection"] = collection
        if items := response.headers.get("x-items"):
            array.attrs["items"] = items.split(",")
        if moment := response.headers.get("x-datetime"):
            import pandas as pd

            array = array.assign_coords(time=pd.Timestamp(moment).tz_convert(None))
        return array

    def read_dates(
        self, collection: str, bbox: Sequence[float] | None = None, geometry: Any = None, datetime: str | None = None,
        progress: bool = True, **options: Any,
    ):
        """One cloud-masked image per acquisition day (`method=first` of that day's scenes) as an
        `xarray.DataArray` (time, band, y, x) on one grid; options as for `read`."""
        import pandas as pd
        import xarray as xr
        from tqdm.auto import tqdm

        import shapely.geometry

        bounds = bbox if bbox is not None else shapely.geometry.shape(_geometry(geometry)).bounds
        found = self.items(collection, bbox=bounds, bbox_crs=options.get("bbox_crs"), datetime=datetime, limit=1000)
        days = sorted({item["properties"]["datetime"][:10] for item in found})
        images = []
        for day in tqdm(days, desc="dates", disable=not progress):
            image = self.read(collection, bbox=bbox, geometry=geometry, datetime=day, method="first", **options)
            images.append(image.assign_coords(time=pd.Timestamp(day)))
        if not images:
            raise NotFound(404, f"no scene of {collection} touches the area in {datetime}", self.url)
        return xr.concat(images, dim="time", combine_attrs="drop_conflicts")

    def statistics(
        self, collection: str, geometry: Any, item: str | None = None, per_date: bool = False,
        percentiles: Iterable[float] | None = None, histogram_bins: int | Sequence[float] | None = None,
        histogram_range: Sequence[float] | None = None, **recipe: Recipe,
    ) -> dict[str, Any]:
        """Per band over the geometry (count, min, max, mean, std, median, percentiles, histogram): of the composite,
        of one `item`, or of each scene (`per_date=True`, a list under `dates`). The GeoJSON Feature's properties."""
        params = query({**recipe, "per_date": per_date or None, "histogram_bins": histogram_bins,
                        "histogram_range": histogram_range})  # fmt: skip
        params += [("percentiles", _value(p)) for p in percentiles or ()]
        path = f"{self._base(collection, item)}/statistics"
        return self.request("POST", path, params=params, json=_geometry(geometry)).json()["properties"]

    def timeseries(
        self, collection: str, point: Sequence[float] | None = None, geometry: Any = None, **recipe: Recipe
    ):
        """One row per scene (a `pandas.DataFrame` indexed by datetime): the mean of each output band over the usable
        pixels of a point `(x, y)` or a GeoJSON geometry, the item, and the valid and cloud-masked fractions."""
        import pandas as pd

        if (point is None) == (geometry is None):
            raise ValueError("give point or geometry")
        path = f"/collections/{quote(collection)}/timeseries"
        if point is not None:
            response = self.request("GET", path, params=query({**recipe, "point": list(point)}))
        else:
            response = self.request("POST", path, params=query(recipe), json=_geometry(geometry))
        properties = response.json()["properties"]
        frame = pd.DataFrame(properties["timeseries"])
        if frame.empty:
            return frame
        frame["datetime"] = pd.to_datetime(frame["datetime"], format="ISO8601")
        frame = frame.set_index("datetime")
        frame.attrs.update({"band_names": properties["band_names"], "cloud_mask": properties["cloud_mask"],
                            "pixels": properties["pixels"], "skipped": properties["skipped"]})  # fmt: skip
        return frame

    # --- exports ---

    def export(
        self, collection: str, bbox: Sequence[float] | None = None, geometry: Any = None, executor: str = "slurm",
        **options: Any,
    ) -> Job:
        """Submit an export (`POST /exports`) of a composite over `bbox` (with `bbox_crs`) or `geometry`; options are
        the request body's fields (`preset`, `assets`, `datetime`, `method`, `crs`, `resolution`, …)."""
        body = {"collection": collection, "bbox": list(bbox) if bbox is not None else None,
                "geometry": _geometry(geometry) if geometry is not None else None, "executor": executor, **options}
        for key in ("assets",):
            if isinstance(body.get(key), str):
                body[key] = [v.strip() for v in body[key].split(",")]
        return Job(self, self.request("POST", "/exports", json={k: v for k, v in body.items() if v is not None}).json())

    def job(self, export_id: str) -> Job:
        """An export submitted earlier."""
        return Job(self, self.request("GET", f"/exports/{quote(export_id)}").json())


class Job:
    """An export: `status()`, `wait()`, `cancel()`, `download(path)`, `open()`, `layer()`."""

    def __init__(self, client: Client, record: dict[str, Any]):
        self.client = client
        self.record = record

    @property
    def id(self) -> str:
        return self.record["id"]

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.record.get('status')!r})"

    def status(self) -> dict[str, Any]:
        """The current record: status, progress, jobs, times, error and log tail."""
        self.record = self.client.request("GET", f"/exports/{quote(self.id)}").json()
        return self.record

    def wait(self, timeout: float | None = None, poll: float = 1.0, progress: bool = True) -> Job:
        """Follow the export (a tqdm bar over its chunks) until it ends; raises `ExportFailed` unless it finished."""
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        record = self.status()
        with tqdm(total=record["progress"]["chunks_total"], desc=f"export {self.id}", unit="chunk",
                  disable=not progress) as bar:  # fmt: skip
            while True:
                bar.set_postfix_str(record["status"])
                bar.update(record["progress"]["chunks_done"] - bar.n)
                if record["status"] in ("finished", "failed", "canceled"):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"export {self.id} is still {record['status']} after {timeout} s")
                time.sleep(poll)
                record = self.status()
        if record["status"] != "finished":
            message = f"export {self.id} {record['status']}: {record.get('error') or ''}"
            if record.get("log_tail"):
                message += "\n" + record["log_tail"]
            raise ExportFailed(200, message, f"{self.client.url}/exports/{self.id}")
        return self

    def cancel(self) -> dict[str, Any]:
        """Cancel the export (idempotent)."""
        self.record = self.client.request("DELETE", f"/exports/{quote(self.id)}").json()
        return self.record

    def item(self) -> dict[str, Any]:
        """The STAC Item describing the result."""
        return self.client.request("GET", f"/exports/{quote(self.id)}/item").json()

    def layer(self, name: str | None = None, **recipe: Recipe):
        """The result as an `ipyleaflet.TileLayer`: the tiles of its item in the collection `exports`, rendered as
        the item's `renders.default` says (all bands, stretched) unless `recipe` gives the tile parameters."""
        if not recipe:
            item = self.client.request("GET", f"/collections/exports/items/{quote(self.id)}").json()
            render = item["properties"].get("renders", {}).get("default", {})
            recipe = {k: render[k] for k in ("expression", "color_formula", "colormap_name") if render.get(k)}
            recipe["rescale"] = [list(r) for r in render.get("rescale", ())] or None
        return self.client.layer("exports", self.id, name=name or f"export {self.id}", **recipe)

    def download(self, path: str | Path) -> Path:
        """Save the result file (a COG) to `path` (a directory keeps the export's file name)."""
        path = Path(path)
        if path.is_dir():
            path = path / f"{self.id}.tif"
        with self.client.http.stream("GET", f"/exports/{quote(self.id)}/result") as response:
            if response.status_code >= 400:
                response.read()
                raise JeoError(response.status_code, _detail(response), str(response.request.url))
            with open(path, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        return path

    def open(self):
        """The result as an `xarray.DataArray` (band, y, x), downloaded to a temporary file and read lazily."""
        import rioxarray

        path = self.download(Path(tempfile.mkdtemp(prefix="jeo-export-")))
        array = rioxarray.open_rasterio(path)
        names = array.attrs.get("long_name")
        if names:
            array = array.assign_coords(band=[names] if isinstance(names, str) else list(names))
        array.attrs["export"] = self.id
        return array
