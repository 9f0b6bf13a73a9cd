"""Exceptions of the tidewire package.

Every exception the package raises on purpose is a :class:`TidewireError`. Errors the
server answers carry its numeric code (docs/protocol.md, "Error codes"): a
:class:`ServerError` for the ``tidewire.v1`` WebSocket protocol, an :class:`ApiError`
(with the HTTP status as well) for the server API.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "TidewireError",
    "ServerError",
    "DisconnectedError",
    "ClosedError",
    "RequestTimeout",
    "ProtocolError",
    "QueueFullError",
    "MessageTooLargeError",
    "ApiError",
]


class TidewireError(Exception):
    """Base class of the package's errors."""


class ServerError(TidewireError):
    """An error reply of the server to a ``tidewire.v1`` request.

    ``code`` is the protocol's error code (103 unknown channel, 104 permission denied,
    107 rate limited, 112 temporarily unavailable, ...; :class:`tidewire.ErrorCode`),
    ``message`` the server's explanation.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message


class DisconnectedError(TidewireError):
    """The connection was lost before the reply came.

    The request may or may not have been carried out by the server: retry a publish with
    the same ``idempotency_key`` to publish it at most once.
    """


class ClosedError(TidewireError):
    """The client is not running: it was closed, never started, or stopped for good.

    When the server ended it (a close code that means "do not reconnect", such as 4500
    disconnected by the server or 4501 blocked), ``code`` and ``reason`` are the close
    code and reason; ``http_status`` is set when the WebSocket handshake was refused
    with an HTTP status. ``connect_error`` is the server's refusal of ``connect`` (error
    109 with the reason) when there was one.
    """

    def __init__(
        self,
        message: str,
        code: Optional[int] = None,
        reason: Optional[str] = None,
        *,
        http_status: Optional[int] = None,
        connect_error: Optional[ServerError] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.http_status = http_status
        self.connect_error = connect_error


class RequestTimeout(TidewireError, TimeoutError):
    """No reply within the request's timeout (the request may still be carried out)."""


class ProtocolError(TidewireError):
    """The server sent something docs/protocol.md does not allow (or is not tidewire.v1)."""


class QueueFullError(TidewireError):
    """Too many requests wait for the connection to come back (``queue_size``)."""


class MessageTooLargeError(TidewireError, ValueError):
    """The request is larger than ``max_message_size``: not sent (the server would close
    the connection with 1009)."""


class ApiError(TidewireError):
    """An error of the server API (docs/api.md).

    ``status`` is the HTTP status (None for a command of a ``batch``, whose replies carry
    no status; and for a failure to reach the server at all, where ``code`` is None too),
    ``code`` the ``tidewire.v1`` error code, ``message`` the server's explanation,
    ``retry_after`` the seconds of a 503's ``Retry-After``.
    """

    def __init__(
        self,
        status: Optional[int],
        code: Optional[int],
        message: str,
        *,
        retry_after: Optional[float] = None,
    ) -> None:
        head = " ".join(str(x) for x in (status, code) if x is not None)
        super().__init__(f"{head}: {message}" if head else message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
