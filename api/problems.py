"""RFC 9457 problem details: the one error shape of the API (`application/problem+json`), and the handlers that turn
request validation errors and ProblemError into it."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.coldstore import ArchiveError

__all__ = ["PROBLEM_JSON", "ProblemError", "install_problem_handlers", "problem_response"]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """An error answered as a problem+json body: `status`, a short `title` per kind, a `detail` for this request."""

    def __init__(self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}


def problem_response(
    status: int, title: str, detail: str, *, instance: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.title, exc.detail, instance=request.url.path, headers=exc.headers)


def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"parameter": ".".join(str(p) for p in e.get("loc", ())[1:]) or "request", "message": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e['parameter']}: {e['message']}" for e in errors)
    return problem_response(400, "Invalid request", detail, instance=request.url.path, errors=errors)


def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(
        exc.status_code, str(exc.detail), str(exc.detail), instance=request.url.path, headers=headers
    )


def _on_database(request: Request, exc: Exception) -> Response:
    # The driver's message may name hosts or users: it goes to the log, not to the client.
    logger.warning("database error on %s: %s", request.url.path, exc)
    return problem_response(
        503, "Database unavailable", "PostgreSQL could not answer; try again shortly", instance=request.url.path
    )


def _on_archive(request: Request, exc: Exception) -> Response:
    # The archive's URL and the filesystem's message stay in the log.
    logger.warning("archive error on %s: %s", request.url.path, exc)
    return problem_response(
        503, "Archive unavailable", "the cold archive could not be read; try again shortly", instance=request.url.path
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of `app` (bad parameters, unknown routes, ProblemError) with a problem+json body."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(DBAPIError, _on_database)
    app.add_exception_handler(ArchiveError, _on_archive)
