"""Error answers: the gateway's error envelope, the exception a handler raises to answer with
one (and its 400 shortcuts), the errors of status faults, and Starlette's 404/405 as envelopes."""

from __future__ import annotations

import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..api.errors import RequestValidationError
from ..api.models import DEFAULT_MODEL
from .middleware import REQUEST_ID_KEY

__all__ = ["error_envelope"]

_STATUS_FAULT_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "429": (429, "rate limit exceeded, retry later", "rate_limit_error", "rate_limit_exceeded"),
    "500": (500, "upstream error: the image generation failed", "server_error", "upstream_error"),
    "502": (502, "bad gateway: invalid upstream response", "server_error", "bad_gateway"),
    "503": (
        503,
        f"no available channel for model {DEFAULT_MODEL}",
        "server_error",
        "no_available_channel",
    ),
}


def error_envelope(
    message: str, type_: str, code: str, param: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The gateway's error body; the message ends with `` (request id: ...)`` when there is one."""
    if request_id:
        message = f"{message} (request id: {request_id})"
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _ApiError(Exception):
    """An error answer: status and envelope fields (raised anywhere while serving a request)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Keep the error's status, envelope fields and extra headers."""
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type_,
            code,
            param,
        )
        self.headers = headers or []


class _ClientGone(Exception):
    """The client went away before its request body was read."""


def _invalid(param: str | None, message: str, code: str = "invalid_value") -> _ApiError:
    """A 400 ``invalid_request_error`` naming the offending field."""
    return _ApiError(400, message, "invalid_request_error", code, param)


def _validation_error(exc: RequestValidationError) -> _ApiError:
    """The first broken rule of a RequestValidationError as a 400 envelope."""
    field, _value, rule = exc.errors[0]
    return _invalid(field, rule)


def _retry_after(seconds: float | None) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` (whole seconds) and ``retry-after-ms`` headers, when configured."""
    if seconds is None:
        return []
    return [
        (b"retry-after", str(math.ceil(seconds)).encode()),
        (b"retry-after-ms", str(round(seconds * 1000)).encode()),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """404/405 and friends as error envelopes (with the request id under ``/v1``)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    body = error_envelope(
        str(detail), "invalid_request_error", code, request_id=request.scope.get(REQUEST_ID_KEY)
    )
    return JSONResponse(body, status_code=status)
