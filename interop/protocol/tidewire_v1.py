"""A small asyncio client for the Tidewire channel protocol (`tidewire.v1`).

Written from docs/protocol.md alone, with the `websockets` library: no Tidewire
code is used. It shows that the document is enough to talk to the hub from
another language.

    client = await Client.connect("ws://127.0.0.1:8080/ws")
    sub = await client.subscribe("news")            # {"offset": .., "epoch": ..}
    await client.publish("news", {"text": "hi"})
    pub = await client.next_publication("news")     # {"channel", "offset", "epoch", "data"}
    ...
    # after a disconnect, on a new connection:
    again = await Client.connect(url)
    res = await again.subscribe("news", since=client.since("news"))
    if not res["recovered"]: ...reload with history()...
    await client.close()

Model:
- Requests carry an integer `id` chosen here (1, 2, 3, ...); a future per id
  waits for the reply. One reader task reads every frame and dispatches: a
  message with an `id` key is a reply; a message with `channel` + `offset` is a
  pushed publication; `channel` + `join` / `leave` is a presence event.
- A reply with `error` raises `TidewireError(code, message)`. Replies with
  `"id": null` (the server could not read an id) go to `orphan_errors`.
- Every channel has one in-order stream of publications (`stream(channel)`,
  an asyncio.Queue). When `subscribe(..., since=...)` recovers, the reader puts
  the reply's `publications` into that stream at the reply's place, before any
  later push, so a consumer reads a single sequence (the result still carries
  the list too). Publications are delivered as received: gaps or duplicates are
  not hidden, only counted in `anomalies`.
- `positions[channel]` is the last offset/epoch seen (from a subscribe reply,
  a recovered publication or a push); `since(channel)` returns it in the form
  `subscribe(since=...)` wants.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import websockets
from websockets.asyncio.client import connect as ws_connect

SUBPROTOCOL = "tidewire.v1"

# docs/protocol.md, "Error codes"
ERROR_NAMES = {
    100: "internal error",
    101: "bad request",
    102: "unknown op",
    103: "unknown channel or namespace",
    104: "permission denied",
    105: "not subscribed",
    106: "already subscribed",
    107: "rate limited",
    108: "reserved",
    109: "unauthorized",
    110: "not available",
    111: "limit reached",
}

# docs/protocol.md, "Close codes": the hub's codes, and what a client does after any code.
CLOSE_SLOW_CONSUMER = 4000
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_UNSUPPORTED_DATA = 4003
CLOSE_UNAUTHORIZED = 4008
CLOSE_MESSAGE_RATE_LIMITED = 4029


def close_action(code: int | None) -> str:
    """"reconnect", "new-token" (reconnect only with a new token) or "stop", by the ranges
    of the table: 1000 and 1009 stop; the rest of 1000-2999 and 3000-3999 reconnect;
    4000-4499 reconnect, except 4001 (new token) and 4003, 4008 (stop); 4500-4999 stop.
    No code (the connection dropped): reconnect."""
    if code is None:
        return "reconnect"
    if code in (1000, 1009):
        return "stop"
    if code == CLOSE_TOKEN_EXPIRED:
        return "new-token"
    if code in (CLOSE_UNSUPPORTED_DATA, CLOSE_UNAUTHORIZED) or 4500 <= code <= 4999:
        return "stop"
    return "reconnect"


class TidewireError(Exception):
    """An error reply: `{"id": N, "error": {"code": C, "message": M}}`."""

    def __init__(self, code: Any, message: Any, reply: dict | None = None):
        self.code = code
        self.message = message
        self.reply = reply
        name = ERROR_NAMES.get(code, "?") if isinstance(code, int) else "?"
        super().__init__(f"error {code} ({name}): {message}")


class ProtocolViolation(Exception):
    """The server sent something docs/protocol.md does not allow."""


class ConnectionLost(Exception):
    """The connection ended while a request was waiting for its reply."""


class Client:
    def __init__(self, ws, timeout: float):
        self.ws = ws
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._pending_op: dict[int, tuple[str, str | None]] = {}
        self._streams: dict[str, asyncio.Queue] = {}
        self.positions: dict[str, dict] = {}
        self.presence_events: asyncio.Queue = asyncio.Queue()
        self.orphan_errors: asyncio.Queue = asyncio.Queue()  # replies with "id": null
        self.violations: list[str] = []  # messages that fit none of the documented shapes
        self.anomalies: list[str] = []  # offset gaps / duplicates / epoch changes seen
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    # ------------------------------------------------------------ connection

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 10.0, token: str | None = None, **ws_kwargs) -> "Client":
        """Open `url` (ws://HOST/ws) offering `tidewire.v1`; fails unless the server selects it.
        With `token`, sends the `connect` op first (auth; not implemented by the server yet)."""
        ws_kwargs.setdefault("open_timeout", timeout)
        ws_kwargs.setdefault("close_timeout", timeout)
        ws_kwargs.setdefault("proxy", None)
        ws = await asyncio.wait_for(ws_connect(url, subprotocols=[SUBPROTOCOL], **ws_kwargs), timeout)
        if ws.subprotocol != SUBPROTOCOL:
            await ws.close()
            raise ProtocolViolation(f"server selected subprotocol {ws.subprotocol!r}, not {SUBPROTOCOL!r}")
        client = cls(ws, timeout)
        if token is not None:
            await client.connect_op(token)
        return client

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await asyncio.wait_for(self.ws.close(code, reason), self.timeout)
        await self._wait_reader()

    def abort(self) -> None:
        """Cut the TCP connection: no close frame, like a network failure."""
        self.ws.transport.abort()

    async def wait_closed(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout or self.timeout)

    async def _wait_reader(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), self.timeout)
        except asyncio.TimeoutError:
            self._reader.cancel()

    # ------------------------------------------------------------ reader

    async def _read_loop(self) -> None:
        try:
            async for frame in self.ws:
                if not isinstance(frame, str):
                    self.violations.append(f"binary frame of {len(frame)} bytes")
                    continue
                try:
                    msg = json.loads(frame)
                except ValueError:
                    self.violations.append(f"not JSON: {frame[:200]!r}")
                    continue
                if not isinstance(msg, dict):
                    self.violations.append(f"not a JSON object: {frame[:200]!r}")
                    continue
                self._dispatch(msg)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.closed.set()
            err = ConnectionLost(f"connection closed (code {self.close_code}, reason {self.close_reason!r})")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self._pending.clear()

    def _dispatch(self, msg: dict) -> None:
        if "id" in msg:
            self._on_reply(msg)
        elif "channel" in msg and "offset" in msg:
            self._on_publication(msg)
        elif "channel" in msg and ("join" in msg or "leave" in msg):
            self.presence_events.put_nowait(msg)
        else:
            self.violations.append(f"unrecognised message: {json.dumps(msg)[:200]}")

    def _on_reply(self, msg: dict) -> None:
        rid = msg["id"]
        if rid is None:
            self.orphan_errors.put_nowait(msg)
            return
        fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
        op = self._pending_op.pop(rid, None) if isinstance(rid, int) else None
        if fut is None:
            self.violations.append(f"reply to an unknown id: {json.dumps(msg)[:200]}")
            return
        if op and op[0] == "subscribe" and msg.get("ok") is True and isinstance(msg.get("result"), dict):
            self._on_subscribed(op[1], msg["result"])
        if not fut.done():
            fut.set_result(msg)

    def _on_subscribed(self, channel: str | None, result: dict) -> None:
        # Runs in the reader, before any later frame: recovered publications enter
        # the channel's stream exactly where the reply was received.
        if channel is None:
            return
        pubs = result.get("publications") or []
        if result.get("recovered") is True:
            for pub in pubs:
                self._on_publication(pub)
        if "offset" in result and "epoch" in result:
            self.positions[channel] = {"offset": result["offset"], "epoch": result["epoch"]}

    def _on_publication(self, pub: dict) -> None:
        channel = pub.get("channel")
        last = self.positions.get(channel)
        if last is not None:
            if pub.get("epoch") != last["epoch"]:
                self.anomalies.append(f"{channel}: epoch {last['epoch']} -> {pub.get('epoch')}")
            elif pub.get("offset") != last["offset"] + 1:
                self.anomalies.append(f"{channel}: offset {last['offset']} then {pub.get('offset')}")
        self.positions[channel] = {"offset": pub.get("offset"), "epoch": pub.get("epoch")}
        self.stream(channel).put_nowait(pub)

    # ------------------------------------------------------------ requests

    def stream(self, channel: str) -> asyncio.Queue:
        """The channel's publications, in the order received (recovered ones included)."""
        q = self._streams.get(channel)
        if q is None:
            q = self._streams[channel] = asyncio.Queue()
        return q

    async def next_publication(self, channel: str, timeout: float | None = None) -> dict:
        return await asyncio.wait_for(self.stream(channel).get(), timeout or self.timeout)

    async def next_presence_event(self, timeout: float | None = None) -> dict:
        return await asyncio.wait_for(self.presence_events.get(), timeout or self.timeout)

    def since(self, channel: str) -> dict | None:
        """The last position seen on `channel`, as `subscribe(since=...)` wants it."""
        pos = self.positions.get(channel)
        return dict(pos) if pos else None

    def next_id(self) -> int:
        return next(self._ids)

    def expect_reply(self, rid: int, op: str = "", channel: str | None = None) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self.closed.is_set():
            fut.set_exception(ConnectionLost("connection already closed"))
            return fut
        self._pending[rid] = fut
        self._pending_op[rid] = (op, channel)
        return fut

    async def send_raw(self, text: str | bytes) -> None:
        """Send one frame as is (str: text frame, bytes: binary frame)."""
        await asyncio.wait_for(self.ws.send(text), self.timeout)

    async def request_full(self, op: str, timeout: float | None = None, **fields) -> dict:
        """Send `{"id", "op", **fields}` and return the whole reply object."""
        rid = self.next_id()
        fut = self.expect_reply(rid, op, fields.get("channel"))
        try:
            await self.send_raw(json.dumps({"id": rid, "op": op, **fields}))
            return await asyncio.wait_for(fut, timeout or self.timeout)
        finally:
            self._pending.pop(rid, None)
            self._pending_op.pop(rid, None)

    async def request(self, op: str, timeout: float | None = None, **fields) -> Any:
        """Send a request; return its `result`, or raise TidewireError for an error reply."""
        reply = await self.request_full(op, timeout, **fields)
        return result_of(reply)

    async def connect_op(self, token: str) -> dict:
        return await self.request("connect", token=token)

    async def subscribe(self, channel: str, since: dict | None = None) -> dict:
        fields: dict[str, Any] = {"channel": channel}
        if since is not None:
            fields["since"] = {"offset": since["offset"], "epoch": since["epoch"]}
            # Recovered publications are checked for continuity from here.
            self.positions[channel] = dict(fields["since"])
        return await self.request("subscribe", **fields)

    async def resume(self, channel: str) -> dict:
        """Subscribe from this client's own last position on `channel` (if any)."""
        return await self.subscribe(channel, since=self.since(channel))

    async def unsubscribe(self, channel: str) -> dict:
        return await self.request("unsubscribe", channel=channel)

    async def publish(self, channel: str, data: Any) -> dict:
        return await self.request("publish", channel=channel, data=data)

    async def history(self, channel: str, limit: int) -> dict:
        return await self.request("history", channel=channel, limit=limit)

    async def presence(self, channel: str) -> dict:
        return await self.request("presence", channel=channel)

    async def ping(self) -> dict:
        return await self.request("ping")


def result_of(reply: dict) -> Any:
    """`result` of a success reply; TidewireError for an error reply; ProtocolViolation otherwise."""
    if "error" in reply:
        err = reply["error"]
        if not isinstance(err, dict):
            raise ProtocolViolation(f"error reply whose error is not an object: {reply}")
        raise TidewireError(err.get("code"), err.get("message"), reply)
    if reply.get("ok") is True and "result" in reply:
        return reply["result"]
    raise ProtocolViolation(f"reply is neither ok+result nor error: {reply}")
