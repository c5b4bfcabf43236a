"""Magnum's error body: ``{"errors": [{"request_id", "code", "status", "title", "detail", "links"}]}``.

Handlers raise ``ApiError`` (or one of its helpers); the error middleware renders every failure, including
aiohttp's own 404/405 and unexpected exceptions (500, no traceback), in this shape.
"""

from __future__ import annotations

from typing import Any

MICROVERSION_HELP = "http://docs.openstack.org/api-guide/compute/microversions.html"


class ApiError(Exception):
    """An HTTP error with Magnum's body. ``detail`` is the full message; ``title`` its first sentence."""

    def __init__(self, status: int, detail: str, *, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}


def bad_request(detail: str) -> ApiError:
    return ApiError(400, detail)


def unauthorized(detail: str = "The request you have made requires authentication.") -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": "Keystone uri='keystone'"})


def forbidden(detail: str) -> ApiError:
    return ApiError(403, detail)


def policy_denied(rule: str) -> ApiError:
    return ApiError(403, f"Policy doesn't allow {rule} to be performed.")


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, f"{kind} {ident} could not be found.")


def conflict(detail: str) -> ApiError:
    return ApiError(409, detail)


def title_of(detail: str) -> str:
    """Magnum's title: the message up to (not including) its first '.'."""
    head, dot, _ = detail.partition(".")
    return head if dot and head else detail


def error_body(status: int, detail: str, request_id: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "request_id": request_id,
        "code": "client" if status < 500 else "server",
        "status": status,
        "title": title_of(detail),
        "detail": detail,
        "links": [],
    }
    item.update(extra or {})
    return {"errors": [item]}
