"""Who may see what: the caller of each request and the catalog as that caller sees it.

`AccessMiddleware` (outermost but CORS) resolves the caller once per request from `Authorization: Bearer …`
or `?access_token=…` (titiler's name, for clients that cannot set headers) — a `jeo_…` token of
`tiler.tokens` or, with `JEO_JWT_ISSUER`, a JWT of the site's identity provider (`tiler.identity`) —
and takes the parameter out of the query string, so that it reaches neither endpoints, cache keys nor
access logs. A token that is unknown, revoked, expired or does not verify is answered 401, whatever
the route. Everything downstream reads the
catalog through `catalog_view(request)`: restricted collections without a grant do not exist there
(NotFound, the same 404 as an unknown id, so ids cannot be probed), and in collections of access `owner`
(export results) items of another owner do not exist either. Responses that showed the caller a restricted
collection or an `owner` collection's items get `Cache-Control: private`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mosaics.catalog import EVERYONE, Catalog
from mosaics.errors import NotFound
from mosaics.models import Collection, Item
from tiler.settings import Settings
from tiler.tokens import ANONYMOUS, PREFIX, Caller, InvalidToken

TOKEN_PARAMETER = "access_token"


class CatalogView:
    """The catalog as one caller sees it: restricted collections it holds no grant for do not exist, nor do the
    items of collections of access `owner` that belong to another caller (items without an owner: everyone's).

    `restricted` becomes True once the caller has been shown a restricted or `owner` collection (its document,
    items, tiles or version).
    """

    def __init__(self, catalog: Catalog, caller: Caller):
        self.catalog, self.caller = catalog, caller
        self.restricted = False

    def _visible(self, collection: Collection) -> bool:
        return collection.access != "restricted" or self.caller.may_read(collection.id)

    def _require(self, collection_id: str, access: str) -> None:
        if access != "public":
            if access == "restricted" and not self.caller.may_read(collection_id):
                raise NotFound("collection", collection_id)
            self.restricted = True

    def collections(self) -> list[Collection]:
        """The collections the caller may see, by id."""
        visible = [c for c in self.catalog.collections() if self._visible(c)]
        self.restricted |= any(c.access == "restricted" for c in visible)
        return visible

    def collection(self, collection_id: str) -> Collection:
        """The collection (NotFound when unknown or not visible)."""
        collection = self.catalog.collection(collection_id)
        self._require(collection_id, collection.access)
        return collection

    def _owners(self, collection_id: str) -> str | None:
        """Whose items of the collection the caller sees: EVERYONE's, or (access `owner`) its principal's."""
        access = self.catalog.access(collection_id)
        self._require(collection_id, access)
        return self.caller.principal if access == "owner" else EVERYONE

    def version(self, collection_id: str) -> str:
        """`Catalog.version` of a visible collection; of an `owner` collection, per caller (cache keys of what one
        caller sees never answer another)."""
        owners = self._owners(collection_id)
        version = self.catalog.version(collection_id)
        return version if owners == EVERYONE else f"{version}:{owners or ''}"

    def item(self, collection_id: str, item_id: str) -> Item:
        """`Catalog.item` of a visible collection, if the caller may see the item."""
        owners = self._owners(collection_id)
        item = self.catalog.item(collection_id, item_id)
        if owners != EVERYONE and item.owner not in (None, owners):
            raise NotFound("item", item_id, f"in collection '{collection_id}'")
        return item

    def search(self, collection_id: str, **kwargs: Any) -> list[Item]:
        """`Catalog.search` in a visible collection, among the items the caller may see."""
        return self.catalog.search(collection_id, visible_to=self._owners(collection_id), **kwargs)


def identity_provider(settings: Settings):
    """The JWT verifier of `JEO_JWT_ISSUER` (tiler.identity), or None when no identity provider is set."""
    if not settings.jwt_issuer:
        return None
    if not (settings.jwt_jwks_url or settings.jwt_public_key):
        raise ValueError("JEO_JWT_ISSUER needs JEO_JWT_JWKS_URL or JEO_JWT_PUBLIC_KEY")
    from tiler.identity import JWTVerifier  # PyJWT: the `sso` extra

    return JWTVerifier(settings)


def resolve(state: Any, token: str) -> Caller:
    """The holder of a `jeo_…` token, or of a JWT when an identity provider is configured; InvalidToken otherwise."""
    if state.identity is not None and not token.startswith(PREFIX):
        return state.identity.resolve(token)
    return state.tokens.resolve(token)


def caller(request: Request) -> Caller:
    """The request's caller (anonymous when the middleware did not run)."""
    return request.scope.get("state", {}).get("caller", ANONYMOUS)


def catalog_view(request: Request) -> CatalogView:
    """The catalog as the request's caller sees it (an anonymous view when the middleware did not run)."""
    return request.scope.get("state", {}).get("catalog") or CatalogView(request.app.state.catalog, ANONYMOUS)


def token_query(request: Request) -> list[tuple[str, str]]:
    """`[("access_token", token)]` when the caller presented one, for URLs handed back to it."""
    token = caller(request).token
    return [(TOKEN_PARAMETER, token)] if token else []


def private(cache_control: str | None) -> str:
    """`cache_control` for a response only its caller may reuse (`public`, `s-maxage` dropped)."""
    kept = [d.strip() for d in (cache_control or "").split(",") if d.strip()]
    kept = [d for d in kept if d.lower() not in ("public", "private") and not d.lower().startswith("s-maxage")]
    return ", ".join(["private", *kept])


def _presented(scope: Scope) -> tuple[list[str], bytes]:
    """Tokens presented in the header and the query, and the query string without `access_token`."""
    tokens = []
    scheme, _, credentials = Headers(scope=scope).get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        tokens.append(credentials.strip())
    raw = scope.get("query_string", b"")
    if TOKEN_PARAMETER.encode() not in raw:
        return tokens, raw
    kept = []
    for part in raw.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_plus(name.decode("latin-1")) == TOKEN_PARAMETER:
            tokens.append(unquote_plus(value.decode("latin-1")))
        elif part:
            kept.append(part)
    return tokens, b"&".join(kept)


def unauthorized(scope: Scope, message: str) -> Response:
    """401 with RFC 6750's `WWW-Authenticate`; an OWS ExceptionReport on WMTS paths."""
    from tiler import wmts

    challenge = {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{message}"'}
    if scope["path"].startswith("/wmts"):
        response = wmts.exception_report("NoApplicableCode", TOKEN_PARAMETER, message, 401)
        response.headers.update(challenge)
        return response
    return JSONResponse({"detail": message}, status_code=401, headers=challenge)


class AccessMiddleware:
    """Resolve the caller, give the request its catalog view, keep restricted responses private."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        tokens, scope["query_string"] = _presented(scope)
        try:
            if len(set(tokens)) > 1:
                raise InvalidToken("access_token: two different tokens (header and query); send one")
            found = resolve(state, tokens[0]) if tokens else ANONYMOUS
        except InvalidToken as error:
            await unauthorized(scope, str(error))(scope, receive, send)
            return
        view = CatalogView(state.catalog, found)
        scope.setdefault("state", {}).update(caller=found, catalog=view)

        async def send_private(message: Message) -> None:
            if message["type"] == "http.response.start" and view.restricted:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                given = Headers(raw=message.get("headers", [])).get("cache-control")
                message["headers"] = [*headers, (b"cache-control", private(given).encode())]
            await send(message)

        await self.app(scope, receive, send_private)

