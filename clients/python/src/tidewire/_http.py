"""A small HTTP/1.1 client on asyncio streams, for the server API: POST with a JSON body,
keep-alive connections reused, ``Content-Length`` and chunked responses."""

from __future__ import annotations

import asyncio
import ssl as _ssl
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

__all__ = ["HttpResponse", "HttpPool", "StaleConnection"]

MAX_HEAD = 64 * 1024
MAX_BODY = 256 * 1024 * 1024


@dataclass
class HttpResponse:
    status: int
    headers: Dict[str, str]  # lower-case names
    body: bytes


class StaleConnection(ConnectionError):
    """A reused keep-alive connection was closed by the server before any byte of the
    response: the request was not read, it can be sent again on a new connection."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


class HttpPool:
    """Connections to one origin (``http://HOST:PORT`` or ``https://...``)."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl: Optional[_ssl.SSLContext] = None,
        max_idle: int = 8,
        idle_timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http://HOST[:PORT] or https://..., got {base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not have a query or fragment: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path_prefix = parts.path.rstrip("/")
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self._ssl = ssl if ssl is not None else (_ssl.create_default_context() if parts.scheme == "https" else None)
        self._idle: List[_Connection] = []
        self._max_idle = max_idle
        # The server closes a keep-alive connection that stays quiet for 10 s (its header
        # read timeout); one idle for longer than this is not reused.
        self._idle_timeout = idle_timeout
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()
        for c in idle:
            try:
                await asyncio.wait_for(c.writer.wait_closed(), 1)
            except Exception:
                pass

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self.host,
            self.port,
            ssl=self._ssl,
            server_hostname=self.host if self._ssl is not None else None,
            limit=MAX_HEAD,
        )
        return _Connection(reader, writer)

    def _take_idle(self) -> Optional[_Connection]:
        now = time.monotonic()
        while self._idle:
            c = self._idle.pop()
            if now - c.idle_since < self._idle_timeout and not c.reader.at_eof():
                return c
            c.close()
        return None

    async def post(self, path: str, body: bytes, headers: Dict[str, str], timeout: float) -> HttpResponse:
        """POSTs ``body``; retries once on a new connection when a reused one turns out
        to be closed by the server (before any byte of the response)."""
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        deadline = time.monotonic() + timeout
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, path, body, headers, deadline, reused=True)
            except StaleConnection:
                pass
        conn = await asyncio.wait_for(self._open(), max(0.001, deadline - time.monotonic()))
        return await self._exchange(conn, path, body, headers, deadline, reused=False)

    async def _exchange(
        self, conn: _Connection, path: str, body: bytes, headers: Dict[str, str], deadline: float, reused: bool
    ) -> HttpResponse:
        ok = False
        try:
            head = [
                f"POST {self.path_prefix}{path} HTTP/1.1",
                f"Host: {self.host_header}",
                f"Content-Length: {len(body)}",
            ]
            head += [f"{k}: {v}" for k, v in headers.items()]
            data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
            remaining = max(0.001, deadline - time.monotonic())
            response, keep = await asyncio.wait_for(self._roundtrip(conn, data, reused), remaining)
            ok = keep
            return response
        finally:
            if ok and not self._closed and len(self._idle) < self._max_idle:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()

    async def _roundtrip(self, conn: _Connection, data: bytes, reused: bool) -> Tuple[HttpResponse, bool]:
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            status_line = await conn.reader.readline()
        except (ConnectionError, OSError) as e:
            if reused:
                raise StaleConnection(str(e)) from None
            raise
        if not status_line:
            if reused:
                raise StaleConnection("connection closed by the server")
            raise ConnectionError("the server closed the connection without a response")
        try:
            version, status_text = status_line.decode("latin-1").split(" ", 2)[:2]
            status = int(status_text)
        except ValueError:
            raise ConnectionError(f"not an HTTP response: {status_line[:100]!r}") from None
        headers: Dict[str, str] = {}
        size = len(status_line)
        while True:
            line = await conn.reader.readline()
            size += len(line)
            if size > MAX_HEAD:
                raise ConnectionError("the response head is too large")
            if not line:
                raise ConnectionError("the connection closed in the response head")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(conn.reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ConnectionError(f"bad Content-Length: {headers['content-length']!r}") from None
            if length < 0 or length > MAX_BODY:
                raise ConnectionError(f"bad Content-Length: {length}")
            body = await conn.reader.readexactly(length)
        else:
            # Delimited by the end of the connection.
            body = await conn.reader.read(MAX_BODY)
            return HttpResponse(status, headers, body), False
        keep = version.upper() == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        return HttpResponse(status, headers, body), keep

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: List[bytes] = []
        total = 0
        while True:
            line = await reader.readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size: {line[:40]!r}") from None
            if size == 0:
                # Trailers, up to the empty line.
                while True:
                    t = await reader.readline()
                    if t in (b"\r\n", b"\n", b""):
                        return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise ConnectionError("the response body is too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
