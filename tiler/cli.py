"""The `jeo` command line."""

from __future__ import annotations

from pathlib import Path

import click

from tiler.serve import serve as serve_app
from tiler.settings import REPO_ROOT, get_settings

SAMPLE_CATALOG = Path(__file__).with_name("sample") / "catalog.json"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "catalog.json"


def _catalog():
    from mosaics.catalog import Catalog

    settings = get_settings()
    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    return Catalog(settings.database_path)


@click.group()
def main():
    """jeo-tiler: dynamic tiles and composites of Earth-observation data."""


@main.command()
@click.argument("path")
def ingest(path: str):
    """Ingest a static STAC catalog, collection or item (local path or s3:// URL)."""
    from mosaics.errors import CatalogError

    try:
        report = _catalog().ingest(path)
    except CatalogError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"collections: {', '.join(report.collections)}; items added {report.items_added}, "
        f"updated {report.items_updated}, unchanged {report.items_unchanged}"
    )


@main.command()
def collections():
    """List the registered collections and their item counts."""
    catalog = _catalog()
    for collection in catalog.collections():
        click.echo(f"{collection.id}\t{len(catalog.search(collection.id))} items\t{collection.title or ''}")


@main.command()
@click.option("--host", default=lambda: get_settings().host, show_default="127.0.0.1", help="Bind address.")
@click.option("--port", default=lambda: get_settings().port, type=int, show_default="8000", help="Port.")
@click.option("--workers", default=lambda: get_settings().workers, type=int, show_default="1", help="Processes.")
def serve(host: str, port: int, workers: int):
    """Serve the tile API (loopback by default; behind a proxy see JEO_ROOT_PATH, JEO_FORWARDED_ALLOW_IPS)."""
    settings = get_settings()
    serve_app(host, port, workers, settings.root_path, settings.forwarded_allow_ips)


@main.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=True), default=None,
              help="STAC catalog to serve; default ../shared/data if present, else the bundled sample.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, type=int, show_default=True)
def demo(data: str | None, host: str, port: int):
    """Ingest the demo data and serve it, printing the viewer URL."""
    source = data or str(SHARED_DATA if SHARED_DATA.exists() else SAMPLE_CATALOG)
    report = _catalog().ingest(source)
    click.echo(f"ingested {source}: {', '.join(report.collections)}")
    click.echo(f"viewer: http://{host}:{port}/viewer   WMTS: http://{host}:{port}/wmts?SERVICE=WMTS&REQUEST=GetCapabilities")
    serve_app(host, port, 1)
from tiler.exports.cli import register as _register_exports  # noqa: E402 - export, export-status, workers

_register_exports(main)

if __name__ == "__main__":
    main()
