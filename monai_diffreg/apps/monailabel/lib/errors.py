"""Errors that reach the MONAI Label client as HTTP errors with a readable message.

Infer tasks raise :class:`RequestError`; the app (``main.py``) turns it into a FastAPI
``HTTPException`` carrying the same status and message, so a viewer shows the message
instead of "Internal Server Error", and the server keeps serving.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = ["RequestError", "bad_request", "not_found", "unprocessable", "atlas_unavailable"]


class RequestError(Exception):
    """A request that cannot be served, with the HTTP status that says why.

    Args:
        status: HTTP status code (4xx: the request is at fault; 503: the server's settings
            are, e.g. a misconfigured atlas, and the administrator must fix them).
        message: what went wrong and what was expected, for the user.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(HTTPStatus(status))
        self.message = message


def bad_request(message: str) -> RequestError:
    """400: malformed request parameters."""
    return RequestError(HTTPStatus.BAD_REQUEST, message)


def not_found(message: str) -> RequestError:
    """404: unknown image or model."""
    return RequestError(HTTPStatus.NOT_FOUND, message)


def unprocessable(message: str) -> RequestError:
    """422: the image exists but cannot be registered to the atlas (wrong dimensionality, unreadable, empty)."""
    return RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, message)


def atlas_unavailable(message: str) -> RequestError:
    """503: the server's settings (``--conf``: atlas files, label names, options) are unusable."""
    return RequestError(HTTPStatus.SERVICE_UNAVAILABLE, message)
