"""Bearer-token auth for protected routes, by scope.

Today one token (SERVING_API_TOKEN) grants every scope; the scope is already part of each route's declaration,
so tokens limited to some scopes need only another entry in `tokens`. No token configured = an open deployment.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

from flask import request

from serving.errors import ApiError

ALL_SCOPES = "*"


class Authorizer:
    def __init__(self, tokens: Mapping[str, frozenset[str]]) -> None:
        self.tokens = {token.encode(): scopes for token, scopes in tokens.items()}

    @classmethod
    def from_token(cls, token: str | None) -> Authorizer:
        return cls({token: frozenset({ALL_SCOPES})} if token else {})

    def guard(self, scope: str) -> Callable[..., None] | None:
        """The check for one route's scope (None when no token is configured: nothing to check)."""
        if not self.tokens:
            return None
        holders = [t for t, scopes in self.tokens.items() if ALL_SCOPES in scopes or scope in scopes]

        def check(**_: Any) -> None:
            header = request.headers.get("Authorization", "")
            scheme, _sep, given = header.partition(" ")
            raw = given.strip().encode()
            # compare_digest against every token that holds the scope: no early exit on the first match
            ok = scheme.lower() == "bearer" and sum(hmac.compare_digest(raw, t) for t in holders) > 0
            if not ok:
                raise ApiError(401, "unauthorized",
                               "missing or wrong bearer token: send 'Authorization: Bearer <SERVING_API_TOKEN>'",
                               headers={"WWW-Authenticate": 'Bearer realm="serving"'})
        return check


def current_client() -> str:
    """The caller's identity (the name of its token), which owns its async jobs. Until named tokens land, one
    shared token means one client: every caller is "anonymous"."""
    return "anonymous"
