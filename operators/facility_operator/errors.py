"""The user API's one kind of refusal: an HTTP status, a message, and the field it is about."""

from __future__ import annotations

from aiohttp import web


class ApiError(Exception):
    """A refusal the user can act on: shown as JSON {"error": ..., "field": ...}."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def response(self) -> web.Response:
        return web.json_response({"error": self.message, "field": self.field}, status=self.status)
