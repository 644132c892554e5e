"""Named bearer tokens with scopes, enforced from the route declarations (serving/routes.py).

A deployment lists its clients, each as `name:sha256-of-token:scope[,scope...]` (only the hash is ever stored):

    SERVING_TOKENS_FILE=/run/secrets/serving_tokens   # one entry per line, '#' comments
    SERVING_TOKENS="batch-app:9f86d0...:predict partner:60303a...:predict,jobs"   # or inline, space separated

Scopes: `predict` (lookups and live predictions in every protocol), `jobs` (submit, read and cancel async jobs),
`metrics` (Prometheus metrics), `*` (all). SERVING_API_TOKEN, the older single token, still works: it is one client
with every scope, named `anonymous` like the caller of an open deployment (one shared token = one client).
`python -m serving.auth new <name> <scopes>` prints a fresh token and its entry.

The presented token is hashed once and compared in constant time against every entry (no early exit). A missing
or unknown token answers 401, a known one without the route's scope 403. With no token configured at all the
deployment is open (the local stack on loopback; compose refuses to start serving without SERVING_TOKENS) and
every caller is `anonymous`. A token entry that does not parse stops start-up (fail closed).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app, g, has_request_context, request

from serving.failures import Forbidden, Unauthenticated

ALL_SCOPES = "*"
KNOWN_SCOPES = frozenset({"predict", "jobs", "metrics", ALL_SCOPES})  # a route may only declare these
ANONYMOUS = "anonymous"  # the caller when auth is off
# SERVING_API_TOKEN's client: the deployment's one shared caller, as in an open deployment (so jobs made before
# named tokens, owned by `anonymous`, stay its own); no SERVING_TOKENS entry may take the name
LEGACY_NAME = ANONYMOUS
EXTENSION_KEY = "serving.auth"
_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63}):(?:sha256:)?(?P<hash>[0-9a-fA-F]{64})"
                    r":(?P<scopes>[a-z*]+(?:,[a-z*]+)*)$")


class TokenConfigError(ValueError):
    """A token entry that does not parse: start-up stops (the message names where, never the hash)."""


@dataclass(frozen=True)
class Client:
    name: str
    digest: bytes  # sha256 of the token
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_entries(text: str, where: str) -> list[Client]:
    """Entries separated by whitespace or newlines; '#' starts a comment."""
    clients = []
    for n, line in enumerate(text.splitlines(), 1):
        for item in line.split("#", 1)[0].split():
            match = _ENTRY.match(item)
            if match is None:
                raise TokenConfigError(f"{where} line {n}: a token entry must be name:sha256-hex:scope[,scope] "
                                       f"(got an entry starting {item.split(':', 1)[0][:20]!r})")
            if match["name"] == ANONYMOUS:
                raise TokenConfigError(f"{where} line {n}: the name {ANONYMOUS!r} is reserved (an open deployment's "
                                       f"caller); name the client")
            scopes = frozenset(match["scopes"].split(","))
            unknown = sorted(scopes - KNOWN_SCOPES)
            if unknown:
                raise TokenConfigError(f"{where} line {n}: client {match['name']!r} has unknown scope "
                                       f"{unknown[0]!r} (known: {', '.join(sorted(KNOWN_SCOPES))})")
            clients.append(Client(match["name"], bytes.fromhex(match["hash"]), scopes))
    return clients


class Authorizer:
    def __init__(self, clients: Iterable[Client]) -> None:
        self.clients = list(clients)
        names = [c.name for c in self.clients]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise TokenConfigError(f"token client {dupes[0]!r} is listed twice")

    @property
    def enabled(self) -> bool:
        return bool(self.clients)

    @classmethod
    def from_token(cls, token: str | None) -> Authorizer:
        """The single-token deployment (SERVING_API_TOKEN): one client with every scope."""
        return cls([Client(LEGACY_NAME, hashlib.sha256(token.encode()).digest(), frozenset({ALL_SCOPES}))]
                   if token else [])

    @classmethod
    def from_config(cls, *, api_token: str | None = None, tokens: str | None = None,
                    tokens_file: Path | None = None) -> Authorizer:
        clients = cls.from_token(api_token).clients
        if tokens:
            clients += parse_entries(tokens, "SERVING_TOKENS")
        if tokens_file is not None:
            try:
                text = Path(tokens_file).read_text()
            except OSError as exc:
                raise TokenConfigError(f"SERVING_TOKENS_FILE={tokens_file}: cannot read it: {exc.strerror}") from exc
            clients += parse_entries(text, f"SERVING_TOKENS_FILE={tokens_file}")
        return cls(clients)

    def identify(self) -> Client | None:
        """The client whose token the current HTTP request presents, or None."""
        return self.identify_header(request.headers.get("Authorization", ""))

    def identify_header(self, header: str) -> Client | None:
        """The client whose token an `Authorization` header (or gRPC `authorization` metadata) presents, or None.
        Every entry is compared (constant time)."""
        scheme, _sep, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        digest = hashlib.sha256(given.strip().encode()).digest()
        found = None
        for client in self.clients:
            if hmac.compare_digest(digest, client.digest):
                found = client
        return found

    def guard(self, scope: str) -> Callable[..., None] | None:
        """The check for one route's scope (None when no token is configured: nothing to check)."""
        if scope not in KNOWN_SCOPES:
            raise TokenConfigError(f"route scope {scope!r} is not one of {sorted(KNOWN_SCOPES)}")
        if not self.enabled:
            return None

        def check(**_: Any) -> None:
            g.serving_client = self.authorize(scope, request.headers.get("Authorization", "")).name
        return check

    def authorize(self, scope: str, header: str) -> Client:
        """The client an `Authorization` value presents, if its token grants `scope` (Unauthenticated, Forbidden
        otherwise); call only when `enabled`."""
        client = self.identify_header(header)
        if client is None:
            raise Unauthenticated("missing or wrong bearer token: send 'Authorization: Bearer <token>'")
        if not client.allows(scope):
            raise Forbidden(f"this token does not grant the '{scope}' scope")
        return client


def current_client() -> str:
    """The authenticated caller's name (its token's), which owns its async jobs; `anonymous` when auth is off."""
    if has_request_context():
        return g.get("serving_client", ANONYMOUS)
    return ANONYMOUS


def sees_internals() -> bool:
    """Whether the caller may see operational details (reload errors, refused versions, tables): anyone when auth
    is off, otherwise only a caller with a valid token."""
    authorizer: Authorizer | None = current_app.extensions.get(EXTENSION_KEY)
    return authorizer is None or not authorizer.enabled or authorizer.identify() is not None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.auth", description="Make a client token.")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="print a fresh random token and its SERVING_TOKENS entry")
    new.add_argument("name")
    new.add_argument("scopes", help=f"comma list of {', '.join(sorted(KNOWN_SCOPES))}")
    args = parser.parse_args(argv)
    token = secrets.token_urlsafe(32)
    entry = f"{args.name}:{hash_token(token)}:{args.scopes}"
    try:
        parse_entries(entry, "the new entry")
    except TokenConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"token (give it to the client, store it nowhere else): {token}")
    print(f"entry (SERVING_TOKENS or SERVING_TOKENS_FILE):        {entry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
