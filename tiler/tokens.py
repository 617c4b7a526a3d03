"""Access tokens: created, listed and revoked with `jeo token`, kept in the catalog database (the SQLite file or
the PostgreSQL database of `JEO_CATALOG_URL`, `tiler.db`).

A token is `jeo_` + 43 random URL-safe characters; only its SHA-256 is stored. It grants read access to
some restricted collections (or all of them) and, with `exports`, the right to submit exports. Revoked
tokens keep their row (so that their holder is told "revoked", not "unknown"); a name can be reused once
its token is revoked.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mosaics.errors import InvalidParameter, JeoError, NotFound
from tiler.db import open_database

PREFIX = "jeo_"
SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL,
    hash            TEXT NOT NULL UNIQUE,       -- sha256 hex of the token; the token itself is never stored
    all_collections INTEGER NOT NULL DEFAULT 0, -- grant on every restricted collection, present and future
    exports         INTEGER NOT NULL DEFAULT 0, -- may submit exports
    created         TEXT NOT NULL,              -- UTC, ISO 8601
    expires         TEXT,                       -- UTC, ISO 8601; NULL = never
    revoked         TEXT                        -- UTC, ISO 8601; NULL = valid
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_active_name ON tokens (name) WHERE revoked IS NULL;

CREATE TABLE IF NOT EXISTS grants (              -- read access of a token to a restricted collection
    token      INTEGER NOT NULL REFERENCES tokens (id),
    collection TEXT NOT NULL,
    PRIMARY KEY (token, collection)
);
"""
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class InvalidToken(JeoError):
    """A presented token is unknown, revoked or expired. HTTP 401."""


@dataclass(frozen=True)
class Caller:
    """Who sends a request: anonymous, or the holder of a token with its grants."""

    principal: str | None = None  # owner of the exports it submits: "token:<id>"; None = anonymous
    name: str | None = None
    collections: frozenset[str] = frozenset()
    all_collections: bool = False
    exports: bool = False  # may submit exports
    token: str | None = None  # as presented, handed back in tile URLs; never stored

    def may_read(self, collection_id: str) -> bool:
        """True if the caller holds a grant on `collection_id` (restricted collections need one)."""
        return self.all_collections or collection_id in self.collections


ANONYMOUS = Caller()


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, as `jeo token list` shows it (never the token itself)."""

    name: str
    collections: tuple[str, ...]
    all_collections: bool
    exports: bool
    created: datetime
    expires: datetime | None
    revoked: datetime | None

    @property
    def status(self) -> str:
        """`active`, `expired` or `revoked`."""
        if self.revoked is not None:
            return "revoked"
        return "expired" if self.expires is not None and self.expires <= _now() else "active"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _text(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def digest(token: str) -> str:
    """What is stored of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `90m`, `3600s`, `2w` from now, or an ISO 8601 date/time (UTC if naive)."""
    now = now or _now()
    if match := _DURATION.match(text.strip()):
        return now + timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidParameter("expires", f"'{text}' is neither a duration (30d, 12h, 90m) nor an ISO 8601 date") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if moment <= now:
        raise InvalidParameter("expires", f"{_text(moment)} is in the past")
    return moment


class TokenStore:
    """Tokens and grants in the records database at `location` (`tiler.db`); safe to share between threads."""

    def __init__(self, location: str | Path):
        self._db = open_database(location, SCHEMA)

    def close(self) -> None:
        self._db.close()

    def create(
        self,
        name: str,
        collections: Sequence[str] = (),
        *,
        all_collections: bool = False,
        exports: bool = False,
        expires: datetime | None = None,
    ) -> str:
        """A new token (returned once, stored hashed); NotFound for an unknown collection."""
        if not name.strip():
            raise InvalidParameter("name", "must not be empty")
        if all_collections and collections:
            raise InvalidParameter("collections", "give collections or all, not both")
        token = PREFIX + secrets.token_urlsafe(32)
        with self._db.transaction() as db:
            for collection_id in collections:
                if db.execute("SELECT 1 FROM collections WHERE id = ?", (collection_id,)).fetchone() is None:
                    raise NotFound("collection", collection_id)
            if db.execute("SELECT 1 FROM tokens WHERE name = ? AND revoked IS NULL", (name,)).fetchone():
                raise InvalidParameter("name", f"a token called '{name}' exists (revoke it first)")
            (token_id,) = db.execute(
                "INSERT INTO tokens (name, hash, all_collections, exports, created, expires) VALUES (?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (name, digest(token), int(all_collections), int(exports), _text(_now()), _text(expires)),
            ).fetchone()
            for collection_id in dict.fromkeys(collections):
                db.execute("INSERT INTO grants (token, collection) VALUES (?, ?)", (token_id, collection_id))
        return token

    def list(self) -> list[TokenInfo]:
        """Every token, revoked ones included, by name and creation."""
        rows = self._db.execute("SELECT * FROM tokens ORDER BY name, created, id").fetchall()
        grants = self._grants([row["id"] for row in rows])
        return [
            TokenInfo(
                name=row["name"], collections=tuple(sorted(grants.get(row["id"], ()))),
                all_collections=bool(row["all_collections"]), exports=bool(row["exports"]),
                created=_moment(row["created"]), expires=_moment(row["expires"]), revoked=_moment(row["revoked"]),
            )  # fmt: skip
            for row in rows
        ]

    def revoke(self, name: str) -> None:
        """Revoke the valid token called `name` (NotFound if there is none); effective on the next request."""
        cursor = self._db.execute("UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL", (_text(_now()), name))
        if cursor.rowcount == 0:
            raise NotFound("token", name)

    def resolve(self, token: str) -> Caller:
        """The caller holding `token`; InvalidToken if it is unknown, revoked or expired."""
        row = self._db.execute("SELECT * FROM tokens WHERE hash = ?", (digest(token),)).fetchone()
        grants = self._grants([row["id"]]) if row is not None else {}
        if row is None:
            raise InvalidToken("access_token: unknown token")
        if row["revoked"] is not None:
            raise InvalidToken(f"access_token: token '{row['name']}' was revoked at {row['revoked']}")
        if (expires := _moment(row["expires"])) is not None and expires <= _now():
            raise InvalidToken(f"access_token: token '{row['name']}' expired at {row['expires']}")
        return Caller(
            principal=f"token:{row['id']}", name=row["name"], collections=frozenset(grants.get(row["id"], ())),
            all_collections=bool(row["all_collections"]), exports=bool(row["exports"]), token=token,
        )  # fmt: skip

    def _grants(self, token_ids: list[int]) -> dict[int, set[str]]:
        found: dict[int, set[str]] = {}
        if token_ids:
            for token_id, collection_id in self._db.execute(
                f"SELECT token, collection FROM grants WHERE token IN ({', '.join('?' * len(token_ids))})", token_ids
            ):
                found.setdefault(token_id, set()).add(collection_id)
        return found
