"""`/exports`: submit, list, inspect, cancel exports; fetch results and their STAC Items.

An export belongs to the caller that submitted it (its token; anonymous callers share theirs): other
callers do not see it (404, as for an unknown id), so only its owner gets the presigned S3 URL.
Submitting needs a token created with `--exports` (or, with `JEO_ANONYMOUS_EXPORTS`, no token) and a
collection the caller may see.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse

from mosaics.errors import NotFound
from tiler.access import caller, catalog_view
from tiler.exports.destinations import delivered_by, presign
from tiler.exports.items import stac_item
from tiler.exports.plan import DestinationConflict, ExportRecord
from tiler.exports.request import ExportRequest
from tiler.exports.service import ExportService

router = APIRouter(prefix="/exports", tags=["Exports"])
ExportId = Annotated[str, Path(description="Export id (from POST /exports).")]


def _service(request: Request) -> ExportService:
    service: ExportService = request.app.state.exports
    service.start()
    return service


def _owned(request: Request, export_id: str) -> ExportService:
    """The service, once the export is known to belong to the caller (NotFound otherwise)."""
    service = _service(request)
    if service.store.require(export_id).created_by != caller(request).principal:
        raise NotFound("export", export_id)
    return service


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def record_json(request: Request, record: ExportRecord, chunks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An export as the API shows it: destination and result as S3 URLs or paths under the export root."""
    base = f"{_base(request)}/exports/{record.id}"
    plan = record.plan
    links = [
        {"rel": "self", "href": base, "type": "application/json"},
        {"rel": "collection", "href": f"{_base(request)}/collections/{record.collection}", "type": "application/json"},
    ]
    if record.status == "finished":
        links += [
            {"rel": "result", "href": f"{base}/result", "type": plan.media_type},
            {"rel": "item", "href": f"{base}/item", "type": "application/geo+json"},
        ]
    return {
        **record.summary(),
        "destination": result_location(request, plan.result_href),
        "result": result_location(request, record.result),
        "request": record.request,
        **({"chunks": chunks} if chunks is not None else {}),
        "links": links,
    }


def result_location(request: Request, result: str | None) -> str | None:
    """Where the result is stored, without server paths: the S3 URL, or the path under the export root."""
    if result is None or result.startswith("s3://"):
        return result
    path, root = FilePath(result), FilePath(request.app.state.settings.export_root_path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


@router.post("", status_code=202, summary="Submit an export.")
def create_export(request: Request, body: ExportRequest):
    """Validate and submit an export; answers 202 with its id, status, links and an estimate, or 409 when the
    destination exists (without `overwrite`) or another active export writes it."""
    who = caller(request)
    if who.principal is None and not request.app.state.settings.anonymous_exports:
        return JSONResponse({"detail": "access_token: exports need a token created with --exports"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    if who.principal is not None and not who.exports:
        return JSONResponse({"detail": f"access_token: token '{who.name}' may not submit exports "
                             "(create one with --exports)"}, status_code=403)  # fmt: skip
    catalog_view(request).collection(body.collection)
    try:
        record = _service(request).submit(body, created_by=who.principal)
    except DestinationConflict as error:
        return JSONResponse({"detail": str(error)}, status_code=409)
    content = record_json(request, record)
    return JSONResponse(content, status_code=202, headers={"Location": content["links"][0]["href"]})


@router.get("", summary="List exports, newest first.")
def list_exports(
    request: Request,
    status: Annotated[str | None, Query(description="Only exports in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
):
    records = _service(request).list(status, limit, created_by=caller(request).principal)
    return {"exports": [record_json(request, r) for r in records], "numberReturned": len(records)}


@router.get("/{export_id}", summary="One export: status, progress, times, jobs, errors.")
def get_export(request: Request, export_id: ExportId):
    """With per-chunk status, job id (SLURM job or local pid) and seconds."""
    service = _owned(request, export_id)
    record = service.get(export_id)
    chunks = [
        {k: row[k] for k in ("chunk", "status", "job", "started", "finished", "seconds")}
        for row in service.store.chunk_rows(export_id) if row["chunk"] >= 0
    ]
    return record_json(request, record, chunks)


@router.delete("/{export_id}", summary="Cancel an export, or withdraw the layer of a finished one (idempotent).")
def cancel_export(request: Request, export_id: ExportId):
    """An active export is canceled; a finished one leaves the collection `exports` (its result stays here)."""
    return record_json(request, _owned(request, export_id).cancel(export_id))


def _finished(request: Request, export_id: str) -> ExportRecord | JSONResponse:
    record = _owned(request, export_id).get(export_id)
    if record.status != "finished":
        detail = f"export '{export_id}' is {record.status}" + (f": {record.error}" if record.error else "")
        return JSONResponse({"detail": detail}, status_code=409)
    return record


@router.get("/{export_id}/result", summary="The result file (or a redirect to a presigned S3 URL).")
def export_result(request: Request, export_id: ExportId):
    """410 when the result is gone, or was replaced by a later export with `overwrite`."""
    record = _finished(request, export_id)
    if isinstance(record, JSONResponse):
        return record
    plan = record.plan
    try:
        delivered = delivered_by(plan.destination)
    except Exception:  # noqa: BLE001 - S3 unreachable right now: the redirect tells the client
        delivered = record.id
    if delivered is None:
        return JSONResponse({"detail": f"export '{export_id}': the result is gone"}, status_code=410)
    if delivered != record.id:
        replaced = f"export '{delivered}'" if delivered else "another file"
        return JSONResponse({"detail": f"export '{export_id}': the result was replaced by {replaced}"}, status_code=410)
    if plan.destination["kind"] == "s3":
        url = presign(plan.destination, request.app.state.settings.export_s3_presign_seconds)
        return RedirectResponse(url, status_code=307)
    path = FilePath(plan.destination["path"])
    return FileResponse(path, media_type=plan.media_type, filename=path.name)


@router.get("/{export_id}/item", summary="A STAC Item describing the result.")
def export_item(request: Request, export_id: ExportId):
    record = _finished(request, export_id)
    if isinstance(record, JSONResponse):
        return record
    base = _base(request)
    item = stac_item(record, base, f"{base}/exports/{record.id}/result", result_location(request, record.result))
    return JSONResponse(item, media_type="application/geo+json")
