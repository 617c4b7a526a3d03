"""Callers from a site's identity provider (Keycloak, …): JWTs verified with PyJWT.

On when `JEO_JWT_ISSUER` and `JEO_JWT_JWKS_URL` or `JEO_JWT_PUBLIC_KEY` are set. A bearer token that is
not a `jeo_…` token is then verified as a JWT: signature (keys from the JWKS, cached), `exp`, `iss` and,
with `JEO_JWT_AUDIENCE`, `aud`. Grants come from the claim `JEO_JWT_COLLECTIONS_CLAIM` (a list or a
space- or comma-separated string; `*` = every collection), the right to submit exports from the claim
`JEO_JWT_EXPORTS_CLAIM` being true. The caller's principal, which owns its exports, is `jwt:<iss>#<sub>`:
the same for every token of that subject.
"""

from __future__ import annotations

import jwt

from tiler.settings import Settings
from tiler.tokens import Caller, InvalidToken


class JWTVerifier:
    """Turns a JWT of the configured issuer into a Caller (InvalidToken when it does not verify)."""

    def __init__(self, settings: Settings):
        self.issuer, self.audience = settings.jwt_issuer, settings.jwt_audience
        self.algorithms = [a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()]
        self.collections_claim, self.exports_claim = settings.jwt_collections_claim, settings.jwt_exports_claim
        self.jwks = jwt.PyJWKClient(settings.jwt_jwks_url, lifespan=300) if settings.jwt_jwks_url else None
        self.key = settings.jwt_public_key

    def resolve(self, token: str) -> Caller:
        """The caller of a verified JWT."""
        try:
            key = self.jwks.get_signing_key_from_jwt(token).key if self.jwks else self.key
            claims = jwt.decode(
                token, key, algorithms=self.algorithms, issuer=self.issuer, audience=self.audience,
                options={"require": ["exp", "iss", "sub"], "verify_aud": self.audience is not None},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise InvalidToken("access_token: the JWT has expired") from None
        except jwt.PyJWTError as error:
            raise InvalidToken(f"access_token: JWT rejected: {error}") from None
        granted = claims.get(self.collections_claim) or []
        if isinstance(granted, str):
            granted = granted.replace(",", " ").split()
        return Caller(
            principal=f"jwt:{claims['iss']}#{claims['sub']}", name=claims.get("preferred_username") or claims["sub"],
            collections=frozenset(str(g) for g in granted if g != "*"), all_collections="*" in granted,
            exports=claims.get(self.exports_claim) is True, token=token,
        )  # fmt: skip
