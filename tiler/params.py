"""Query parameters: parsing of STAC API values (bbox, datetime) into typed values, and the rule that a
parameter taking one value is given once. Errors name the parameter."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import Request
from fastapi._compat import field_annotation_is_sequence
from fastapi.routing import APIRoute
from rasterio.crs import CRS
from rasterio.errors import CRSError

from mosaics.errors import InvalidParameter

Interval = tuple[datetime | None, datetime | None]


def parse_bbox(text: str, parameter: str = "bbox") -> tuple[float, float, float, float]:
    """`minx,miny,maxx,maxy` → floats, with min < max."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InvalidParameter(parameter, f"'{text}' is not four comma-separated numbers") from None
    if len(values) != 4:
        raise InvalidParameter(parameter, f"'{text}' must have 4 numbers, not {len(values)}")
    if not (values[0] < values[2] and values[1] < values[3]):
        raise InvalidParameter(parameter, f"'{text}': min must be below max")
    return values  # type: ignore[return-value]


def _instant(text: str, parameter: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidParameter(parameter, f"'{text}' is not an RFC 3339 date or date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def parse_datetime(text: str, parameter: str = "datetime") -> Interval:
    """A STAC API datetime: one instant, or `start/end` with `..` (or empty) for an open end.

    A bare date covers its whole day.
    """
    parts = text.split("/")
    if len(parts) > 2 or not text.strip():
        raise InvalidParameter(parameter, f"'{text}' is not a date-time or an interval start/end")
    if len(parts) == 1:
        start = _instant(parts[0], parameter)
        end = start.replace(hour=23, minute=59, second=59, microsecond=999999) if len(parts[0]) == 10 else start
        return start, end
    start = None if parts[0] in ("", "..") else _instant(parts[0], parameter)
    end = None if parts[1] in ("", "..") else _instant(parts[1], parameter)
    if end is not None and len(parts[1]) == 10:
        end = end.replace(hour=23, minute=59, second=59, microsecond=999999)
    if start is None and end is None:
        raise InvalidParameter(parameter, "an interval needs at least one end")
    if start and end and start > end:
        raise InvalidParameter(parameter, f"'{text}': start is after end")
    return start, end


def parse_crs(text: str, parameter: str) -> CRS:
    """A CRS from an EPSG code, URI, WKT or PROJ string."""
    try:
        return CRS.from_user_input(text)
    except CRSError:
        raise InvalidParameter(parameter, f"'{text}' is not a known CRS") from None


_SINGLE_VALUED: dict[int, frozenset[str]] = {}


def _single_valued(route: APIRoute) -> frozenset[str]:
    """Names of the route's query parameters that take one value (FastAPI would keep the last of repeats)."""
    if (names := _SINGLE_VALUED.get(id(route))) is None:
        found, pending = set(), [route.dependant]
        while pending:
            dependant = pending.pop()
            found.update(f.alias for f in dependant.query_params if not field_annotation_is_sequence(f.field_info.annotation))
            pending.extend(dependant.dependencies)
        names = _SINGLE_VALUED[id(route)] = frozenset(found)
    return names


def refuse_repeated_parameters(request: Request) -> None:
    """Every route's first dependency: 400 naming a one-value query parameter that is given more than once."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    single, seen = _single_valued(route), set()
    for name, _ in request.query_params.multi_items():
        if name in single and name in seen:
            raise InvalidParameter(name, "is given more than once; it takes one value")
        seen.add(name)
