"""A tidewire.v1 server that a test drives message by message (Python `websockets`):
the real hub never sends duplicates, gaps or late replies, so this one does."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List, Optional

import websockets

TIMEOUT = 10.0


class ScriptConn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.done = asyncio.get_running_loop().create_future()

    async def recv(self, timeout: float = TIMEOUT) -> Dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        msg = json.loads(raw)
        assert isinstance(msg, dict), msg
        return msg

    async def expect(self, op: str, timeout: float = TIMEOUT) -> Dict[str, Any]:
        """The next request, which must be ``op`` (pings of the heartbeat are answered
        and skipped)."""
        while True:
            msg = await self.recv(timeout)
            if msg.get("op") == "ping" and op != "ping":
                await self.reply(msg, {})
                continue
            assert msg.get("op") == op, f"expected {op}, got {msg}"
            return msg

    async def send(self, obj: Any) -> None:
        await self.ws.send(json.dumps(obj))

    async def reply(self, request: Dict[str, Any], result: Any) -> None:
        await self.send({"id": request["id"], "ok": True, "result": result})

    async def error(self, request: Dict[str, Any], code: int, message: str) -> None:
        await self.send({"id": request["id"], "error": {"code": code, "message": message}})

    async def accept_connect(self, client: str = "c-1", user: Optional[str] = None) -> Dict[str, Any]:
        req = await self.expect("connect")
        await self.reply(req, {"client": client, "user": user, "version": "tidewire.v1"})
        return req

    async def publication(self, channel: str, offset: int, epoch: str, data: Any = None) -> None:
        await self.send({"channel": channel, "offset": offset, "epoch": epoch, "data": data if data is not None else offset})

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.close(code, reason)


class ScriptServer:
    def __init__(self, subprotocols: Optional[List[str]] = None) -> None:
        self.subprotocols = ["tidewire.v1"] if subprotocols is None else subprotocols
        self.conns: "asyncio.Queue[ScriptConn]" = asyncio.Queue()
        self.count = 0
        self.server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> "ScriptServer":
        kwargs: Dict[str, Any] = {"ping_interval": None}
        if self.subprotocols:
            kwargs["subprotocols"] = self.subprotocols
        self.server = await websockets.serve(self._handler, "127.0.0.1", 0, **kwargs)
        self.port = list(self.server.sockets)[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), TIMEOUT)

    async def _handler(self, ws: Any, *_: Any) -> None:
        self.count += 1
        conn = ScriptConn(ws)
        await self.conns.put(conn)
        await ws.wait_closed()

    async def next_conn(self, timeout: float = TIMEOUT) -> ScriptConn:
        return await asyncio.wait_for(self.conns.get(), timeout)


async def http_refusal_server(status: int, reason: str, extra: str = "") -> Any:
    """A TCP server that answers every request with ``status`` (a refused handshake)."""
    hits = {"n": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits["n"] += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = f"{reason}\n".encode()
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.hits = hits  # type: ignore[attr-defined]
    return server
