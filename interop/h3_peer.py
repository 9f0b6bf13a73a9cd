#!/usr/bin/env python3
"""WebSocket over HTTP/3 (RFC 9220) with real peers: `aioquic` for QUIC, HTTP/3 and QPACK,
and the Sans-I/O core of Python `websockets` for the WebSocket frames on the stream.

    h3_peer.py client URL [--ca FILE] [--compression] [--step-timeout S]
        The interop SCENARIO (scenario.py) over an extended CONNECT to URL (wss://): the
        server's 200 without Sec-WebSocket-Accept, text and binary of every size, ping,
        close 1000; then four WebSockets at once on the same QUIC connection.
    h3_peer.py server --port N --cert FILE --key FILE [--compression]
        An echo server: every extended CONNECT with :protocol websocket is answered 200
        (the first subprotocol offered, permessage-deflate when asked and --compression),
        and every message is sent back; prints "listening" once bound.

Exits 0 on success, 1 with a message otherwise (the client); the server runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aioquic.asyncio import connect, serve  # noqa: E402
from aioquic.asyncio.protocol import QuicConnectionProtocol  # noqa: E402
from aioquic.h3.connection import H3_ALPN, H3Connection  # noqa: E402
from aioquic.h3.events import DataReceived, HeadersReceived  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from aioquic.quic.events import QuicEvent  # noqa: E402
from websockets.extensions.permessage_deflate import (  # noqa: E402
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Opcode  # noqa: E402
from websockets.headers import build_extension, parse_extension  # noqa: E402
from websockets.protocol import Protocol, Side, State  # noqa: E402

import scenario  # noqa: E402


class ScenarioError(Exception):
    pass


class H3Peer(QuicConnectionProtocol):
    """One QUIC connection with HTTP/3 on it; its request streams' events go to queues."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.queues: dict[int, asyncio.Queue] = {}
        self.on_request = None  # server: called with (stream_id, headers)

    def queue(self, stream_id: int) -> asyncio.Queue:
        return self.queues.setdefault(stream_id, asyncio.Queue())

    def quic_event_received(self, event: QuicEvent) -> None:
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived) and self.on_request and ev.stream_id not in self.queues:
                self.queue(ev.stream_id)
                self.on_request(ev.stream_id, ev.headers, ev.stream_ended)
            elif isinstance(ev, (HeadersReceived, DataReceived)):
                self.queue(ev.stream_id).put_nowait(ev)


class H3WebSocket:
    """A WebSocket on one request stream: websockets' frames, aioquic's DATA frames."""

    def __init__(self, peer: H3Peer, stream_id: int, side: Side, extensions=()) -> None:
        self.peer = peer
        self.stream_id = stream_id
        self.ws = Protocol(side, state=State.OPEN, max_size=scenario.MAX_MESSAGE_SIZE)
        self.ws.extensions = list(extensions)
        self.ended = False
        self.stream_done = False
        self.pending: list = []
        self.fragments: list[bytes] = []
        self.opcode = None

    def flush(self) -> None:
        for chunk in self.ws.data_to_send():
            if self.ended:
                break
            if chunk == b"":  # websockets' "close the transport"
                self.peer.h3.send_data(self.stream_id, b"", end_stream=True)
                self.ended = True
            else:
                self.peer.h3.send_data(self.stream_id, chunk, end_stream=False)
        self.peer.transmit()

    async def next_frame(self):
        """The next frame, or None once the stream has ended and every frame was taken."""
        while not self.pending:
            if self.stream_done:
                return None
            ev = await self.peer.queue(self.stream_id).get()
            if isinstance(ev, DataReceived):
                self.ws.receive_data(ev.data)
            if ev.stream_ended:
                self.ws.receive_eof()
                self.stream_done = True
            self.pending.extend(self.ws.events_received())
            self.flush()  # pongs and the close reply
        return self.pending.pop(0)

    async def recv(self):
        """The next message (str or bytes), Pong frames as ("pong", data), Close as ("close", frame)."""
        while True:
            frame = await self.next_frame()
            if frame is None:
                return None
            if frame.opcode is Opcode.PONG:
                return ("pong", bytes(frame.data))
            if frame.opcode is Opcode.PING:
                continue
            if frame.opcode is Opcode.CLOSE:
                return ("close", self.ws.close_rcvd)
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.opcode = frame.opcode
                self.fragments = [bytes(frame.data)]
            else:  # CONT
                self.fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self.fragments)
                return data.decode() if self.opcode is Opcode.TEXT else data

    def send(self, message) -> None:
        if isinstance(message, str):
            self.ws.send_text(message.encode())
        else:
            self.ws.send_binary(message)
        self.flush()


def deflate_offer() -> str:
    return build_extension([("permessage-deflate", ClientPerMessageDeflateFactory().get_request_params())])


# --------------------------------------------------------------------------- client


def step(msg: str, t0: float) -> None:
    print(f"ok   {msg} ({(time.monotonic() - t0) * 1000:.0f} ms)", flush=True)


async def within(aw, timeout: float, what: str):
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise ScenarioError(f"timed out after {timeout:g} s: {what}") from None


async def open_ws(peer: H3Peer, url, compression: bool, protocols=("chat", "superchat")):
    """Extended CONNECT on a new stream; returns the WebSocket and the response headers."""
    stream_id = peer._quic.get_next_available_stream_id()
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    headers = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":authority", url.netloc.encode()),
        (b":path", path.encode()),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", ", ".join(protocols).encode()),
        (b"origin", f"https://{url.netloc}".encode()),
    ]
    if compression:
        headers.append((b"sec-websocket-extensions", deflate_offer().encode()))
    peer.h3.send_headers(stream_id, headers, end_stream=False)
    peer.transmit()
    ev = await peer.queue(stream_id).get()
    if not isinstance(ev, HeadersReceived):
        raise ScenarioError(f"expected the response's HEADERS, got {ev!r}")
    response = {k.decode(): v.decode() for k, v in ev.headers}
    if response.get(":status") != "200":
        raise ScenarioError(f"extended CONNECT answered {response}")
    if any(k.lower() == "sec-websocket-accept" for k in response):
        raise ScenarioError(f"a 200 to an extended CONNECT carries no Sec-WebSocket-Accept: {response}")
    extensions = []
    ext = response.get("sec-websocket-extensions")
    if ext:
        for name, params in parse_extension(ext):
            if name != "permessage-deflate":
                raise ScenarioError(f"unexpected extension {name}")
            extensions.append(ClientPerMessageDeflateFactory().process_response_params(params, []))
    if compression and not extensions:
        raise ScenarioError(f"permessage-deflate offered but not negotiated: {response}")
    if not compression and extensions:
        raise ScenarioError(f"extensions negotiated although none were offered: {response}")
    return H3WebSocket(peer, stream_id, Side.CLIENT, extensions), response


async def echo_step(ws: H3WebSocket, kind: str, payload, timeout: float) -> None:
    t0 = time.monotonic()
    n = len(payload.encode()) if isinstance(payload, str) else len(payload)
    ws.send(payload)
    got = await within(ws.recv(), timeout, f"echo of {kind} {n}")
    if type(got) is not type(payload) or got != payload:
        raise ScenarioError(f"{kind} {n}: echo differs: got {scenario.describe(got) if got is not None and not isinstance(got, tuple) else got!r}")
    step(f"{kind} {n} bytes echoed", t0)


async def client(url_text: str, ca: str | None, compression: bool, timeout: float) -> None:
    url = urlsplit(url_text)
    if url.scheme != "wss":
        raise ScenarioError(f"{url_text}: HTTP/3 needs a wss:// URL")
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=None)
    config.verify_mode = ssl.CERT_REQUIRED
    if ca:
        config.load_verify_locations(ca)
    config.server_name = url.hostname
    t0 = time.monotonic()
    async with connect(url.hostname, url.port or 443, configuration=config, create_protocol=H3Peer) as peer:
        ws, response = await within(open_ws(peer, url, compression), timeout, "extended CONNECT")
        step(
            f"connected to {url_text} over HTTP/3 (aioquic, status 200, no accept; "
            f"subprotocol {response.get('sec-websocket-protocol')}, extensions {response.get('sec-websocket-extensions', 'none')})",
            t0,
        )
        for n in scenario.SIZES:
            await echo_step(ws, "text", scenario.text_payload(n), timeout)
        for n in scenario.SIZES:
            await echo_step(ws, "binary", scenario.binary_payload(n), timeout)
        t1 = time.monotonic()
        ws.ws.send_ping(scenario.PING_PAYLOAD)
        ws.flush()
        got = await within(ws.recv(), timeout, "pong")
        if got != ("pong", scenario.PING_PAYLOAD):
            raise ScenarioError(f"ping: expected its pong, got {got!r}")
        step("ping answered by pong with same payload", t1)
        # A fragmented message with a ping between its fragments.
        t1 = time.monotonic()
        ws.ws.send_text(b"frag", fin=False)
        ws.ws.send_ping(b"between")
        ws.ws.send_continuation(b"mented", fin=True)
        ws.flush()
        got = [await within(ws.recv(), timeout, "fragmented echo") for _ in range(2)]
        if got != [("pong", b"between"), "fragmented"]:
            raise ScenarioError(f"fragments with a ping between: got {got!r}")
        step("fragmented message with a ping between: pong first, then the whole message", t1)
        # Four more WebSockets on the same QUIC connection, at once.
        t1 = time.monotonic()
        others = [(await within(open_ws(peer, url, compression), timeout, "another stream"))[0] for _ in range(4)]
        for i, other in enumerate(others):
            other.send(f"stream {i}")
        for i, other in enumerate(others):
            got = await within(other.recv(), timeout, f"echo on stream {i}")
            if got != f"stream {i}":
                raise ScenarioError(f"stream {i}: got {got!r}")
        step("four more WebSockets on the same QUIC connection", t1)
        for other in others:
            other.ws.send_close(1000, "")
            other.flush()
        t1 = time.monotonic()
        ws.ws.send_close(scenario.CLOSE_CODE, scenario.CLOSE_REASON)
        ws.flush()
        while True:
            got = await within(ws.recv(), timeout, "the close reply")
            if isinstance(got, tuple) and got[0] == "close":
                break
        if got[1] is None or got[1].code != scenario.CLOSE_CODE:
            raise ScenarioError(f"close: the server answered {got[1]!r}")
        step(f"close {scenario.CLOSE_CODE} handshake completed", t1)
    print(f"done: scenario passed in {time.monotonic() - t0:.2f} s", flush=True)


# --------------------------------------------------------------------------- server


def server_peer_factory(compression: bool):
    def make(*args, **kwargs):
        peer = H3Peer(*args, **kwargs)

        def on_request(stream_id: int, headers, ended: bool) -> None:
            asyncio.ensure_future(serve_stream(peer, stream_id, headers, compression))

        peer.on_request = on_request
        return peer

    return make


async def serve_stream(peer: H3Peer, stream_id: int, raw_headers, compression: bool) -> None:
    headers = {}
    for k, v in raw_headers:
        headers.setdefault(k.decode(), v.decode())
    if headers.get(":method") != "CONNECT" or headers.get(":protocol") != "websocket":
        peer.h3.send_headers(stream_id, [(b":status", b"400")], end_stream=False)
        peer.h3.send_data(stream_id, b"only WebSockets here\n", end_stream=True)
        peer.transmit()
        return
    if headers.get("sec-websocket-version") != "13" or "sec-websocket-key" in headers:
        peer.h3.send_headers(stream_id, [(b":status", b"400")], end_stream=True)
        peer.transmit()
        return
    response = [(b":status", b"200")]
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    if offered:
        response.append((b"sec-websocket-protocol", offered[0].encode()))
    extensions = []
    if compression and "sec-websocket-extensions" in headers:
        for name, params in parse_extension(headers["sec-websocket-extensions"]):
            if name == "permessage-deflate" and not extensions:
                answer, ext = ServerPerMessageDeflateFactory().process_request_params(params, [])
                extensions.append(ext)
                response.append((b"sec-websocket-extensions", build_extension([(name, answer)]).encode()))
    peer.h3.send_headers(stream_id, response, end_stream=False)
    peer.transmit()
    ws = H3WebSocket(peer, stream_id, Side.SERVER, extensions)
    while True:
        got = await ws.recv()
        if got is None or (isinstance(got, tuple) and got[0] == "close"):
            ws.flush()
            return
        if isinstance(got, tuple):
            continue
        ws.send(got)


async def server(port: int, cert: str, key: str, compression: bool) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=None)
    config.load_cert_chain(cert, key)
    await serve("127.0.0.1", port, configuration=config, create_protocol=server_peer_factory(compression))
    print(f"listening on udp/127.0.0.1:{port} (aioquic HTTP/3, websockets frames)", flush=True)
    await asyncio.Future()


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("client")
    c.add_argument("url")
    c.add_argument("--ca")
    c.add_argument("--compression", action="store_true")
    c.add_argument("--step-timeout", type=float, default=30.0)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--compression", action="store_true")
    args = ap.parse_args()
    try:
        if args.mode == "client":
            asyncio.run(client(args.url, args.ca, args.compression, args.step_timeout))
        else:
            asyncio.run(server(args.port, args.cert, args.key, args.compression))
    except ScenarioError as e:
        print(f"FAIL {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
