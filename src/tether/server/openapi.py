"""The OpenAPI document and the /docs page, complete enough for generated clients.

FastAPI derives operations from the routes; this adds what it cannot know:
the two ways to authenticate (so /docs has an Authorize button and generated
clients send credentials), every error the server answers with its body
schema, the patterns that the features check by hand on path parameters, and
/metrics' content type. /docs loads Swagger UI from the ``swagger-ui-bundle-v2``
package, so it works without internet access.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from tether.core.auth import ID_PATTERN
from tether.core.idempotency import MAX_KEY
from tether.wire.errors import STATUS
from tether.wire.protocol import CHANNEL_RE

ASSETS = "/docs/assets"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": sorted(STATUS), "description": "stable, for programs"},
                "message": {"type": "string", "description": "what is wrong and what to do, for people"},
                "field": {"type": "string", "description": "the offending field, when one is"},
            },
        }
    },
    "example": {"error": {"code": "forbidden", "message": "only its owner may subscribe to channel 'users.bob'"}},
}

ERRORS = {
    "400": "Malformed request: a field or parameter outside its format or bounds",
    "401": "No credentials, or refused ones (expired, wrong signature, wrong API key)",
    "403": "Authenticated, but not allowed (another user's data, a role or the API key needed)",
    "404": "No such resource (or not visible to the caller)",
    "409": "Conflict: a stale version, a lock held by someone else, a session full or ended",
    "412": "If-Match does not name the current version",
    "413": "Body too large",
    "422": "The body or a parameter does not validate",
    "429": "Rate limited: retry after Retry-After seconds",
    "503": "Storage or broker unreachable: retry",
}

# Path parameters whose format a feature checks itself (answering 400): the same patterns, documented.
PATH_PATTERNS = {
    "channel": CHANNEL_RE.pattern,
    "key": CHANNEL_RE.pattern,
    "user_id": ID_PATTERN,
    "stream_id": ID_PATTERN,
    "session_id": ID_PATTERN,
}
# Headers whose bounds a feature checks itself (answering 400), by lower-case name.
HEADER_BOUNDS = {
    "idempotency-key": {"minLength": 1, "maxLength": MAX_KEY},
}

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A user's token: with --auth dev 'user' or 'user:device'; with --auth jwt a JWT "
                       "(`tether token --user U`).",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The server API key (TETHER_API_KEY), for backends: may act for any user.",
    },
}


def _not_nullable(param: dict[str, Any]) -> None:
    """An optional header or query parameter is absent, never null: drop FastAPI's ``anyOf [T, null]``."""
    schema = param.get("schema", {})
    options = schema.get("anyOf")
    if param.get("in") in ("header", "query") and isinstance(options, list):
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1 and len(rest) < len(options):
            param["schema"] = {**{k: v for k, v in schema.items() if k != "anyOf"}, **rest[0]}


# Every JSON value a body may carry, as the server's edge checks it: integers are signed 64-bit
# (larger ones are refused with 422 wherever they appear, free-form data included).
INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}
JSON_VALUE_REF = {"$ref": "#/components/schemas/JsonValue"}
JSON_VALUE = {
    "description": "Any JSON value; integers within signed 64 bits, numbers finite.",
    "anyOf": [
        {"type": "string"}, {"type": "boolean"}, {"type": "null"},
        {"type": "integer", **INT64},
        {"type": "number", "format": "double"},
        {"type": "array", "items": JSON_VALUE_REF},
        {"type": "object", "additionalProperties": JSON_VALUE_REF},
    ],
}


def _bound_json(node: Any) -> Any:
    """Say in the schema what the edge enforces: bounded integers, free-form values as ``JsonValue``."""
    if isinstance(node, list):
        return [_bound_json(n) for n in node]
    if not isinstance(node, dict):
        return node
    if set(node) <= {"title", "description", "default"} and not any(isinstance(v, dict) for v in node.values()):
        return {**node, **JSON_VALUE_REF}  # a free-form value (``Any``)
    out = {k: (v if k in ("example", "examples", "default", "enum", "const") else _bound_json(v)) for k, v in node.items()}
    if out.get("type") == "integer":  # (pydantic may write a bound as a float that rounds past the range)
        out["minimum"] = int(max(out.get("minimum", INT64["minimum"]), INT64["minimum"]))
        out["maximum"] = int(min(out.get("maximum", INT64["maximum"]), INT64["maximum"]))
    if out.get("type") == "object" and out.get("additionalProperties", True) is True:
        out["additionalProperties"] = dict(JSON_VALUE_REF)
    return out


def enrich(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    schemas = components.setdefault("schemas", {})
    for name, body in list(schemas.items()):
        schemas[name] = _bound_json(body)
    schemas["JsonValue"] = JSON_VALUE
    schemas["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            if path == "/metrics":
                op["responses"]["200"] = {"description": "Prometheus text exposition format",
                                          "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}
            if path == "/healthz":
                op["responses"]["503"] = {"description": ERRORS["503"], "content": error_ref}
            if not path.startswith("/api/"):
                continue
            op["security"] = [{"bearer": []}, {"apiKey": []}]
            if "requestBody" in op:
                op["requestBody"] = _bound_json(op["requestBody"])
            params = op.get("parameters", [])
            headers = {p["name"].lower() for p in params if p.get("in") == "header"}
            if "if-none-match" in headers:
                op["responses"]["304"] = {"description": "Not modified: If-None-Match names the current version"}
            for param in params:
                _not_nullable(param)
                pattern = PATH_PATTERNS.get(param["name"])
                if param.get("in") == "path" and pattern and "pattern" not in param.get("schema", {}):
                    param["schema"]["pattern"] = pattern
                if param.get("in") == "header":
                    param["schema"].update(HEADER_BOUNDS.get(param["name"].lower(), {}))
            for status, description in ERRORS.items():
                if status == "412" and "if-match" not in headers:
                    continue
                op["responses"][status] = {"description": description, "content": error_ref}
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve /openapi.json enriched and /docs from local assets (create the app with docs_url=None)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = enrich(get_openapi(title=app.title, version=app.version,
                                                    description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # the page still works, styled by nothing: say how to get the assets
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger_ui_path is None:
            return HTMLResponse("<p>Swagger UI is not installed: <code>pip install swagger-ui-bundle-v2</code>. "
                                "The API description is at <a href='/openapi.json'>/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Tether API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
                                   swagger_ui_parameters={"persistAuthorization": True})
