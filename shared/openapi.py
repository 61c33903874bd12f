"""`/openapi.json` built from the routes a service mounts and the pydantic models they declare.

An endpoint declares its models with `@documented(request=Model, response=Model, summary=...)`; the same model
validates the request (see `shared.validation`), so the document cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route

from shared.metrics import route_template

__all__ = [
    "Doc",
    "documented",
    "openapi_document",
]

F = TypeVar("F", bound=Callable[..., Any])

_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


@dataclass(frozen=True)
class Doc:
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    tags: tuple[str, ...] = ()


def documented(
    summary: str,
    *,
    request: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    tags: Sequence[str] = (),
) -> Callable[[F], F]:
    def mark(endpoint: F) -> F:
        endpoint.__apgms_doc__ = Doc(summary, request, response, status, tuple(tags))  # type: ignore[attr-defined]
        return endpoint

    return mark


def _register(model: type[BaseModel], schemas: dict[str, Any]) -> str:
    """Put the model (and the models it nests, which pydantic keeps under `$defs`) into components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return f"#/components/schemas/{model.__name__}"


def _operation(route: Route, method: str, schemas: dict[str, Any]) -> dict[str, Any]:
    doc: Doc = getattr(route.endpoint, "__apgms_doc__", Doc(summary=(route.endpoint.__doc__ or "").strip()))
    operation: dict[str, Any] = {
        "summary": doc.summary or route.name,
        "operationId": f"{method.lower()}_{route.name}",
        "responses": {
            "default": {
                "description": "Problem",
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
        },
    }
    if doc.tags:
        operation["tags"] = list(doc.tags)
    params = [name for name in route.param_convertors]
    if params:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in params
        ]
    if doc.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _register(doc.request, schemas)}}},
        }
    success: dict[str, Any] = {"description": "OK"}
    if doc.response is not None:
        success["content"] = {"application/json": {"schema": {"$ref": _register(doc.response, schemas)}}}
    operation["responses"][str(doc.status)] = success
    return operation


def openapi_document(title: str, version: str, routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """An OpenAPI 3.1 document for every `Route` in `routes`."""
    schemas: dict[str, Any] = {"Problem": _PROBLEM_SCHEMA}
    paths: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        path = route_template(route.path)
        openapi_path = "/".join(f"{{{part[1:]}}}" if part.startswith(":") else part for part in path.split("/"))
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            paths.setdefault(openapi_path, {})[method.lower()] = _operation(route, method, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }
