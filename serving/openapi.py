"""The OpenAPI 3.1 document, generated from the route declarations (serving/routes.py) and the model spec.

The spec gives the `Record` schema (every feature with its JSON type, categories as an enum, nullability, the
entity key allowed beside them) and the `Prediction` item; each protocol gives its own error body.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from scoring.spec import Feature, ModelSpec
from serving.routes import Protocol, Scope

OPENAPI_VERSION = "3.1.0"
_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def openapi_path(rule: str) -> str:
    return _PARAM.sub(r"{\1}", rule)


def feature_schema(f: Feature) -> dict[str, Any]:
    if f.type == "category":
        schema: dict[str, Any] = {"type": "string", "enum": list(f.categories)}
    else:
        schema = {"type": "integer" if f.type == "int" else "number"}
    if f.nullable:
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    return schema


def record_schema(spec: ModelSpec) -> dict[str, Any]:
    key = spec.source.entity_key
    props = {f.name: feature_schema(f) for f in spec.features}
    props[key] = {"type": ["integer", "null"], "description": "the entity key: optional, not a feature; echoed "
                                                               "back, and the cache key of fallback=precomputed"}
    # a nullable feature may be sent as null, but must be there (a missing column is a 400)
    return {"type": "object", "properties": props, "required": spec.feature_names, "additionalProperties": False}


def prediction_schema(spec: ModelSpec) -> dict[str, Any]:
    if spec.is_classifier:
        return {"type": "object", "required": ["score", "label"],
                "properties": {"score": {"type": "number", "description": "probability of class 1"},
                               "label": {"type": "integer", "enum": [0, 1]}}}
    return {"type": "object", "required": ["prediction"], "properties": {"prediction": {"type": "number"}}}


def components(spec: ModelSpec, protocols: list[Protocol]) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Record": record_schema(spec), "Prediction": prediction_schema(spec)}
    for proto in protocols:
        schemas[error_name(proto)] = proto.error_schema
    return {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}


def error_name(proto: Protocol) -> str:
    return f"{proto.name.capitalize()}Error"


def _content(content: dict[str, Any] | Any) -> dict[str, Any]:
    return {mt: ({"schema": schema} if schema is not None else {}) for mt, schema in content.items()}


def document(spec: ModelSpec, protocols: list[Protocol]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for proto in protocols:
        for r in proto.routes:
            if not r.documented:
                continue
            path = openapi_path(r.rule)
            params: list[dict[str, Any]] = [
                {"name": name, "in": "path", "required": True,
                 "schema": {"type": "string", "enum": [spec.name]} if name == "model" else {"type": "string"}}
                for name in _PARAM.findall(r.rule)]
            params += [{"name": p.name, "in": p.where, "required": False, "schema": dict(p.schema),
                        **({"description": p.description} if p.description else {})} for p in r.params]
            responses: dict[str, Any] = {}
            for status, answer in sorted(r.responses.items()):
                responses[str(status)] = {"description": answer.description, **(
                    {"content": _content(answer.content)} if answer.content else {}), **(
                    {"headers": {h: {"schema": {"type": "string"}} for h in answer.headers}} if answer.headers
                    else {})}
            for status in sorted(set(r.errors) | ({401, 403} if r.protected else set())):
                responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": {
                    "application/json": {"schema": ref(error_name(proto))}}}
            op: dict[str, Any] = {"operationId": f"{proto.name}.{r.endpoint}", "summary": r.summary,
                                  "tags": [proto.name], "parameters": params, "responses": responses,
                                  "security": [{"bearer": [r.auth.name]}] if isinstance(r.auth, Scope) else []}
            if r.request:
                op["requestBody"] = {"required": True, "content": _content(r.request)}
            paths.setdefault(path, {})[r.method.lower()] = op
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"Model serving: {spec.name}", "version": "0.1.0",
                 "description": f"{spec.description} Precomputed lookups, live predictions, async jobs, and the "
                                "MLflow and Open Inference protocols. Protected operations take "
                                "`Authorization: Bearer <token>` (a token granting the operation's scope: 401 without "
                                "a known token, 403 without the scope) when the deployment has tokens."},
        "tags": [{"name": p.name, "description": p.description} for p in protocols],
        "paths": paths,
        "components": components(spec, protocols),
    }
