"""An asyncio client of the ``tidewire.v1`` channel protocol (docs/protocol.md).

One WebSocket to ``ws://HOST/ws``, reconnected with exponential backoff and full jitter;
every subscription resumed with ``since`` after a reconnect, so that each publication is
delivered once, in order; an :class:`~tidewire.protocol.Unrecoverable` item where the
server could not fill a gap; requests (``publish``, ``history``, ``presence``, ``ping``)
with timeouts; an application heartbeat; server-side subscriptions (the server API's
``subscribe``) delivered like the client's own and kept across reconnects.

.. code-block:: python

    async with Client("ws://127.0.0.1:8080/ws", token=jwt) as client:
        sub = await client.subscribe("chat:lobby")
        await client.publish("chat:lobby", {"text": "hi"})
        async for item in sub:
            if isinstance(item, Publication):
                print(item.offset, item.data)
            else:  # Unrecoverable: messages may be missing, reload
                ...
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import random as _random
import time
from dataclasses import dataclass
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
    List,
    Optional,
    Set,
    TypeVar,
    Union,
)

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ._util import check_channel, check_idempotency_key, check_json, check_limit, check_position, dumps
from .errors import (
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
    ConnectInfo,
    ErrorCode,
    History,
    Publication,
    StreamPosition,
    Unrecoverable,
    backoff_delay,
    close_action,
)

#: Refusals of a subscribe that may pass later with nothing changed on the client's side:
#: the engine unavailable, the server failing, over the subscribe rate.
_TEMPORARY = (ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED)

__all__ = [
    "Client",
    "Subscription",
    "EventStream",
    "SubscriptionItem",
    "SubscribedEvent",
    "Event",
    "Connected",
    "Disconnected",
    "Reconnecting",
    "Stopped",
    "ServerSubscribed",
    "ServerUnsubscribed",
    "ErrorEvent",
    "Publication",
    "Unrecoverable",
    "StreamPosition",
    "ClientInfo",
    "ConnectInfo",
    "History",
]

log = logging.getLogger("tidewire")

SubscriptionItem = Union[Publication, Unrecoverable]
TokenProvider = Callable[[], Union[Optional[str], Awaitable[Optional[str]]]]


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class SubscribedEvent:
    """A (re)subscription succeeded (``on_subscribed``)."""

    channel: str
    #: The last position delivered (where live publications continue from).
    position: StreamPosition
    #: False for the first subscription of this Subscription, True after a reconnect.
    resubscribed: bool
    #: Whether the gap was filled, when the subscribe carried ``since``; else None.
    recovered: Optional[bool]
    #: Publications recovered and delivered by this subscribe.
    recovered_count: int


@dataclass(frozen=True)
class Connected:
    """A connection opened and ``connect`` was answered; subscriptions were sent again."""

    client: str
    user: Optional[str]
    version: str
    #: 1 for the first connection, then 2, 3, ...
    connection: int


@dataclass(frozen=True)
class Disconnected:
    """A connection ended (``code`` is None when it dropped without a close frame, or the
    client gave it up: connect timeout, heartbeat)."""

    code: Optional[int]
    reason: str


@dataclass(frozen=True)
class Reconnecting:
    """The client waits ``delay`` seconds, then connects again."""

    attempt: int
    delay: float
    code: Optional[int]
    reason: str


@dataclass(frozen=True)
class Stopped:
    """The client stopped for good: ``close()``, a close code that means "do not
    reconnect" (``code``, ``reason``), a refused handshake, or ``max_attempts``.
    ``error`` is None after ``close()``."""

    code: Optional[int]
    reason: str
    error: Optional[ClosedError]


@dataclass(frozen=True)
class ServerSubscribed:
    """The server (its API, for the backend) subscribed this connection to ``channel``;
    its publications follow on ``subscription`` from ``position`` on."""

    channel: str
    position: StreamPosition
    subscription: "Subscription"


@dataclass(frozen=True)
class ServerUnsubscribed:
    """The server ended this connection's subscription to ``channel`` (the subscription
    has ended)."""

    channel: str


@dataclass(frozen=True)
class ErrorEvent:
    """An error that belongs to no request: ``connect`` refused, a callback that raised,
    a message from the server that does not follow the protocol, a subscription the
    server refused on resubscribe, the token provider failing."""

    error: BaseException


Event = Union[Connected, Disconnected, Reconnecting, Stopped, ServerSubscribed, ServerUnsubscribed, ErrorEvent]

_DEFAULT: Any = object()
_T = TypeVar("_T")


# ---------------------------------------------------------------------------- subscription


class Subscription:
    """A subscription to one channel, from :meth:`Client.subscribe` (or made by the
    server, see :class:`ServerSubscribed`).

    It lives until :meth:`unsubscribe`, until the server refuses it or ends it, or until
    the client stops: across reconnects it is resubscribed with ``since`` and continues
    without gap or duplicate where the server can recover.

    Without ``on_publication``, iterate over it (``async for item in sub``): the items
    are :class:`Publication` and :class:`Unrecoverable`, in order, buffered from the
    start (up to ``subscription_buffer``; a reader further behind stops the delivery,
    which resumes with ``since`` once it has caught up, so a slow reader loses nothing
    that the channel's history still holds). Iteration ends when the subscription ends,
    raising the error that ended it, if any (:class:`ServerError` for a refused
    resubscribe, :class:`ClosedError` when the client stopped for good).

    ``await sub`` (or ``await sub.ready()``) waits until the server accepted it.
    """

    def __init__(
        self,
        client: "Client",
        channel: str,
        *,
        since: Optional[StreamPosition] = None,
        server_side: bool = False,
        on_publication: Optional[Callable[[Publication], Any]] = None,
        on_unrecoverable: Optional[Callable[[Unrecoverable], Any]] = None,
        on_join: Optional[Callable[[ClientInfo], Any]] = None,
        on_leave: Optional[Callable[[ClientInfo], Any]] = None,
        on_subscribed: Optional[Callable[[SubscribedEvent], Any]] = None,
        on_error: Optional[Callable[[BaseException], Any]] = None,
        buffer: int = 10_000,
    ) -> None:
        self._client = client
        self.channel = channel
        #: True when the server made this subscription (the server API's ``subscribe``).
        self.server_side = server_side
        self._position: Optional[StreamPosition] = since
        self._on_publication = on_publication
        self._on_unrecoverable = on_unrecoverable
        self._on_join = on_join
        self._on_leave = on_leave
        self._on_subscribed = on_subscribed
        self._on_error = on_error
        self._buffer = buffer
        self._items: Deque[SubscriptionItem] = collections.deque()
        self._waiter: Optional[asyncio.Future[Any]] = None
        self._lagging = False
        # Per connection: the id of the subscribe in flight, whether live publications
        # are taken, and the live ones that came while the subscribe was in flight.
        self._pending_id: Optional[int] = None
        self._active = False
        self._held: List[Publication] = []
        self._pushed: Optional[StreamPosition] = None
        self._retries_106 = 0
        self._subscribed_count = 0
        # Resubscribes refused in a row for a while (112, 100, 107), and the timer of the
        # next try.
        self._refusals = 0
        self._retry_timer: Optional[asyncio.TimerHandle] = None
        self._ended = False
        self._error: Optional[BaseException] = None
        self._error_raised = False
        #: Why the subscription ended ("" while it lives).
        self.end_reason = ""
        self._ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ready.add_done_callback(_retrieve)

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} {self.state} at {self._position}>"

    @property
    def state(self) -> str:
        """``"subscribing"``, ``"subscribed"`` or ``"ended"``."""
        if self._ended:
            return "ended"
        return "subscribed" if self._active else "subscribing"

    @property
    def position(self) -> Optional[StreamPosition]:
        """The last position delivered (the last publication's offset and epoch, or the
        subscribe reply's position), None before the first subscribe reply."""
        return self._position

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def error(self) -> Optional[BaseException]:
        """The error that ended the subscription, if any."""
        return self._error

    async def ready(self, timeout: Optional[float] = None) -> "Subscription":
        """Waits until the server has accepted the subscription (the first time); raises
        the server's refusal (:class:`ServerError`: 103 unknown channel, 104 permission
        denied, 111 limit reached) or :class:`ClosedError`."""
        if timeout is None:
            await asyncio.shield(self._ready)
        else:
            try:
                await asyncio.wait_for(asyncio.shield(self._ready), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(
                    f"subscribe to {self.channel!r}: not accepted within {timeout} s"
                ) from None
        return self

    def __await__(self) -> Generator[Any, None, "Subscription"]:
        return self.ready().__await__()

    async def unsubscribe(self) -> None:
        """Ends the subscription (iteration finishes) and tells the server if connected."""
        await self._client._unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[SubscriptionItem]:
        if self._on_publication is not None:
            raise TypeError(
                f"the subscription to {self.channel!r} delivers to on_publication; it cannot also be iterated"
            )
        return self

    async def __anext__(self) -> SubscriptionItem:
        while True:
            if self._items:
                item = self._items.popleft()
                if self._lagging and len(self._items) <= self._buffer // 2:
                    self._lagging = False
                    self._client._caught_up(self)
                return item
            if self._ended:
                if self._error is not None and not self._error_raised:
                    self._error_raised = True
                    raise self._error
                raise StopAsyncIteration
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def get(self, timeout: Optional[float] = None) -> SubscriptionItem:
        """The next item (``await sub.get(timeout=5)``); StopAsyncIteration once ended."""
        if timeout is None:
            return await self.__anext__()
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no item on {self.channel!r} within {timeout} s") from None

    # -------------------------------------------------------------- internal

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _offer(self, item: SubscriptionItem) -> bool:
        """Hands an item to the application; False when the reader's buffer is full."""
        if self._ended:
            return True
        if self._on_publication is not None:
            if isinstance(item, Publication):
                self._client._call(self._on_publication, item)
            elif self._on_unrecoverable is not None:
                self._client._call(self._on_unrecoverable, item)
            return True
        if len(self._items) >= self._buffer:
            return False
        self._items.append(item)
        if isinstance(item, Unrecoverable) and self._on_unrecoverable is not None:
            self._client._call(self._on_unrecoverable, item)
        self._wake()
        return True

    def _presence(self, kind: str, who: ClientInfo) -> None:
        fn = self._on_join if kind == "join" else self._on_leave
        if fn is not None:
            self._client._call(fn, who)

    def _subscribed(self, event: SubscribedEvent) -> None:
        self._subscribed_count += 1
        if not self._ready.done():
            self._ready.set_result(event)
        if self._on_subscribed is not None:
            self._client._call(self._on_subscribed, event)

    def _end(self, error: Optional[BaseException], reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._active = False
        self._pending_id = None
        self._held = []
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        self._error = error
        self.end_reason = reason
        if not self._ready.done():
            self._ready.set_exception(
                error or ClosedError(f"subscription to {self.channel!r} ended before it was accepted: {reason}")
            )
        if error is not None and self._on_error is not None:
            self._client._call(self._on_error, error)
        self._wake()


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # An exception nobody awaits is not an "exception was never retrieved" warning.
    if not fut.cancelled():
        fut.exception()


# ---------------------------------------------------------------------------- connection


class _Request:
    __slots__ = ("id", "op", "channel", "text", "future")

    def __init__(self, rid: int, op: str, channel: Optional[str], text: str, future: asyncio.Future[Any]) -> None:
        self.id = rid
        self.op = op
        self.channel = channel
        self.text = text
        self.future = future

    def describe(self) -> str:
        return f"{self.op} on {self.channel!r}" if self.channel is not None else self.op


class _Pending:
    __slots__ = ("kind", "request", "sub", "since")

    def __init__(
        self,
        kind: str,
        request: Optional[_Request] = None,
        sub: Optional[Subscription] = None,
        since: Optional[StreamPosition] = None,
    ) -> None:
        self.kind = kind  # request | connect | subscribe | ping | ignore
        self.request = request
        self.sub = sub
        self.since = since


class _Conn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.pending: Dict[int, _Pending] = {}
        self.open = False
        self.established = False
        self.out: "asyncio.Queue[str]" = asyncio.Queue()
        self.connect_error: Optional[ServerError] = None
        self.local_reason: Optional[str] = None
        self.connect_timer: Optional[asyncio.TimerHandle] = None
        self.ping_deadline: Optional[asyncio.TimerHandle] = None
        self.tasks: List[asyncio.Task[None]] = []

    def send(self, text: str) -> None:
        self.out.put_nowait(text)


class EventStream:
    """The client's events as an async iterator, from :meth:`Client.events`."""

    def __init__(self, client: "Client", maxsize: int) -> None:
        self._client = client
        self._queue: "asyncio.Queue[Event]" = asyncio.Queue(maxsize)
        self._done = False
        if client._stop_event is not None:
            self._queue.put_nowait(client._stop_event)
        else:
            client._event_queues.add(self._queue)

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        ev = await self._queue.get()
        if isinstance(ev, Stopped):
            self.close()
        return ev

    async def get(self, timeout: Optional[float] = None) -> Event:
        """The next event; RequestTimeout after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no client event within {timeout} s") from None

    def close(self) -> None:
        """Stops buffering events."""
        self._done = True
        self._client._event_queues.discard(self._queue)


# ---------------------------------------------------------------------------- client


class Client:
    """A ``tidewire.v1`` client that reconnects and resumes by itself.

    :param url: ``ws://HOST/ws`` or ``wss://HOST/ws``.
    :param token: a JWT sent in ``connect`` on every connection.
    :param token_provider: called (sync or async) before every connection for a fresh
        token (None: no token); with one, a close 4001 (token expired) reconnects instead
        of stopping. Give ``token`` or ``token_provider``, not both.
    :param info: any JSON (at most 1 KiB) shown as this client's ``info`` in presence.
    :param initial_delay: the first reconnection waits at most this long (seconds, full
        jitter); each attempt doubles it, up to ``max_delay``.
    :param max_attempts: failed attempts in a row before giving up (None: never).
    :param ping_interval: seconds between application heartbeats (``op: ping``) while
        connected; 0 turns it off. With nothing received ``ping_timeout`` seconds after a
        ping, the connection is dropped and replaced.
    :param connect_timeout: bound on the handshake, and on the ``connect`` reply.
    :param request_timeout: default timeout of requests (None: none).
    :param queue_size: requests kept while not connected; beyond, :class:`QueueFullError`.
    :param max_message_size: requests larger than this (UTF-8 bytes) are refused unsent
        with :class:`MessageTooLargeError` (the server closes with 1009 beyond its
        ``limits.max_message_size``, 1 MiB by default); 0: no check.
    :param subscription_buffer: items an iterated subscription keeps for its reader.
    :param on_event: called with every :data:`Event` (see also :meth:`events`).
    :param on_server_subscribe: called with the :class:`Subscription` the server made
        (the server API's ``subscribe``), before any of its items.
    :param ssl: an ``ssl.SSLContext`` for ``wss://``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str] = None,
        token_provider: Optional[TokenProvider] = None,
        info: Any = None,
        initial_delay: float = 0.5,
        max_delay: float = 20.0,
        max_attempts: Optional[int] = None,
        ping_interval: float = 25.0,
        ping_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        request_timeout: Optional[float] = 10.0,
        queue_size: int = 1000,
        max_message_size: int = 1 << 20,
        subscription_buffer: int = 10_000,
        on_event: Optional[Callable[[Event], Any]] = None,
        on_server_subscribe: Optional[Callable[[Subscription], Any]] = None,
        ssl: Any = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must be ws://HOST/ws or wss://HOST/ws, got {url!r}")
        if token is not None and token_provider is not None:
            raise ValueError("give token or token_provider, not both")
        if token is not None and not isinstance(token, str):
            raise TypeError("token must be a str")
        if token_provider is not None and not callable(token_provider):
            raise TypeError("token_provider must be callable")
        if info is not None:
            text = dumps(info, "info")
            if len(text.encode("utf-8")) > 1024:
                raise ValueError("info must be at most 1 KiB of JSON")
        _positive(initial_delay, "initial_delay", allow_zero=True)
        _positive(max_delay, "max_delay", allow_zero=True)
        _positive(ping_interval, "ping_interval", allow_zero=True)
        _positive(ping_timeout, "ping_timeout")
        _positive(connect_timeout, "connect_timeout")
        if request_timeout is not None:
            _positive(request_timeout, "request_timeout")
        if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 0):
            raise ValueError("max_attempts must be None or an int >= 0")
        for name, value, least in (
            ("queue_size", queue_size, 0),
            ("max_message_size", max_message_size, 0),
            ("subscription_buffer", subscription_buffer, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}")
        for name, fn in (("on_event", on_event), ("on_server_subscribe", on_server_subscribe)):
            _plain_callback(fn, name)
        self.url = url
        self._token = token
        self._token_provider = token_provider
        self._info = info
        self._initial_delay = float(initial_delay)
        self._max_delay = float(max_delay)
        self._max_attempts = max_attempts
        self._ping_interval = float(ping_interval)
        self._ping_timeout = float(ping_timeout)
        self._connect_timeout = float(connect_timeout)
        self._request_timeout = request_timeout
        self._queue_size = queue_size
        self._max_message_size = max_message_size
        self._subscription_buffer = subscription_buffer
        self._on_server_subscribe = on_server_subscribe
        self._ssl = ssl
        self._random = random

        self._phase = "idle"  # idle | connecting | connected | waiting | stopped
        self._closing = False
        self._task: Optional[asyncio.Task[None]] = None
        self._conn: Optional[_Conn] = None
        self._wakeup: Optional[asyncio.Event] = None
        self._next_id = 1
        self._connections = 0
        self._queue: Deque[_Request] = collections.deque()
        self._subs: Dict[str, Subscription] = {}
        self._connect_waiters: "List[asyncio.Future[ConnectInfo]]" = []
        self._listeners: List[Callable[[Event], Any]] = []
        self._event_queues: Set["asyncio.Queue[Event]"] = set()
        self._stopped: Optional[asyncio.Future[Any]] = None
        self._stop_event: Optional[Stopped] = None
        self.connection: Optional[ConnectInfo] = None
        """This connection's client id and user while connected, else None."""
        if on_event is not None:
            self._listeners.append(on_event)

    # -------------------------------------------------------------- public API

    def __repr__(self) -> str:
        return f"<tidewire.v1.Client {self.url} {self.state}>"

    @property
    def state(self) -> str:
        """``"idle"`` (not started), ``"connecting"``, ``"connected"``, ``"reconnecting"``
        (waiting for the next attempt) or ``"stopped"``."""
        return "reconnecting" if self._phase == "waiting" else self._phase

    @property
    def stopped(self) -> Optional[Stopped]:
        """How the client stopped, once it has."""
        return self._stop_event

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self, timeout: Optional[float] = None) -> ConnectInfo:
        """Starts the client (it keeps reconnecting in the background) and waits until a
        connection is established. Raises :class:`ClosedError` (with the close code and
        reason) if the client stops first, :class:`RequestTimeout` after ``timeout``
        seconds (the client goes on trying)."""
        if self._phase == "stopped":
            raise self._closed_error("connect")
        if self._phase == "connected" and self.connection is not None:
            return self.connection
        loop = asyncio.get_running_loop()
        if self._phase == "idle":
            self._stopped = loop.create_future()
            self._wakeup = asyncio.Event()
            self._phase = "connecting"
            self._task = loop.create_task(self._run(), name=f"tidewire.v1 {self.url}")
        fut: "asyncio.Future[ConnectInfo]" = loop.create_future()
        self._connect_waiters.append(fut)
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"not connected to {self.url} within {timeout} s (still trying)") from None
        finally:
            if fut in self._connect_waiters:
                self._connect_waiters.remove(fut)

    async def close(self) -> None:
        """Closes the connection (1000) and stops reconnecting. Requests waiting for a
        reply or in the queue fail with :class:`ClosedError`; subscriptions end (their
        iteration finishes after the items already buffered)."""
        if self._phase == "stopped":
            if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
                await asyncio.gather(self._task, return_exceptions=True)
            return
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        conn = self._conn
        if conn is not None:
            await self._close_conn(conn, 1000, "client closed")
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            if conn is None:
                task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), self._connect_timeout + 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._stop(None, None, "close() was called")

    async def wait_stopped(self, timeout: Optional[float] = None) -> Stopped:
        """Waits until the client stops for good (see :class:`Stopped`)."""
        if self._stop_event is not None:
            return self._stop_event
        if self._stopped is None:
            raise ClosedError("the client was never started (call connect() first)")
        if timeout is None:
            return await asyncio.shield(self._stopped)
        try:
            return await asyncio.wait_for(asyncio.shield(self._stopped), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the client did not stop within {timeout} s") from None

    def add_listener(self, fn: Callable[[Event], Any]) -> Callable[[], None]:
        """Calls ``fn(event)`` for every :data:`Event`; returns a function that removes it."""
        _plain_callback(fn, "listener")
        self._listeners.append(fn)

        def remove() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)

        return remove

    def events(self, maxsize: int = 1024) -> "EventStream":
        """The events from now on (buffered from this call), until and including
        :class:`Stopped`: ``async for ev in client.events(): ...``. Beyond ``maxsize``
        events not yet read, newer ones are dropped."""
        return EventStream(self, maxsize)

    def subscribe(
        self,
        channel: str,
        *,
        since: Union[StreamPosition, Dict[str, Any], None] = None,
        on_publication: Optional[Callable[[Publication], Any]] = None,
        on_unrecoverable: Optional[Callable[[Unrecoverable], Any]] = None,
        on_join: Optional[Callable[[ClientInfo], Any]] = None,
        on_leave: Optional[Callable[[ClientInfo], Any]] = None,
        on_subscribed: Optional[Callable[[SubscribedEvent], Any]] = None,
        on_error: Optional[Callable[[BaseException], Any]] = None,
    ) -> Subscription:
        """Subscribes to ``channel``: now if connected, else as soon as the client is.

        ``since`` resumes from a position saved earlier (the last publication seen).
        Callbacks are plain functions, called in order; with ``on_publication`` the
        publications go to it, else iterate over the subscription. ``await`` the result
        to wait until the server accepted it. Raises :class:`ServerError` 106 if this
        client already has a subscription to ``channel``.
        """
        check_channel(channel)
        if self._phase == "stopped":
            raise self._closed_error(f"subscribe to {channel!r}")
        for name, fn in (
            ("on_publication", on_publication),
            ("on_unrecoverable", on_unrecoverable),
            ("on_join", on_join),
            ("on_leave", on_leave),
            ("on_subscribed", on_subscribed),
            ("on_error", on_error),
        ):
            _plain_callback(fn, name)
        if channel in self._subs:
            raise ServerError(
                ErrorCode.ALREADY_SUBSCRIBED,
                f"already subscribed to {channel!r} by this client: use client.subscription({channel!r}),"
                " or unsubscribe() it first",
            )
        sub = Subscription(
            self,
            channel,
            since=check_position(since) if since is not None else None,
            on_publication=on_publication,
            on_unrecoverable=on_unrecoverable,
            on_join=on_join,
            on_leave=on_leave,
            on_subscribed=on_subscribed,
            on_error=on_error,
            buffer=self._subscription_buffer,
        )
        self._subs[channel] = sub
        conn = self._conn
        if conn is not None and conn.open:
            self._send_subscribe(conn, sub)
        return sub

    def subscription(self, channel: str) -> Optional[Subscription]:
        """This client's subscription to ``channel`` (its own or the server's), if any."""
        return self._subs.get(channel)

    @property
    def subscriptions(self) -> Dict[str, Subscription]:
        """The live subscriptions by channel (a copy)."""
        return dict(self._subs)

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = _DEFAULT,
    ) -> StreamPosition:
        """Publishes ``data`` (any JSON value) on ``channel``; returns its position.

        With ``idempotency_key`` (1 to 128 bytes), a retry with the same key (after
        :class:`DisconnectedError`, :class:`RequestTimeout` or error 112) publishes at
        most once and returns the first publication's position."""
        check_channel(channel)
        fields: Dict[str, Any] = {"data": check_json(data, "data")}
        key = check_idempotency_key(idempotency_key)
        if key is not None:
            fields["idempotency_key"] = key
        result = await self._request("publish", channel, fields, timeout)
        return _parse(lambda: StreamPosition.from_json(result, "publish result"))

    async def history(
        self, channel: str, *, limit: Optional[int] = None, timeout: Optional[float] = _DEFAULT
    ) -> History:
        """The newest ``limit`` publications of ``channel`` (server default 100, at most
        10,000), oldest first, and the channel's position."""
        check_channel(channel)
        fields: Dict[str, Any] = {}
        if check_limit(limit) is not None:
            fields["limit"] = limit
        result = await self._request("history", channel, fields, timeout)
        return _parse(lambda: History.from_json(result, channel))

    async def presence(self, channel: str, *, timeout: Optional[float] = _DEFAULT) -> List[ClientInfo]:
        """The connections subscribed to ``channel`` (error 110 where the namespace has
        no presence)."""
        check_channel(channel)
        result = await self._request("presence", channel, {}, timeout)

        def parse() -> List[ClientInfo]:
            clients = result.get("clients") if isinstance(result, dict) else None
            if not isinstance(clients, list):
                raise ValueError(f"presence result: {result!r}")
            return [ClientInfo.from_json(c) for c in clients]

        return _parse(parse)

    async def rpc(self, method: str, data: Any = None, *, timeout: Optional[float] = _DEFAULT) -> Any:
        """Calls ``method`` of the application's backend through the hub (``op: rpc``; the
        method's namespace needs ``rpc_proxy``): the backend's answer. A refusal raises
        :class:`ServerError` with the backend's code (1000 or more) or 104; 112 when the
        backend is down or slow."""
        if not isinstance(method, str) or not 1 <= len(method.encode("utf-8")) <= 256:
            raise ValueError("method must be a string of 1 to 256 bytes")
        fields: Dict[str, Any] = {"method": method, "data": check_json(data, "data")}
        result = await self._request("rpc", None, fields, timeout)
        return result.get("data") if isinstance(result, dict) else None

    async def ping(self, *, timeout: Optional[float] = _DEFAULT) -> float:
        """The application heartbeat (``op: ping``); returns the round trip in seconds."""
        start = time.monotonic()
        await self._request("ping", None, {}, timeout)
        return time.monotonic() - start

    # -------------------------------------------------------------- requests

    def _closed_error(self, what: str) -> ClosedError:
        if self._phase == "idle":
            return ClosedError(f"{what}: the client is not running (call connect() first)")
        stop = self._stop_event
        if stop is not None and stop.error is not None:
            e = stop.error
            return ClosedError(
                f"{what}: {e}", e.code, e.reason, http_status=e.http_status, connect_error=e.connect_error
            )
        return ClosedError(f"{what}: the client was closed")

    async def _request(
        self, op: str, channel: Optional[str], fields: Dict[str, Any], timeout: Optional[float]
    ) -> Any:
        if timeout is _DEFAULT:
            timeout = self._request_timeout
        what = f"{op} on {channel!r}" if channel is not None else op
        if self._phase in ("idle", "stopped"):
            raise self._closed_error(what)
        rid = self._take_id()
        body: Dict[str, Any] = {"id": rid, "op": op}
        if channel is not None:
            body["channel"] = channel
        body.update(fields)
        text = dumps(body, what)
        if self._max_message_size > 0 and len(text) * 4 > self._max_message_size:
            size = len(text.encode("utf-8"))
            if size > self._max_message_size:
                raise MessageTooLargeError(
                    f"{what} not sent: {size} bytes, more than max_message_size ({self._max_message_size});"
                    " the server would close the connection with 1009"
                )
        fut = asyncio.get_running_loop().create_future()
        req = _Request(rid, op, channel, text, fut)
        conn = self._conn
        if conn is not None and conn.open:
            self._send_request(conn, req)
        elif len(self._queue) >= self._queue_size:
            raise QueueFullError(
                f"{what} refused: {len(self._queue)} requests already wait for the connection (queue_size)"
            )
        else:
            self._queue.append(req)
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"{what}: no reply within {timeout} s (it may still be carried out)") from None
        finally:
            if not fut.done():
                fut.cancel()
            self._forget(req)

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _send_request(self, conn: _Conn, req: _Request) -> None:
        conn.pending[req.id] = _Pending("request", request=req)
        conn.send(req.text)

    def _forget(self, req: _Request) -> None:
        try:
            self._queue.remove(req)
        except ValueError:
            pass
        conn = self._conn
        if conn is not None:
            p = conn.pending.get(req.id)
            if p is not None and p.request is req:
                del conn.pending[req.id]

    # -------------------------------------------------------------- the connection's life

    async def _run(self) -> None:
        attempts = 0
        try:
            while not self._closing:
                self._phase = "connecting"
                outcome = await self._attempt()
                if self._closing:
                    break
                code, reason = outcome.code, outcome.reason
                if outcome.established:
                    attempts = 0
                if outcome.stop is not None:
                    self._stop(outcome.stop, code, reason)
                    return
                if self._max_attempts is not None and attempts >= self._max_attempts:
                    self._stop(
                        ClosedError(
                            f"gave up after {attempts} reconnection attempts (max_attempts); last: {reason}", code, reason
                        ),
                        code,
                        reason,
                    )
                    return
                attempts += 1
                delay = backoff_delay(attempts, self._initial_delay, self._max_delay, self._random)
                if outcome.retry_after:
                    delay = max(delay, min(outcome.retry_after, self._max_delay))
                self._phase = "waiting"
                self._emit(Reconnecting(attempts, delay, code, reason))
                assert self._wakeup is not None
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            conn = self._conn
            if conn is not None:
                self._abort(conn, "client closed")
            self._stop(None, None, "close() was called")
            raise
        except BaseException as e:  # a bug: say so rather than hang
            log.exception("tidewire.v1 client: internal error")
            self._stop(ClosedError(f"internal error of the client: {e!r}"), None, "internal error")
            raise
        self._stop(None, None, "close() was called")

    async def _attempt(self) -> "_Outcome":
        """One connection: opened, served until it ends. What happened, and whether to
        stop."""
        # The token first: a provider may take time, and a stale one is useless.
        try:
            token = await self._fetch_token()
        except Exception as e:
            self._report(TidewireError(f"the token provider failed: {e!r}"))
            return _Outcome(None, f"the token provider failed: {e!r}", False, None)
        try:
            kwargs: Dict[str, Any] = {
                "subprotocols": [PROTOCOL],
                "open_timeout": self._connect_timeout,
                "ping_interval": None,
                "close_timeout": 2,
                "max_size": 256 << 20,
            }
            if self._ssl is not None:
                kwargs["ssl"] = self._ssl
            ws = await websockets.connect(self.url, **kwargs)
        except InvalidURI as e:
            return _Outcome(None, str(e), False, ClosedError(f"cannot connect to {self.url}: {e}"))
        except InvalidHandshake as e:
            status, retry_after = _handshake_status(e)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                return _Outcome(
                    None,
                    f"HTTP {status}",
                    False,
                    ClosedError(f"the server refused the WebSocket with HTTP {status}: {e}", http_status=status),
                )
            return _Outcome(None, f"handshake failed: {e}", False, None, retry_after)
        except (OSError, asyncio.TimeoutError, EOFError) as e:
            return _Outcome(None, f"cannot connect: {e!r}", False, None)
        if self._closing:
            await _quiet_close(ws)
            return _Outcome(None, "closed", False, None)
        if ws.subprotocol != PROTOCOL:
            await _quiet_close(ws)
            err = ClosedError(
                f"the server did not select the {PROTOCOL} subprotocol (got {ws.subprotocol!r}):"
                " not a tidewire.v1 endpoint"
            )
            self._report(ProtocolError(str(err)))
            return _Outcome(None, "not tidewire.v1", False, err)
        conn = _Conn(ws)
        self._conn = conn
        try:
            await self._serve(conn, token)
        finally:
            self._conn = None
            self._lost(conn)
        code: Optional[int] = ws.close_code
        reason: str = ws.close_reason or ""
        if conn.local_reason is not None:
            code, reason = None, conn.local_reason
        elif code == 1006:
            code, reason = None, reason or "connection lost"
        self._emit(Disconnected(code, reason))
        action = close_action(code)
        stop: Optional[ClosedError] = None
        detail = f" (connect refused: {conn.connect_error.message})" if conn.connect_error else ""
        if action is CloseAction.STOP:
            stop = ClosedError(
                f"connection closed with {code}{': ' + reason if reason else ''}{detail}; not reconnecting",
                code,
                reason,
                connect_error=conn.connect_error,
            )
        elif action is CloseAction.RECONNECT_WITH_NEW_TOKEN and self._token_provider is None:
            stop = ClosedError(
                f"token expired (close {code}{': ' + reason if reason else ''}) and no token_provider to get"
                " a new one; not reconnecting",
                code,
                reason,
                connect_error=conn.connect_error,
            )
        return _Outcome(code, reason or f"closed with {code}", conn.established, stop)

    async def _fetch_token(self) -> Optional[str]:
        if self._token_provider is None:
            return self._token
        got = self._token_provider()
        if inspect.isawaitable(got):
            got = await got
        if got is not None and not isinstance(got, str):
            raise TypeError(f"the token provider returned {type(got).__name__}, not a str or None")
        return got

    async def _serve(self, conn: _Conn, token: Optional[str]) -> None:
        loop = asyncio.get_running_loop()
        conn.tasks.append(loop.create_task(self._writer(conn)))
        rid = self._take_id()
        conn.pending[rid] = _Pending("connect")
        msg: Dict[str, Any] = {"id": rid, "op": "connect"}
        if token is not None:
            msg["token"] = token
        if self._info is not None:
            msg["info"] = self._info
        conn.send(dumps(msg))
        conn.connect_timer = loop.call_later(
            self._connect_timeout,
            self._abort,
            conn,
            f"no reply to connect within {self._connect_timeout} s (connect_timeout)",
        )
        try:
            async for raw in conn.ws:
                if conn.ping_deadline is not None:
                    conn.ping_deadline.cancel()
                    conn.ping_deadline = None
                try:
                    self._on_message(conn, raw)
                except Exception as e:  # a bug of ours: report, keep the connection
                    log.exception("tidewire.v1 client: handling a message failed")
                    self._report(e)
        except ConnectionClosed:
            pass
        finally:
            for handle in (conn.connect_timer, conn.ping_deadline):
                if handle is not None:
                    handle.cancel()
            for task in conn.tasks:
                task.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def _writer(self, conn: _Conn) -> None:
        while True:
            text = await conn.out.get()
            try:
                await conn.ws.send(text)
            except ConnectionClosed:
                return

    async def _heartbeat(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._ping_interval)
            if conn.ping_deadline is not None or not conn.open:
                continue
            rid = self._take_id()
            conn.pending[rid] = _Pending("ping")
            conn.send(dumps({"id": rid, "op": "ping"}))
            conn.ping_deadline = loop.call_later(
                self._ping_timeout,
                self._abort,
                conn,
                f"nothing received within {self._ping_timeout} s of a ping (ping_timeout)",
            )

    def _abort(self, conn: _Conn, reason: str) -> None:
        """Gives up a connection at once (no closing handshake: it may be dead)."""
        if conn.local_reason is None:
            conn.local_reason = reason
        transport = getattr(conn.ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def _close_conn(self, conn: _Conn, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(conn.ws.close(code, reason), 3)
        except Exception:
            self._abort(conn, reason)

    def _lost(self, conn: _Conn) -> None:
        """Forgets a connection: the replies it still owed, the subscriptions' state on it."""
        conn.open = False
        self.connection = None
        pending = list(conn.pending.values())
        conn.pending.clear()
        for sub in self._subs.values():
            sub._active = False
            sub._pending_id = None
            sub._held = []
            sub._pushed = None
            sub._retries_106 = 0
            if sub._retry_timer is not None:
                # The next connection resubscribes it anyway.
                sub._retry_timer.cancel()
                sub._retry_timer = None
        for p in pending:
            if p.kind == "request" and p.request is not None and not p.request.future.done():
                p.request.future.set_exception(
                    DisconnectedError(
                        f"{p.request.describe()}: the connection was lost before the reply"
                        " (it may or may not have been carried out)"
                    )
                )

    def _established(self, conn: _Conn, result: Any) -> None:
        if conn.connect_timer is not None:
            conn.connect_timer.cancel()
            conn.connect_timer = None
        if not isinstance(result, dict) or not isinstance(result.get("client"), str):
            self._report(ProtocolError(f"connect result without a client id: {result!r}"))
            result = result if isinstance(result, dict) else {}
        conn.open = True
        conn.established = True
        self._phase = "connected"
        self._connections += 1
        user = result.get("user")
        info = ConnectInfo(
            str(result.get("client", "")), user if isinstance(user, str) else None, str(result.get("version", PROTOCOL))
        )
        self.connection = info
        for sub in list(self._subs.values()):
            self._send_subscribe(conn, sub)
        queued = list(self._queue)
        self._queue.clear()
        for req in queued:
            if not req.future.done():
                self._send_request(conn, req)
        if self._ping_interval > 0:
            conn.tasks.append(asyncio.get_running_loop().create_task(self._heartbeat(conn)))
        waiters = self._connect_waiters
        self._connect_waiters = []
        for w in waiters:
            if not w.done():
                w.set_result(info)
        self._emit(Connected(info.client, info.user, info.version, self._connections))

    def _stop(self, error: Optional[ClosedError], code: Optional[int], reason: str) -> None:
        """Stops for good: fails what waits, ends the subscriptions, says so once."""
        if self._phase == "stopped" and self._stop_event is not None:
            return
        self._phase = "stopped"
        self.connection = None
        failure = error or ClosedError("the client was closed")
        queued = list(self._queue)
        self._queue.clear()
        for req in queued:
            if not req.future.done():
                req.future.set_exception(ClosedError(f"{req.describe()} not sent: {failure}", code, reason))
        waiters = self._connect_waiters
        self._connect_waiters = []
        for w in waiters:
            if not w.done():
                w.set_exception(failure)
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            sub._end(error, reason if error is not None else "the client was closed")
        ev = Stopped(code, reason, error)
        self._stop_event = ev
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(ev)
        if error is not None:
            self._report(error)
        for q in list(self._event_queues):
            # Stopped always reaches the streams, so that their readers finish.
            if q.full():
                try:
                    q.get_nowait()
                except asyncio.QueueEmpty:
                    pass
        self._emit(ev)

    # -------------------------------------------------------------- incoming

    def _on_message(self, conn: _Conn, raw: Any) -> None:
        if not isinstance(raw, str):
            self._report(ProtocolError("the server sent a binary message (tidewire.v1 uses text only)"))
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            self._report(ProtocolError(f"the server sent something that is not JSON: {raw[:100]!r}"))
            return
        if not isinstance(msg, dict):
            self._report(ProtocolError(f"the server sent a message that is not an object: {raw[:100]!r}"))
            return
        if "id" in msg and ("ok" in msg or "error" in msg):
            self._on_reply(conn, msg)
            return
        channel = msg.get("channel")
        if not isinstance(channel, str):
            self._report(ProtocolError(f"unexpected message from the server: {raw[:100]!r}"))
            return
        if "offset" in msg:
            try:
                pub = Publication.from_json(msg)
            except ValueError as e:
                self._report(ProtocolError(str(e)))
                return
            sub = self._subs.get(channel)
            if sub is not None:
                self._deliver(conn, sub, pub)
        elif "join" in msg or "leave" in msg:
            kind = "join" if "join" in msg else "leave"
            sub = self._subs.get(channel)
            if sub is None:
                return
            try:
                who = ClientInfo.from_json(msg[kind])
            except ValueError as e:
                self._report(ProtocolError(f"{kind} on {channel!r}: {e}"))
                return
            sub._presence(kind, who)
        elif "subscribed" in msg:
            try:
                pos = StreamPosition.from_json(msg["subscribed"], f"subscribed push on {channel!r}")
            except ValueError as e:
                self._report(ProtocolError(str(e)))
                return
            self._on_server_subscribed(conn, channel, pos)
        elif "unsubscribed" in msg:
            sub = self._subs.pop(channel, None)
            if sub is not None:
                sub._end(None, "unsubscribed by the server")
            self._emit(ServerUnsubscribed(channel))
        else:
            log.debug("tidewire.v1: ignoring a push of an unknown kind: %.100s", raw)

    def _on_reply(self, conn: _Conn, msg: Dict[str, Any]) -> None:
        err: Optional[TidewireError] = None
        if msg.get("error") is not None:
            e = msg["error"]
            code = e.get("code") if isinstance(e, dict) else None
            message = e.get("message") if isinstance(e, dict) else None
            err = ServerError(
                code if isinstance(code, int) and not isinstance(code, bool) else int(ErrorCode.INTERNAL),
                message if isinstance(message, str) else dumps(e),
            )
        rid = msg.get("id")
        p = conn.pending.pop(rid, None) if isinstance(rid, int) and not isinstance(rid, bool) else None
        if p is None:
            # "id": null: the server could not read a request of ours.
            if err is not None:
                self._report(err)
            return
        result = msg.get("result") if err is None else None
        if result is None:
            result = {}
        if p.kind == "request":
            assert p.request is not None
            fut = p.request.future
            if not fut.done():
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result(result)
        elif p.kind == "connect":
            if err is not None:
                # The server closes next (4001, 4008, 4501): the close code decides.
                assert isinstance(err, ServerError)
                conn.connect_error = err
                self._report(ServerError(err.code, f"connect refused: {err.message}"))
            else:
                self._established(conn, result)
        elif p.kind == "subscribe":
            assert p.sub is not None
            self._on_subscribe_reply(conn, rid, p.sub, p.since, err, result)  # type: ignore[arg-type]

    def _send_subscribe(self, conn: _Conn, sub: Subscription) -> None:
        rid = self._take_id()
        since = sub._position
        msg: Dict[str, Any] = {"id": rid, "op": "subscribe", "channel": sub.channel}
        if since is not None:
            msg["since"] = since.to_json()
        sub._pending_id = rid
        sub._active = False
        sub._held = []
        conn.pending[rid] = _Pending("subscribe", sub=sub, since=since)
        conn.send(dumps(msg))

    def _on_subscribe_reply(
        self,
        conn: _Conn,
        rid: int,
        sub: Subscription,
        since: Optional[StreamPosition],
        err: Optional[TidewireError],
        result: Any,
    ) -> None:
        if sub._ended or self._subs.get(sub.channel) is not sub or sub._pending_id != rid:
            return
        sub._pending_id = None
        position: Optional[StreamPosition] = None
        if err is None:
            try:
                position = StreamPosition.from_json(result, f"subscribe result on {sub.channel!r}")
            except ValueError as e:
                err = ProtocolError(str(e))
        if err is not None or position is None:
            if (
                isinstance(err, ServerError)
                and err.code == ErrorCode.ALREADY_SUBSCRIBED
                and sub._retries_106 < 3
            ):
                # The server subscribed this connection meanwhile (its API): take over that
                # subscription from the last position seen.
                sub._retries_106 += 1
                if sub._position is None:
                    sub._position = sub._pushed
                self._resync(conn, sub, "the server subscribed this connection meanwhile")
                return
            if isinstance(err, ServerError) and err.code in _TEMPORARY and sub._subscribed_count > 0:
                # A subscription the application holds, refused for a while (the engine
                # down, say): kept, and tried again from where it stands after a delay. A
                # first subscribe fails for its caller instead.
                sub._refusals += 1
                delay = backoff_delay(sub._refusals, 0.1, 5.0, self._random)
                self._report(
                    ServerError(
                        err.code,
                        f"resubscribe to {sub.channel!r} refused for now ({err.message}); again in {delay:.2f} s",
                    )
                )
                loop = asyncio.get_running_loop()
                sub._retry_timer = loop.call_later(delay, self._retry_subscribe, conn, sub)
                return
            failure = err or ProtocolError("subscribe reply without a position")
            if isinstance(failure, ServerError):
                failure = ServerError(failure.code, f"subscribe to {sub.channel!r} refused: {failure.message}")
            del self._subs[sub.channel]
            sub._end(failure, str(failure))
            self._report(failure)
            return
        sub._active = True
        sub._refusals = 0
        recovered: Optional[bool] = None
        count = 0
        if since is not None and result.get("recovered") is True:
            recovered = True
            sub._position = since
            pubs = result.get("publications") or []
            if not isinstance(pubs, list):
                pubs = []
            for raw in pubs:
                try:
                    pub = Publication.from_json(raw, sub.channel)
                except ValueError as e:
                    self._report(ProtocolError(f"a recovered publication: {e}"))
                    continue
                outcome = self._deliver(conn, sub, pub)
                if outcome == "resync":
                    return
                if outcome == "delivered":
                    count += 1
            last = sub._position
            if not sub._lagging and last is not None and (last.epoch != position.epoch or last.offset < position.offset):
                self._resync(conn, sub, f"the recovered publications end at {last.offset}, before {position.offset}")
                return
        elif since is not None:
            recovered = False
            if sub._offer(Unrecoverable(sub.channel, since, position)):
                sub._position = position
            else:
                # The reader is behind: said again by the resubscribe once it caught up.
                sub._lagging = True
        else:
            sub._position = position
        assert sub._position is not None
        sub._subscribed(
            SubscribedEvent(sub.channel, sub._position, sub._subscribed_count > 0, recovered, count)
        )
        held = sub._held
        sub._held = []
        for pub in held:
            if self._deliver(conn, sub, pub) == "resync":
                break

    def _deliver(self, conn: _Conn, sub: Subscription, pub: Publication) -> str:
        """Hands a publication to its subscription once, in order; a gap or a new epoch
        resubscribes with ``since``."""
        if not sub._active:
            if sub._pending_id is not None:
                sub._held.append(pub)
                return "held"
            return "duplicate"
        if sub._lagging:
            return "lagging"
        pos = sub._position
        if pos is None:
            return "duplicate"
        if pub.epoch != pos.epoch:
            self._resync(conn, sub, f"a publication of epoch {pub.epoch} (expected {pos.epoch})")
            return "resync"
        if pub.offset <= pos.offset:
            return "duplicate"
        if pub.offset != pos.offset + 1:
            self._resync(conn, sub, f"a gap: offset {pub.offset} after {pos.offset}")
            return "resync"
        if not sub._offer(pub):
            sub._lagging = True
            return "lagging"
        sub._position = pub.position
        return "delivered"

    def _retry_subscribe(self, conn: _Conn, sub: Subscription) -> None:
        sub._retry_timer = None
        if sub._ended or self._subs.get(sub.channel) is not sub or sub._pending_id is not None:
            return
        if self._conn is not conn or not conn.open:
            return  # the next connection resubscribes
        self._send_subscribe(conn, sub)

    def _resync(self, conn: _Conn, sub: Subscription, why: str) -> None:
        """Unsubscribes and subscribes again with ``since`` on the same connection."""
        log.info("tidewire.v1: channel %r: %s; resubscribing with since", sub.channel, why)
        sub._active = False
        if self._conn is not conn or not conn.open:
            return  # the next connection resubscribes
        rid = self._take_id()
        conn.pending[rid] = _Pending("ignore")
        conn.send(dumps({"id": rid, "op": "unsubscribe", "channel": sub.channel}))
        self._send_subscribe(conn, sub)

    def _caught_up(self, sub: Subscription) -> None:
        """A lagging reader has room again: resume with ``since``."""
        conn = self._conn
        if sub._ended or conn is None or not conn.open or self._subs.get(sub.channel) is not sub:
            return
        if sub._pending_id is not None:
            return  # its reply delivers what was missed
        self._resync(conn, sub, "the reader caught up")

    def _on_server_subscribed(self, conn: _Conn, channel: str, pos: StreamPosition) -> None:
        sub = self._subs.get(channel)
        if sub is not None:
            # Our own subscribe is in flight (its 106 reply takes over from here), or the
            # server tells us about one we have.
            sub._pushed = pos
            return
        sub = Subscription(self, channel, since=pos, server_side=True, buffer=self._subscription_buffer)
        sub._active = True
        self._subs[channel] = sub
        if self._on_server_subscribe is not None:
            self._call(self._on_server_subscribe, sub)
        sub._subscribed(SubscribedEvent(channel, pos, False, None, 0))
        self._emit(ServerSubscribed(channel, pos, sub))

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub._ended:
            return
        on_server = sub._active or sub._pending_id is not None
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        sub._end(None, "unsubscribe() was called")
        conn = self._conn
        if not on_server or conn is None or not conn.open:
            return
        rid = self._take_id()
        fut = asyncio.get_running_loop().create_future()
        req = _Request(rid, "unsubscribe", sub.channel, dumps({"id": rid, "op": "unsubscribe", "channel": sub.channel}), fut)
        self._send_request(conn, req)
        try:
            # 105 (not subscribed) and a lost connection leave it unsubscribed as well.
            await asyncio.wait_for(fut, self._request_timeout)
        except (TidewireError, asyncio.TimeoutError):
            pass
        finally:
            self._forget(req)

    # -------------------------------------------------------------- events

    def _call(self, fn: Callable[[Any], Any], arg: Any) -> None:
        try:
            fn(arg)
        except Exception as e:
            log.exception("tidewire.v1: a callback raised")
            if fn is not self._report:
                self._report(e)

    def _report(self, error: BaseException) -> None:
        log.debug("tidewire.v1: %s", error)
        self._emit(ErrorEvent(error))

    def _emit(self, ev: Event) -> None:
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:
                log.exception("tidewire.v1: an event listener raised")
        for q in list(self._event_queues):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                pass


@dataclass
class _Outcome:
    """What one connection attempt came to."""

    code: Optional[int]
    reason: str
    established: bool
    #: Set when the client must stop (the close code says so, a refused handshake...).
    stop: Optional[ClosedError]
    #: The Retry-After of a refused handshake (503), in seconds.
    retry_after: Optional[float] = None


def _handshake_status(e: BaseException) -> "tuple[Optional[int], Optional[float]]":
    """The HTTP status (and Retry-After) of a refused handshake, across websockets
    versions (``InvalidStatus.response`` from 13 on, ``InvalidStatusCode`` before)."""
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None) or getattr(e, "status_code", None)
    headers = getattr(response, "headers", None) or getattr(e, "headers", None)
    retry_after: Optional[float] = None
    if headers is not None:
        try:
            value = headers.get("Retry-After")
            if value is not None:
                retry_after = float(value)
        except (TypeError, ValueError):
            retry_after = None
    return (int(status) if status is not None else None), retry_after


async def _quiet_close(ws: Any) -> None:
    try:
        await asyncio.wait_for(ws.close(), 2)
    except Exception:
        pass


def _parse(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except (ValueError, TypeError, AttributeError) as e:
        raise ProtocolError(f"the server's reply does not follow the protocol: {e}") from None


def _positive(value: Any, name: str, allow_zero: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ValueError(f"{name} must be a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _plain_callback(fn: Any, name: str) -> None:
    if fn is None:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be callable")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{name} must be a plain function (called in order, from the client's task);"
            " for async handling iterate over the subscription or client.events()"
        )
