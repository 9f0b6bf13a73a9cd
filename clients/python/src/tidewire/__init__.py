"""Tidewire for Python backends.

- :mod:`tidewire.v1`: an asyncio client of the ``tidewire.v1`` channel protocol
  (:class:`Client`): reconnects with backoff, resumes subscriptions with ``since``.
- :mod:`tidewire.api`: an asyncio client of the server API (:class:`ApiClient`).
- :func:`make_token`: HS256 connection tokens.
"""

from .api import ApiClient, ApiConnectionError, BatchReply, BroadcastResult, NodeInfo, PresenceStats
from .errors import (
    ApiError,
    ClosedError,
    DisconnectedError,
    MessageTooLargeError,
    ProtocolError,
    QueueFullError,
    RequestTimeout,
    ServerError,
    TidewireError,
)
from .protocol import (
    PROTOCOL,
    ClientInfo,
    CloseAction,
    CloseCode,
    ConnectInfo,
    ErrorCode,
    History,
    Publication,
    StreamPosition,
    Unrecoverable,
    backoff_delay,
    close_action,
)
from .tokens import make_token
from .v1 import (
    Client,
    Connected,
    Disconnected,
    ErrorEvent,
    Event,
    EventStream,
    Reconnecting,
    ServerSubscribed,
    ServerUnsubscribed,
    Stopped,
    SubscribedEvent,
    Subscription,
)

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL",
    "ApiClient",
    "ApiConnectionError",
    "ApiError",
    "BatchReply",
    "BroadcastResult",
    "Client",
    "ClientInfo",
    "CloseAction",
    "CloseCode",
    "ClosedError",
    "ConnectInfo",
    "Connected",
    "Disconnected",
    "DisconnectedError",
    "ErrorCode",
    "ErrorEvent",
    "Event",
    "EventStream",
    "History",
    "MessageTooLargeError",
    "NodeInfo",
    "PresenceStats",
    "ProtocolError",
    "Publication",
    "QueueFullError",
    "Reconnecting",
    "RequestTimeout",
    "ServerError",
    "ServerSubscribed",
    "ServerUnsubscribed",
    "Stopped",
    "StreamPosition",
    "SubscribedEvent",
    "Subscription",
    "TidewireError",
    "Unrecoverable",
    "backoff_delay",
    "close_action",
    "make_token",
]
