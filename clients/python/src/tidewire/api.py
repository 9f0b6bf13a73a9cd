"""An asyncio client of the hub's server API (docs/api.md): ``POST /api/METHOD`` with
``Authorization: apikey KEY``.

.. code-block:: python

    async with ApiClient("http://127.0.0.1:8080", api_key) as api:
        pos = await api.publish("news", {"title": "hello"}, idempotency_key="n-1")
        await api.subscribe("ann", "support:ticket-42")
        await api.disconnect("ann", reason="logged out")

Every method raises :class:`ApiError` (``status``, ``code``, ``message``) when the server
refuses the call, :class:`ApiConnectionError` when it cannot be reached.

A 503 (error 112: the engine did not answer in time; 111: channel limit) is retried after
its ``Retry-After`` (up to ``retries`` times) only where that is safe: reads (presence,
presence_stats, history, channels, info), ``publish`` and ``broadcast`` with an
``idempotency_key``, and a ``batch`` made of those alone. Other calls may have been carried
out when the 503 came; ``retry_unsafe=True`` retries them too.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from ._http import HttpPool, HttpResponse
from ._util import (
    check_channel,
    check_idempotency_key,
    check_json,
    check_limit,
    check_position,
    dumps,
    unix_seconds,
)
from .errors import ApiError
from .protocol import ClientInfo, History, StreamPosition

__all__ = [
    "ApiClient",
    "ApiError",
    "ApiConnectionError",
    "BroadcastResult",
    "BatchReply",
    "PresenceStats",
    "NodeInfo",
    "METHODS",
]

#: The methods of docs/api.md.
METHODS = (
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "block_user",
    "unblock_user",
    "revoke_tokens",
    "batch",
)

_READS = frozenset({"presence", "presence_stats", "history", "channels", "info"})
_MAX_FAN = 1000
_MAX_REASON_BYTES = 123
_MAX_USER_CHARS = 256
_VERSION = "0.1.0"

TimeLike = Union[int, float, datetime]
_T = TypeVar("_T")


class ApiConnectionError(ApiError):
    """The server could not be reached (refused, reset, timed out, not HTTP): ``status``
    and ``code`` are None. The call may or may not have been carried out if the request
    was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(None, None, message)


@dataclass(frozen=True)
class BroadcastResult:
    """One channel's outcome of :meth:`ApiClient.broadcast`: its position, or its error."""

    channel: str
    position: Optional[StreamPosition]
    error: Optional[ApiError]

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class BatchReply:
    """One command's reply in :meth:`ApiClient.batch`: its result (the method's JSON
    result) or its error (an :class:`ApiError` without status)."""

    result: Any
    error: Optional[ApiError]

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        """The result, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.result


@dataclass(frozen=True)
class PresenceStats:
    """Connections and distinct users subscribed to a channel."""

    clients: int
    users: int


@dataclass(frozen=True)
class NodeInfo:
    """A node of the cluster (``info``); ``raw`` holds every field as the server sent it."""

    name: str
    connections: int
    subscriptions: int
    channels: int
    started: Any
    updated: Any
    version: str
    raw: Dict[str, Any]


BatchCommand = Union[Tuple[str, Mapping[str, Any]], Mapping[str, Any]]


class ApiClient:
    """The server API of a hub at ``base_url`` (``http://HOST:PORT`` or ``https://...``).

    :param api_key: the hub's ``api.key`` (``--api-key``, at least 16 characters).
    :param timeout: seconds for one HTTP exchange.
    :param retries: 503s retried at most this many times (where safe, see the module).
    :param max_retry_delay: a ``Retry-After`` is waited out up to this many seconds.
    :param retry_unsafe: also retry calls that may have been carried out already.
    :param ssl: an ``ssl.SSLContext`` for ``https://``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        max_retry_delay: float = 30.0,
        retry_unsafe: bool = False,
        ssl: Any = None,
    ) -> None:
        if not isinstance(api_key, str) or len(api_key) < 16:
            raise ValueError("api_key must be a str of at least 16 characters (the hub's api.key)")
        if any(c in api_key for c in "\r\n"):
            raise ValueError("api_key must not contain line breaks")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError("timeout must be a number > 0")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an int >= 0")
        if not isinstance(max_retry_delay, (int, float)) or max_retry_delay < 0:
            raise ValueError("max_retry_delay must be a number >= 0")
        self._pool = HttpPool(base_url, ssl=ssl)
        self.base_url = base_url
        self._headers = {
            "Authorization": f"apikey {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"tidewire-python/{_VERSION}",
        }
        self._timeout = float(timeout)
        self._retries = retries
        self._max_retry_delay = float(max_retry_delay)
        self._retry_unsafe = retry_unsafe

    def __repr__(self) -> str:
        return f"<tidewire.api.ApiClient {self.base_url}>"

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the kept-alive connections."""
        await self._pool.close()

    # -------------------------------------------------------------- transport

    async def call(self, method: str, params: Optional[Mapping[str, Any]] = None, *, retry: bool = False) -> Any:
        """Calls ``method`` with ``params`` and returns its JSON result as is. A 503 is
        retried after its Retry-After when ``retry`` (or ``retry_unsafe``) is set."""
        if not isinstance(method, str) or not method or "/" in method or "?" in method:
            raise ValueError(f"method must be a method name (docs/api.md), got {method!r}")
        body = dumps(dict(params or {}), f"the parameters of {method}").encode("utf-8")
        attempt = 0
        while True:
            try:
                response = await self._pool.post(f"/api/{method}", body, self._headers, self._timeout)
            except asyncio.TimeoutError:
                raise ApiConnectionError(f"{method}: no response within {self._timeout} s") from None
            except (OSError, EOFError, asyncio.IncompleteReadError) as e:
                raise ApiConnectionError(f"{method}: cannot reach {self.base_url}: {e}") from None
            if response.status == 200:
                return _json_body(method, response)
            error = _error(method, response)
            if (
                response.status == 503
                and (retry or self._retry_unsafe)
                and attempt < self._retries
            ):
                attempt += 1
                await asyncio.sleep(min(error.retry_after if error.retry_after is not None else 1.0, self._max_retry_delay))
                continue
            raise error

    # -------------------------------------------------------------- methods

    async def publish(self, channel: str, data: Any, *, idempotency_key: Optional[str] = None) -> StreamPosition:
        """Publishes ``data`` (any JSON) on ``channel``: its position. With
        ``idempotency_key``, a repeated call publishes at most once (and is retried
        after a 503)."""
        params: Dict[str, Any] = {"channel": check_channel(channel), "data": check_json(data, "data")}
        key = check_idempotency_key(idempotency_key)
        if key is not None:
            params["idempotency_key"] = key
        result = await self.call("publish", params, retry=key is not None)
        return _parse("publish", lambda: StreamPosition.from_json(result, "publish result"))

    async def broadcast(
        self, channels: Sequence[str], data: Any, *, idempotency_key: Optional[str] = None
    ) -> List[BroadcastResult]:
        """Publishes ``data`` on each of ``channels`` (1 to 1,000): a result per channel,
        in order (``idempotency_key`` applies per channel)."""
        chans = _channel_list(channels)
        params: Dict[str, Any] = {"channels": chans, "data": check_json(data, "data")}
        key = check_idempotency_key(idempotency_key)
        if key is not None:
            params["idempotency_key"] = key
        result = await self.call("broadcast", params, retry=key is not None)

        def parse() -> List[BroadcastResult]:
            out = []
            for r in result["responses"]:
                if r.get("error") is not None:
                    e = r["error"]
                    out.append(BroadcastResult(r["channel"], None, ApiError(None, e.get("code"), e.get("message", ""))))
                else:
                    out.append(BroadcastResult(r["channel"], StreamPosition.from_json(r), None))
            return out

        return _parse("broadcast", parse)

    async def subscribe(self, user: str, channel: str, *, client: Optional[str] = None) -> None:
        """Subscribes every connection of ``user`` (or only ``client``) to ``channel``;
        they are told ``{"channel", "subscribed": POSITION}``."""
        await self.call("subscribe", _user_channel(user, channel, client))

    async def unsubscribe(self, user: str, channel: str, *, client: Optional[str] = None) -> None:
        """Ends the subscriptions of ``user``'s connections (or ``client``) to ``channel``."""
        await self.call("unsubscribe", _user_channel(user, channel, client))

    async def disconnect(
        self,
        user: str,
        *,
        client: Optional[str] = None,
        code: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> None:
        """Closes ``user``'s connections (or ``client``) with ``code`` (4000-4999; the
        server's default 4500 means "do not reconnect"; 4000-4499 let clients reconnect)
        and ``reason`` (at most 123 bytes)."""
        params: Dict[str, Any] = {"user": _user(user)}
        if client is not None:
            params["client"] = _client(client)
        if code is not None:
            if not isinstance(code, int) or isinstance(code, bool) or not 4000 <= code <= 4999:
                raise ValueError(f"code must be an int from 4000 to 4999, got {code!r}")
            params["code"] = code
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError("reason must be a str")
            if len(reason.encode("utf-8")) > _MAX_REASON_BYTES:
                raise ValueError(f"reason must be at most {_MAX_REASON_BYTES} bytes (a close frame's limit)")
            params["reason"] = reason
        await self.call("disconnect", params)

    async def refresh(
        self, user: str, *, client: Optional[str] = None, expire_at: Optional[TimeLike] = None
    ) -> None:
        """Makes ``user``'s connections (or ``client``) expire at ``expire_at`` (seconds
        since the Unix epoch or a datetime; None: never) instead of at their token's
        ``exp``."""
        params: Dict[str, Any] = {"user": _user(user)}
        if client is not None:
            params["client"] = _client(client)
        seconds = unix_seconds(expire_at, "expire_at")
        if seconds is not None:
            params["expire_at"] = seconds
        await self.call("refresh", params)

    async def presence(self, channel: str) -> List[ClientInfo]:
        """The connections subscribed to ``channel`` (400/110 where the namespace has no
        presence)."""
        result = await self.call("presence", {"channel": check_channel(channel)}, retry=True)
        return _parse("presence", lambda: [ClientInfo.from_json(c) for c in result["clients"]])

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many connections and distinct users are subscribed to ``channel``."""
        result = await self.call("presence_stats", {"channel": check_channel(channel)}, retry=True)
        return _parse("presence_stats", lambda: PresenceStats(_int(result["clients"]), _int(result["users"])))

    async def history(
        self,
        channel: str,
        *,
        limit: Optional[int] = None,
        since: Union[StreamPosition, Mapping[str, Any], None] = None,
    ) -> History:
        """The newest ``limit`` publications of ``channel`` (server default 100, at most
        10,000), or all of those after ``since``; ``complete`` is False when history no
        longer reaches back to ``since`` or the epoch changed."""
        params: Dict[str, Any] = {"channel": check_channel(channel)}
        if check_limit(limit) is not None:
            params["limit"] = limit
        if since is not None:
            params["since"] = check_position(since).to_json()
        result = await self.call("history", params, retry=True)
        return _parse("history", lambda: History.from_json(result, channel))

    async def history_remove(self, channel: str) -> None:
        """Removes ``channel``'s publications (its position stays)."""
        await self.call("history_remove", {"channel": check_channel(channel)})

    async def channels(self, pattern: Optional[str] = None) -> Dict[str, int]:
        """The channels with subscribers on any node, and how many (``pattern``: ``*``
        stands for any run of characters)."""
        params: Dict[str, Any] = {}
        if pattern is not None:
            if not isinstance(pattern, str):
                raise TypeError("pattern must be a str")
            params["pattern"] = pattern
        result = await self.call("channels", params, retry=True)
        return _parse(
            "channels", lambda: {name: _int(v["subscribers"]) for name, v in result["channels"].items()}
        )

    async def info(self) -> List[NodeInfo]:
        """The nodes of the cluster."""
        result = await self.call("info", {}, retry=True)

        def parse() -> List[NodeInfo]:
            return [
                NodeInfo(
                    n["name"],
                    _int(n["connections"]),
                    _int(n["subscriptions"]),
                    _int(n["channels"]),
                    n.get("started"),
                    n.get("updated"),
                    str(n.get("version", "")),
                    dict(n),
                )
                for n in result["nodes"]
            ]

        return _parse("info", parse)

    async def block_user(self, user: str, *, until: Optional[TimeLike] = None) -> None:
        """Blocks ``user`` (until ``until``, seconds since the Unix epoch or a datetime;
        None: until unblocked): its connections are closed with 4501 and it is refused."""
        params: Dict[str, Any] = {"user": _user(user)}
        seconds = unix_seconds(until, "until")
        if seconds is not None:
            params["until"] = seconds
        await self.call("block_user", params)

    async def unblock_user(self, user: str) -> None:
        """Lifts a block."""
        await self.call("unblock_user", {"user": _user(user)})

    async def revoke_tokens(self, user: str, *, before: Optional[TimeLike] = None) -> None:
        """Refuses ``user``'s tokens issued (``iat``) before ``before`` (default: now, by
        the server's clock); its connections that use one are closed with 4001."""
        params: Dict[str, Any] = {"user": _user(user)}
        seconds = unix_seconds(before, "before")
        if seconds is not None:
            params["before"] = seconds
        await self.call("revoke_tokens", params)

    async def batch(self, commands: Iterable[BatchCommand]) -> List[BatchReply]:
        """Runs 1 to 1,000 commands in order in one request: ``[("publish", {"channel":
        "a", "data": 1}), {"method": "presence_stats", "params": {"channel": "a"}}]``.
        Returns a reply per command (a command's failure does not raise: see
        :class:`BatchReply`)."""
        cmds: List[Dict[str, Any]] = []
        safe = True
        for c in commands:
            if isinstance(c, tuple) and len(c) == 2:
                method, params = c
            elif isinstance(c, Mapping) and "method" in c:
                method, params = c["method"], c.get("params", {})
            else:
                raise TypeError(f"a batch command is (method, params) or {{'method', 'params'}}, got {c!r}")
            if method not in METHODS or method == "batch":
                raise ValueError(f"batch: {method!r} is not a method of docs/api.md that a batch may hold")
            if not isinstance(params, Mapping):
                raise TypeError(f"batch: the params of {method} must be a mapping")
            cmds.append({"method": method, "params": dict(params)})
            keyed = method in ("publish", "broadcast") and params.get("idempotency_key") is not None
            safe = safe and (method in _READS or keyed)
        if not 1 <= len(cmds) <= _MAX_FAN:
            raise ValueError(f"batch: 1 to {_MAX_FAN} commands, got {len(cmds)}")
        result = await self.call("batch", {"commands": cmds}, retry=safe)

        def parse() -> List[BatchReply]:
            out = []
            for r in result["replies"]:
                if r.get("error") is not None:
                    e = r["error"]
                    out.append(BatchReply(None, ApiError(None, e.get("code"), e.get("message", ""))))
                else:
                    out.append(BatchReply(r.get("result"), None))
            return out

        return _parse("batch", parse)


# ---------------------------------------------------------------------------- helpers


def _json_body(method: str, response: HttpResponse) -> Any:
    try:
        return json.loads(response.body)
    except ValueError:
        raise ApiError(response.status, None, f"{method}: the response is not JSON: {response.body[:200]!r}") from None


def _error(method: str, response: HttpResponse) -> ApiError:
    retry_after: Optional[float] = None
    if "retry-after" in response.headers:
        try:
            retry_after = max(0.0, float(response.headers["retry-after"]))
        except ValueError:
            retry_after = None
    code: Optional[int] = None
    message = response.body.decode("utf-8", "replace").strip()[:500] or f"HTTP {response.status}"
    try:
        body = json.loads(response.body)
        e = body.get("error") if isinstance(body, dict) else None
        if isinstance(e, dict):
            if isinstance(e.get("code"), int):
                code = e["code"]
            if isinstance(e.get("message"), str):
                message = e["message"]
    except ValueError:
        pass
    return ApiError(response.status, code, message, retry_after=retry_after)


def _parse(method: str, fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ApiError(200, None, f"{method}: the result does not follow docs/api.md: {e!r}") from None


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _user(user: Any) -> str:
    if not isinstance(user, str):
        raise TypeError(f"user must be a str (a token's sub), got {type(user).__name__}")
    if not 1 <= len(user) <= _MAX_USER_CHARS:
        raise ValueError(f"user must be 1 to {_MAX_USER_CHARS} characters, got {len(user)}")
    return user


def _client(client: Any) -> str:
    if not isinstance(client, str) or not client:
        raise ValueError(f"client must be a client id (a non-empty str), got {client!r}")
    return client


def _user_channel(user: str, channel: str, client: Optional[str]) -> Dict[str, Any]:
    params: Dict[str, Any] = {"user": _user(user), "channel": check_channel(channel)}
    if client is not None:
        params["client"] = _client(client)
    return params


def _channel_list(channels: Any) -> List[str]:
    if isinstance(channels, str) or not isinstance(channels, Iterable):
        raise TypeError("channels must be a list of channel names")
    chans = [check_channel(c, "each of channels") for c in channels]
    if not 1 <= len(chans) <= _MAX_FAN:
        raise ValueError(f"channels must hold 1 to {_MAX_FAN} channels, got {len(chans)}")
    return chans
