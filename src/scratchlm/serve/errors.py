"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.

OpenAI's clients read this shape to raise their own exception types (`BadRequestError`,
`AuthenticationError`, `NotFoundError`, ...) with `param` and `code` set, so a caller can react
to `context_length_exceeded` or `model_not_found` without parsing sentences.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A request that gets an error response: a status, one sentence, and what it concerns."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
