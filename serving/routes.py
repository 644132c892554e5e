"""Routes declared once: each protocol lists its routes with auth, summary, schemas and its error schema.

The declaration is the only source of truth: `install` registers the views, enforces auth and the model check
from it (resolved per endpoint once, at start-up: nothing is looked up per request), and refuses to start when
the app serves a URL rule that no declaration covers (fail closed). The OpenAPI document (serving/openapi.py) is
generated from the same declarations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response
from werkzeug.exceptions import HTTPException

from scoring.encoding import InputError
from serving.auth import Authorizer
from serving.errors import ApiError, from_failure, from_http_exception, from_input_error
from serving.failures import ServingFailure, UnknownModel

PUBLIC = "public"


@dataclass(frozen=True)
class Scope:
    """A protected route: the caller's token must grant this scope."""

    name: str


Auth = str | Scope  # PUBLIC or Scope(...)
Schema = Mapping[str, Any]


@dataclass(frozen=True)
class Param:
    """A query parameter or request header the route reads."""

    name: str
    schema: Schema
    description: str = ""
    where: str = "query"  # "query" or "header"


@dataclass(frozen=True)
class Answer:
    """One documented response: its bodies by media type (schema None = any body)."""

    description: str
    content: Mapping[str, Schema | None] = field(default_factory=dict)
    headers: tuple[str, ...] = ()


def json_answer(description: str, schema: Schema | None = None, *headers: str) -> Answer:
    return Answer(description, {"application/json": schema}, headers)


@dataclass(frozen=True)
class Route:
    method: str
    rule: str
    endpoint: str  # within its protocol
    view: Callable[..., Any]
    auth: Auth
    summary: str
    responses: Mapping[int, Answer]
    errors: tuple[int, ...] = ()  # statuses answered in the protocol's error schema (401 and 403 added when protected)
    request: Mapping[str, Schema | None] = field(default_factory=dict)  # media type -> schema
    params: tuple[Param, ...] = ()
    documented: bool = True

    @property
    def protected(self) -> bool:
        return isinstance(self.auth, Scope)


@dataclass
class Protocol:
    """One wire protocol: its routes, the error body it answers (schema + renderer) and extra handlers."""

    name: str
    description: str
    error_schema: Schema
    render_error: Callable[[ApiError], Response]
    # how the encoder's InputError is answered (the platform's API distinguishes 400 from 422; others say 400)
    input_error: Callable[[InputError], ApiError] = from_input_error
    # how the services' failures (serving/failures.py) are answered: the platform's statuses unless said otherwise
    failure: Callable[[ServingFailure], ApiError] = from_failure
    handlers: dict[type[Exception], Callable[[Any], Response]] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    mounts: list[tuple[Blueprint, Auth]] = field(default_factory=list)

    def route(self, method: str, rule: str, *, auth: Auth, summary: str, responses: Mapping[int, Answer],
              errors: tuple[int, ...] = (), request: Mapping[str, Schema | None] | None = None,
              params: tuple[Param, ...] = (), documented: bool = True,
              endpoint: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        _check_auth(auth, f"{method} {rule}")

        def declare(view: Callable[..., Any]) -> Callable[..., Any]:
            name = endpoint or view.__name__
            if any(r.endpoint == name for r in self.routes):
                raise ValueError(f"protocol {self.name}: endpoint {name!r} declared twice ({method} {rule})")
            self.routes.append(Route(method.upper(), rule, name, view, auth, summary, responses, errors,
                                     request or {}, params, documented))
            return view

        return declare

    def mount(self, blueprint: Blueprint, *, auth: Auth) -> None:
        """A third-party blueprint served as is (every rule of it gets `auth`); its routes are not documented
        unless declared with `route` as well."""
        _check_auth(auth, f"blueprint {blueprint.name}")
        self.mounts.append((blueprint, auth))


def _check_auth(auth: Any, where: str) -> None:
    if auth != PUBLIC and not isinstance(auth, Scope):
        raise TypeError(f"{where}: auth must be {PUBLIC!r} or Scope(...), got {auth!r}")


class UndeclaredRouteError(RuntimeError):
    """The app serves a URL rule no declaration covers: refused at start-up (auth would be unknown)."""


def install(app: Flask, protocols: list[Protocol], *, authorizer: Authorizer, model: str) -> None:
    """Register every protocol's routes, each view guarded as declared; then check the URL map."""
    declared: dict[str, tuple[str, Auth]] = {}  # endpoint -> (rule, auth)
    mounted: dict[str, Auth] = {}  # blueprint name -> auth
    for proto in protocols:
        bp = Blueprint(proto.name, __name__)
        _error_handlers(bp, proto)
        for r in proto.routes:
            bp.add_url_rule(r.rule, r.endpoint, _guarded(r, authorizer, model), methods=[r.method])
            declared[f"{proto.name}.{r.endpoint}"] = (r.rule, r.auth)
        app.register_blueprint(bp)
        for mount, auth in proto.mounts:
            app.register_blueprint(mount)
            mounted[mount.name] = auth
    for name, auth in mounted.items():
        guard = authorizer.guard(auth.name) if isinstance(auth, Scope) else None
        if guard is not None:
            for endpoint, view in list(app.view_functions.items()):
                if endpoint.startswith(name + "."):
                    app.view_functions[endpoint] = _with_checks(view, [guard])
    check_declared(app, declared, set(mounted))


def check_declared(app: Flask, declared: Mapping[str, tuple[str, Auth]], mounted: set[str]) -> None:
    for rule in app.url_map.iter_rules():
        decl = declared.get(rule.endpoint)
        if decl is not None and decl[0] == rule.rule:
            continue
        if rule.endpoint.split(".", 1)[0] in mounted and "." in rule.endpoint:
            continue
        methods = ",".join(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
        raise UndeclaredRouteError(f"route {methods} {rule.rule} (endpoint {rule.endpoint!r}) has no declaration: "
                                   f"declare it with Protocol.route(..., auth=PUBLIC | Scope(...))")


def _guarded(route: Route, authorizer: Authorizer, model: str) -> Callable[..., Any]:
    """The view with the checks its declaration asks for, composed once: auth, then the model in the URL."""
    checks: list[Callable[..., None]] = []
    if isinstance(route.auth, Scope):
        guard = authorizer.guard(route.auth.name)
        if guard is not None:  # no token configured: the deployment is open, nothing to check
            checks.append(guard)
    if "<model>" in route.rule:
        checks.append(_model_check(model))
    return _with_checks(route.view, checks) if checks else route.view


def _model_check(served: str) -> Callable[..., None]:
    def check(model: str, **_: Any) -> None:
        if model != served:
            raise UnknownModel(model, served)
    return check


def _with_checks(view: Callable[..., Any], checks: list[Callable[..., None]]) -> Callable[..., Any]:
    if len(checks) == 1:
        (first,) = checks

        def one(**kwargs: Any) -> Any:
            first(**kwargs)
            return view(**kwargs)
        return one

    def many(**kwargs: Any) -> Any:
        for check in checks:
            check(**kwargs)
        return view(**kwargs)
    return many


def _error_handlers(bp: Blueprint, proto: Protocol) -> None:
    render = proto.render_error
    bp.register_error_handler(ApiError, render)
    bp.register_error_handler(InputError, lambda exc: render(proto.input_error(exc)))
    bp.register_error_handler(ServingFailure, lambda exc: render(proto.failure(exc)))
    bp.register_error_handler(HTTPException, lambda exc: render(from_http_exception(exc)))
    for exc_type, handler in proto.handlers.items():
        bp.register_error_handler(exc_type, handler)
