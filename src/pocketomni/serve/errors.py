"""Errors in OpenAI's schema: {"error": {"message", "type", "param", "code"}} with a status code.

SDK errors keep their fix-it messages: bad input (options, media, a full context, a feature the
model lacks) is a 400; anything else unexpected is a 500 that names the exception.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from pocketomni.errors import (
    ContextOverflowError,
    FeatureUnavailableError,
    MediaError,
    OptionsError,
    PocketOmniError,
)

__all__ = ["APIError", "error_body", "error_response", "from_exception"]


class APIError(Exception):
    """An error reply: HTTP status, OpenAI error type, optional param and code."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def error_body(e: APIError) -> dict[str, Any]:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e), status_code=e.status, headers=e.headers)


_CODES: tuple[tuple[type[PocketOmniError], str], ...] = (
    (ContextOverflowError, "context_length_exceeded"),
    (MediaError, "invalid_media"),
    (OptionsError, "invalid_value"),
    (FeatureUnavailableError, "unsupported_feature"),
)


def from_exception(e: BaseException) -> APIError:
    """The error reply for an exception raised while parsing or running a request."""
    if isinstance(e, APIError):
        return e
    for cls, code in _CODES:
        if isinstance(e, cls):
            return APIError(400, str(e), code=code)
    if isinstance(e, PocketOmniError):
        return APIError(500, str(e), type="server_error", code="model_error")
    return APIError(500, f"internal error ({type(e).__name__}: {e}); see the server log", type="server_error",
                    code="internal_error")
