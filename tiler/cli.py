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
    if not settings.catalog_url:
        settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    return Catalog(settings.catalog_location)


@click.group()
def main():
    """jeo-tiler: dynamic tiles and composites of Earth-observation data."""


@main.command()
@click.argument("path")
@click.option("--access", type=click.Choice(["public", "restricted"]), default=None,
              help="Access level of the collections read (default: new ones public, known ones unchanged).")
def ingest(path: str, access: str | None):
    """Ingest a static STAC catalog, collection or item (local path or s3:// URL).

    Its files must be inside its own folder (or S3 prefix) or JEO_INGEST_ALLOWED_ROOTS.
    """
    from mosaics.errors import CatalogError

    try:
        report = _catalog().ingest(path, get_settings().allowed_roots, access=access)
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
        click.echo(
            f"{collection.id}\t{len(catalog.search(collection.id))} items\t{collection.access}\t{collection.title or ''}"
        )


@main.group()
def access():
    """Make collections public (default) or restricted (visible only with a token that has a grant)."""


@access.command("restrict")
@click.argument("collection_id")
def access_restrict(collection_id: str):
    """Restrict a collection: callers without a grant get 404 for it, as for an unknown id."""
    _set_access(collection_id, "restricted")


@access.command("public")
@click.argument("collection_id")
def access_public(collection_id: str):
    """Make a collection visible to every caller."""
    _set_access(collection_id, "public")


def _set_access(collection_id: str, level: str) -> None:
    from mosaics.errors import NotFound

    try:
        _catalog().set_access(collection_id, level)
    except NotFound as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{collection_id}: {level}")


@main.group()
def token():
    """Access tokens (sent as `Authorization: Bearer …` or `?access_token=…`), stored hashed."""


def _tokens():
    from tiler.tokens import TokenStore

    _catalog()  # creates the catalog tables on a new database
    return TokenStore(get_settings().catalog_location)


@token.command("create")
@click.option("--name", required=True, help="Name of the token (for list and revoke).")
@click.option("--collections", default="", help="Comma-separated restricted collections it may read.")
@click.option("--all", "all_collections", is_flag=True, help="It may read every collection, present and future.")
@click.option("--exports", is_flag=True, help="It may submit exports (which then belong to it).")
@click.option("--expires", default=None, help="Lifetime (30d, 12h, 90m, 2w) or an ISO 8601 date; default never.")
def token_create(name: str, collections: str, all_collections: bool, exports: bool, expires: str | None):
    """Create a token; the token itself is the last line of the output (it is not stored, keep it)."""
    from mosaics.errors import InvalidParameter, NotFound
    from tiler.tokens import parse_expiry

    granted = [c.strip() for c in collections.split(",") if c.strip()]
    try:
        secret = _tokens().create(
            name, granted, all_collections=all_collections, exports=exports,
            expires=parse_expiry(expires) if expires else None,
        )  # fmt: skip
    except (InvalidParameter, NotFound) as error:
        raise click.ClickException(str(error)) from None
    scope = "all collections" if all_collections else ", ".join(granted) or "public collections only"
    click.echo(f"token '{name}': {scope}{'; exports' if exports else ''}; expires {expires or 'never'}")
    click.echo(secret)


@token.command("list")
def token_list():
    """Tokens with their grants, expiry and status (never the tokens themselves)."""
    for info in _tokens().list():
        scope = "*" if info.all_collections else ",".join(info.collections) or "-"
        expires = info.expires.isoformat() if info.expires else "never"
        click.echo(f"{info.name}\t{info.status}\t{scope}\t{'exports' if info.exports else '-'}\texpires {expires}")


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str):
    """Revoke a token: from the next request on it is answered 401."""
    from mosaics.errors import NotFound

    try:
        _tokens().revoke(name)
    except NotFound as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"token '{name}' revoked")


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
    report = _catalog().ingest(source, get_settings().allowed_roots)
    click.echo(f"ingested {source}: {', '.join(report.collections)}")
    click.echo(f"viewer: http://{host}:{port}/viewer   WMTS: http://{host}:{port}/wmts?SERVICE=WMTS&REQUEST=GetCapabilities")
    serve_app(host, port, 1)
from tiler.exports.cli import register as _register_exports  # noqa: E402 - export, export-status, workers

_register_exports(main)

if __name__ == "__main__":
    main()
