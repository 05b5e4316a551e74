"""REST errors as JSON: every failure, the framework's own included, becomes ``{"error": {code, message}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tether.wire.errors import STATUS, TetherError

log = logging.getLogger("tether.http")

_CODE_FOR_STATUS = {v: k for k, v in STATUS.items()} | {405: "bad_request", 412: "conflict", 415: "bad_request", 422: "bad_request"}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (asked of the router, as a request would)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TetherError)
    async def _tether(request: Request, exc: TetherError) -> JSONResponse:
        request.app.state.node.metrics.errors.labels(exc.code).inc()
        return JSONResponse(error_body(exc.code, exc.message, **exc.extra), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.app.state.node.metrics.errors.labels("bad_request").inc()
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "body"
        message = f"{where}: {first.get('msg', 'invalid')}"
        if first.get("type") == "json_invalid":
            where, message = "body", "body is not valid JSON"
        return JSONResponse(error_body("bad_request", message, field=where), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_FOR_STATUS.get(exc.status_code, "bad_request")
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # A bug or a lost backend: answer "unavailable" (retryable), never a bare 500.
        log.exception("%s %s failed", request.method, request.url.path)
        request.app.state.node.metrics.errors.labels("unavailable").inc()
        return JSONResponse(error_body("unavailable", "the server could not complete this request; retry"), status_code=503)
