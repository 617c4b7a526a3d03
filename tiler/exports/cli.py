"""`jeo export`, `jeo export-status`, `jeo export-cancel` and the worker commands (registered by tiler.cli).

`jeo export` validates and submits exactly what `POST /exports` does, without a server: a `local`
export runs in a worker pool hosted by the command itself while it waits (or, with `--no-wait`, by a
detached `jeo export-run` process); a `slurm` export runs on the cluster either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from tiler.settings import get_settings


def _service(adopt_orphans: bool = False):
    from tiler.exports.service import ExportService

    settings = get_settings()
    settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    return ExportService(settings, adopt_orphans=adopt_orphans)


def _wait(service, export_id: str, progress: bool) -> object:
    """Poll until the export ends, with a progress bar on stderr."""
    record = service.get(export_id)
    shown = 0
    bar = click.progressbar(length=record.chunks_total + 1, label=f"export {export_id}", file=sys.stderr,
                            show_eta=True, show_percent=True) if progress else None
    try:
        if bar:
            bar.__enter__()
        while record.active:
            time.sleep(0.5)
            record = service.get(export_id)
            done = record.chunks_done + (1 if record.status == "finished" else 0)
            if bar and done > shown:
                bar.update(done - shown)
                shown = done
        if bar and record.status == "finished":
            bar.update(record.chunks_total + 1 - shown)
    finally:
        if bar:
            bar.__exit__(None, None, None)
    return record


def _geometry(text: str | None):
    if text is None:
        return None
    path = Path(text)
    try:
        data = json.loads(path.read_text() if path.exists() else text)
    except (OSError, ValueError) as error:
        raise click.BadParameter(f"not a GeoJSON file or text: {error}", param_hint="--geometry") from None
    return data


def _registered(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--method` or `--correction` checked against its registry (imported only when given: it loads kernels)."""
    if value is None:
        return value
    if param.name == "method":
        from mosaics.methods import METHODS as names
    else:
        from mosaics.corrections import CORRECTIONS as names
    if value not in names:
        raise click.BadParameter(f"'{value}' is not one of {', '.join(names)}", param=param)
    return value


@click.command("export")
@click.argument("collection")
@click.option("--preset", help="A preset of the collection (recipe, method, cloud mask, period).")
@click.option("--assets", help="Band combination, comma-separated (e.g. red,green,blue).")
@click.option("--asset-bidx", multiple=True, help="Bands of a multi-band asset in --assets: asset|index,… (e.g. visual|1,2,3).")
@click.option("--expression", help="Band math; ';' separates output bands.")
@click.option("--index", "index_", help="Named spectral index (ndvi, ...).")
@click.option("--datetime", "datetime_", help="RFC 3339 instant or interval start/end.")
@click.option("--method", callback=_registered,
              help="Compositing method (default median): a `method` of the composite endpoints (first, median, …).")
@click.option("--p", type=float, help="Percentile for --method percentile.")
@click.option("--cloud-mask", help="A `cloud_mask` of the composite endpoints (default: the collection's).")
@click.option("--mask-dilation", type=int, help="Grow masked areas by this many pixels.")
@click.option("--correction", callback=_registered,
              help="Per-scene correction before compositing (default none): a `correction` of the endpoints.")
@click.option("--max-cloud", type=float, help="Only scenes with eo:cloud_cover at most this.")
@click.option("--max-items", type=int, help="At most this many scenes per chunk.")
@click.option("--sortby", help="Scene order (default -datetime).")
@click.option("--bbox", help="Area: minx,miny,maxx,maxy (in --bbox-crs).")
@click.option("--bbox-crs", help="CRS of --bbox (default EPSG:4326).")
@click.option("--geometry", help="Area: a GeoJSON geometry (file or inline), EPSG:4326.")
@click.option("--crs", help="Output CRS (default: the collection's native CRS).")
@click.option("--resolution", type=float, help="Output pixel size in CRS units (default: native).")
@click.option("--format", "format_", type=click.Choice(["cog", "gtiff"]), help="Output format (default cog).")
@click.option("--destination", help="File name under the export root, or s3://bucket/prefix.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace a result that exists at the destination.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]),
              help="An unreadable scene is skipped and named (skip), or fails the export (default from settings).")
@click.option("--executor", type=click.Choice(["local", "slurm"]), help="Where to run (default from settings).")
@click.option("--chunk-size", type=int, help="Chunk size in pixels (multiple of 256).")
@click.option("--request", "request_file", type=click.Path(exists=True, dir_okay=False),
              help="A JSON request (the POST /exports body); options override its fields.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait with a progress bar, or print the id at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the final record as JSON.")
def export(collection, preset, assets, asset_bidx, expression, index_, datetime_, method, p, cloud_mask, mask_dilation, correction, max_cloud,
           max_items, sortby, bbox, bbox_crs, geometry, crs, resolution, format_, destination, overwrite, on_error, executor,
           chunk_size, request_file, wait, as_json):
    """Export a composite of COLLECTION over an area as a COG (same request as POST /exports)."""
    from mosaics.errors import JeoError

    body = json.loads(Path(request_file).read_text()) if request_file else {}
    given = {
        "collection": collection, "preset": preset, "assets": assets, "asset_bidx": list(asset_bidx) or None,
        "expression": expression, "index": index_,
        "datetime": datetime_, "method": method, "p": p, "cloud_mask": cloud_mask, "mask_dilation": mask_dilation,
        "correction": correction,
        "max_cloud": max_cloud, "max_items": max_items, "sortby": sortby, "bbox_crs": bbox_crs,
        "geometry": _geometry(geometry), "crs": crs, "resolution": resolution, "format": format_,
        "destination": destination, "overwrite": overwrite, "on_error": on_error, "executor": executor,
        "chunk_size": chunk_size,
    }  # fmt: skip
    if bbox is not None:
        try:
            given["bbox"] = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise click.ClickException(f"bbox: '{bbox}' is not comma-separated numbers") from None
    body.update({k: v for k, v in given.items() if v is not None})
    service = _service()
    try:
        record = service.submit(body, run_local=wait)
    except JeoError as error:
        raise click.ClickException(str(error)) from None
    estimate = record.plan.estimate
    click.echo(
        f"export {record.id}: {estimate['width']}×{estimate['height']} px, {estimate['chunks']} chunk(s), "
        f"{estimate['items']} item(s), ~{estimate['bytes'] / 2**20:,.0f} MiB uncompressed, executor {record.executor}",
        err=True,
    )
    if not wait:
        if record.executor == "local":
            log = Path(record.plan.work_dir) / "logs" / "runner.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                subprocess.Popen(
                    [sys.executable, "-m", "tiler.cli", "export-run", "--export", record.id],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        click.echo(record.id)
        return
    try:
        record = _wait(service, record.id, progress=not as_json)
    except KeyboardInterrupt:
        if record.executor == "local":
            service.cancel(record.id)
            click.echo(f"export {record.id} canceled", err=True)
        else:
            click.echo(f"export {record.id} keeps running on SLURM: jeo export-status {record.id}", err=True)
        service.local.stop()
        sys.exit(130)
    service.local.stop()
    _report(record, as_json)


def _report(record, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record.summary(), indent=1))
    elif record.status == "finished":
        click.echo(record.result)
    if record.status != "finished":
        if not as_json:
            click.echo(f"export {record.id} {record.status}: {record.error or ''}", err=True)
            if record.log_tail:
                click.echo(record.log_tail, err=True)
        sys.exit(1)


@click.command("export-status")
@click.argument("export_id", required=False)
@click.option("--status", help="Without EXPORT_ID: only exports in this status.")
@click.option("--wait", is_flag=True, help="Wait until the export ends (progress bar).")
def export_status(export_id, status, wait):
    """Show an export as JSON (or list exports without EXPORT_ID)."""
    from mosaics.errors import JeoError

    service = _service()
    try:
        if export_id is None:
            for record in service.list(status):
                done = record.chunks_total if record.status == "finished" else record.chunks_done
                click.echo(f"{record.id}\t{record.status}\t{record.executor}\t{done}/{record.chunks_total}\t"
                           f"{record.collection}\t{record.result or record.plan.result_href}")
            return
        record = _wait(service, export_id, progress=True) if wait else service.get(export_id)
    except JeoError as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(record.summary(), indent=1))


@click.command("export-cancel")
@click.argument("export_id")
def export_cancel(export_id):
    """Cancel an export (scancel on SLURM; idempotent)."""
    from mosaics.errors import JeoError

    try:
        record = _service().cancel(export_id)
    except JeoError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{record.id}\t{record.status}")


@click.command("export-run", hidden=True)
@click.option("--export", "export_id", required=True)
def export_run(export_id):
    """Host the local worker pool of one export until it ends (used by `jeo export --no-wait`)."""
    service = _service()
    if not service.run_owned(export_id):
        raise click.ClickException(f"export {export_id} is not a local export waiting for a runner")
    record = _wait(service, export_id, progress=False)
    service.local.stop()
    click.echo(f"export {export_id} {record.status}")


@click.command("export-worker")
@click.option("--export", "export_id", required=True, help="Export id.")
@click.option("--chunk", type=int, default=None, help="Chunk index (default: $SLURM_ARRAY_TASK_ID).")
@click.option("--all", "claiming", is_flag=True, help="Take chunks until none is left, then merge if last.")
@click.option("--lease", type=int, help="With --all: the run lease token of the process that started this worker.")
def export_worker(export_id, chunk, claiming, lease):
    """Compute chunks of an export (run by the executors)."""
    from tiler.exports import jobs

    if claiming:
        if lease is None:
            raise click.UsageError("--all needs --lease")
        sys.exit(jobs.pool_worker(get_settings(), export_id, lease))
    if chunk is None:
        if "SLURM_ARRAY_TASK_ID" not in os.environ:
            raise click.UsageError("--chunk or --all is required outside a SLURM array job")
        chunk = int(os.environ["SLURM_ARRAY_TASK_ID"])
    sys.exit(jobs.chunk_job(get_settings(), export_id, chunk))


@click.command("export-merge")
@click.option("--export", "export_id", required=True, help="Export id.")
def export_merge(export_id):
    """Merge an export's chunks into the result and deliver it (run by the executors)."""
    from tiler.exports import jobs

    sys.exit(jobs.merge_job(get_settings(), export_id))


COMMANDS = (export, export_status, export_cancel, export_run, export_worker, export_merge)


def register(group: click.Group) -> None:
    """Add the export commands to the `jeo` group."""
    for command in COMMANDS:
        group.add_command(command)
