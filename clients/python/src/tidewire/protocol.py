"""The constants and rules of the ``tidewire.v1`` protocol (docs/protocol.md) and the
data types the client and the server API return."""

from __future__ import annotations

import enum
import random as _random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

__all__ = [
    "PROTOCOL",
    "ErrorCode",
    "CloseCode",
    "CloseAction",
    "close_action",
    "backoff_delay",
    "StreamPosition",
    "Publication",
    "Unrecoverable",
    "ClientInfo",
    "ConnectInfo",
    "History",
]

#: The WebSocket subprotocol of the channel protocol.
PROTOCOL = "tidewire.v1"

#: Channel names are 1 to 255 bytes (UTF-8).
MAX_CHANNEL_BYTES = 255
#: An ``idempotency_key`` is 1 to 128 bytes.
MAX_IDEMPOTENCY_KEY_BYTES = 128


class ErrorCode(enum.IntEnum):
    """``error.code`` of a reply (docs/protocol.md, "Error codes"). A code not listed
    here is to be treated like :attr:`INTERNAL`."""

    INTERNAL = 100
    BAD_REQUEST = 101
    UNKNOWN_OP = 102
    UNKNOWN_CHANNEL = 103
    PERMISSION_DENIED = 104
    NOT_SUBSCRIBED = 105
    ALREADY_SUBSCRIBED = 106
    RATE_LIMITED = 107
    MESSAGE_TOO_LARGE = 108
    UNAUTHORIZED = 109
    NOT_AVAILABLE = 110
    LIMIT_REACHED = 111
    UNAVAILABLE = 112


class CloseCode(enum.IntEnum):
    """Close codes the hub sends (docs/protocol.md, "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4000
    TOKEN_EXPIRED = 4001
    UNSUPPORTED_DATA = 4003
    UNAUTHORIZED = 4008
    MESSAGE_RATE_LIMITED = 4029
    DISCONNECTED = 4500
    BLOCKED = 4501


class CloseAction(enum.Enum):
    """What a client does after a close code."""

    RECONNECT = "reconnect"
    #: Only with a new token (4001, token expired): a client with a token provider
    #: reconnects, one with a fixed token stops.
    RECONNECT_WITH_NEW_TOKEN = "reconnect-with-new-token"
    STOP = "stop"


def close_action(code: Optional[int]) -> CloseAction:
    """The close-code table of docs/protocol.md, by range.

    1000 and 1009 stop; the rest of 1000-2999, and 3000-3999, reconnect; 4000-4499
    reconnect except 4001 (only with a new token), 4003 and 4008 (stop); 4500-4999 stop.
    ``None`` (the connection dropped without a close frame, 1006) reconnects.
    """
    if code is None:
        return CloseAction.RECONNECT
    if code in (1000, 1009):
        return CloseAction.STOP
    if code == CloseCode.TOKEN_EXPIRED:
        return CloseAction.RECONNECT_WITH_NEW_TOKEN
    if code in (CloseCode.UNSUPPORTED_DATA, CloseCode.UNAUTHORIZED):
        return CloseAction.STOP
    if 4500 <= code <= 4999:
        return CloseAction.STOP
    return CloseAction.RECONNECT


def backoff_delay(
    attempt: int,
    initial_delay: float,
    max_delay: float,
    random: Callable[[], float] = _random.random,
) -> float:
    """Exponential backoff with full jitter: attempt ``n`` (1, 2, ...) waits a uniformly
    random time in ``[0, min(max_delay, initial_delay * 2**(n-1)))`` seconds."""
    exponent = min(max(attempt, 1) - 1, 60)
    ceiling = min(max_delay, initial_delay * (2.0**exponent))
    r = min(max(random(), 0.0), 1.0)
    return max(0.0, min(r * ceiling, ceiling))


@dataclass(frozen=True)
class StreamPosition:
    """A position in a channel's stream: an offset and the epoch of the channel's
    history. Keep the last one you saw to resume with ``since``."""

    offset: int
    epoch: str

    def to_json(self) -> Dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}

    @classmethod
    def from_json(cls, value: Any, what: str = "position") -> "StreamPosition":
        if not isinstance(value, Mapping):
            raise ValueError(f"{what}: expected an object with offset and epoch, got {value!r}")
        offset, epoch = value.get("offset"), value.get("epoch")
        if not isinstance(offset, int) or not _is_offset(offset) or not isinstance(epoch, str):
            raise ValueError(f"{what}: expected an object with offset and epoch, got {value!r}")
        return cls(offset, epoch)


def _is_offset(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Publication:
    """A publication on a channel: pushed live, recovered on resume, or from history."""

    channel: str
    offset: int
    epoch: str
    data: Any

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.offset, self.epoch)

    @classmethod
    def from_json(cls, value: Any, channel: Optional[str] = None) -> "Publication":
        if not isinstance(value, Mapping):
            raise ValueError(f"a publication is an object, got {value!r}")
        ch = value.get("channel", channel)
        offset, epoch = value.get("offset"), value.get("epoch")
        if not isinstance(ch, str) or not isinstance(offset, int) or not _is_offset(offset) or not isinstance(epoch, str):
            raise ValueError(f"a publication needs channel, offset and epoch: {value!r}")
        return cls(ch, offset, epoch, value.get("data"))


@dataclass(frozen=True)
class Unrecoverable:
    """The server could not fill the gap when the client resumed (``recovered: false``):
    publications between ``since`` and ``position`` may be missing. The channel's
    history was recreated (``epoch_changed``: a server restart on the memory engine) or
    no longer reaches back far enough. Reload the state (for example with ``history``)
    and tell the user. Publications after ``position`` follow."""

    channel: str
    since: StreamPosition
    position: StreamPosition

    @property
    def epoch_changed(self) -> bool:
        return self.since.epoch != self.position.epoch


@dataclass(frozen=True)
class ClientInfo:
    """A connection in presence and in join/leave events (``user`` and ``info`` are None
    for anonymous connections)."""

    client: str
    user: Optional[str]
    info: Any = None

    @classmethod
    def from_json(cls, value: Any) -> "ClientInfo":
        if not isinstance(value, Mapping) or not isinstance(value.get("client"), str):
            raise ValueError(f"a client is an object with a client id: {value!r}")
        user = value.get("user")
        return cls(value["client"], user if isinstance(user, str) else None, value.get("info"))


@dataclass(frozen=True)
class ConnectInfo:
    """The reply to ``connect``: this connection's client id, the token's user (None when
    anonymous) and the protocol version."""

    client: str
    user: Optional[str]
    version: str


@dataclass(frozen=True)
class History:
    """A channel's newest publications (oldest first) and its position. A channel that
    does not exist has offset 0 and an empty epoch. ``complete`` (server API with
    ``since`` only) is False when history no longer reaches back to ``since`` or the
    epoch changed."""

    offset: int
    epoch: str
    publications: List[Publication] = field(default_factory=list)
    complete: Optional[bool] = None

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.offset, self.epoch)

    @classmethod
    def from_json(cls, value: Any, channel: str) -> "History":
        if not isinstance(value, Mapping):
            raise ValueError(f"history: expected an object, got {value!r}")
        pos = StreamPosition.from_json(value, "history")
        pubs = value.get("publications", [])
        if not isinstance(pubs, list):
            raise ValueError(f"history: publications is not a list: {pubs!r}")
        complete = value.get("complete")
        return cls(
            pos.offset,
            pos.epoch,
            [Publication.from_json(p, channel) for p in pubs],
            complete if isinstance(complete, bool) else None,
        )
