"""The v1 client's rules without a hub: the close-code table, backoff, argument checks,
and, against a scripted server, what the real hub never does (duplicates, gaps, a new
epoch under a live subscription, late or missing replies, a dead connection)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math

import pytest

from scripted import ScriptServer, http_refusal_server
from tidewire import (
    ApiClient,
    ApiError,
    Client,
    ClosedError,
    CloseAction,
    Connected,
    Disconnected,
    DisconnectedError,
    ErrorCode,
    MessageTooLargeError,
    Publication,
    QueueFullError,
    Reconnecting,
    RequestTimeout,
    ServerError,
    Stopped,
    StreamPosition,
    Unrecoverable,
    backoff_delay,
    close_action,
    make_token,
)

FAST = dict(initial_delay=0.05, max_delay=0.2, connect_timeout=2.0)


# ---------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    "code,action",
    [
        (None, CloseAction.RECONNECT),
        (1000, CloseAction.STOP),
        (1001, CloseAction.RECONNECT),
        (1002, CloseAction.RECONNECT),
        (1006, CloseAction.RECONNECT),
        (1008, CloseAction.RECONNECT),
        (1009, CloseAction.STOP),
        (1011, CloseAction.RECONNECT),
        (1012, CloseAction.RECONNECT),
        (1013, CloseAction.RECONNECT),
        (3000, CloseAction.RECONNECT),
        (3999, CloseAction.RECONNECT),
        (4000, CloseAction.RECONNECT),
        (4001, CloseAction.RECONNECT_WITH_NEW_TOKEN),
        (4003, CloseAction.STOP),
        (4008, CloseAction.STOP),
        (4029, CloseAction.RECONNECT),
        (4100, CloseAction.RECONNECT),
        (4499, CloseAction.RECONNECT),
        (4500, CloseAction.STOP),
        (4501, CloseAction.STOP),
        (4999, CloseAction.STOP),
    ],
)
def test_close_code_table_follows_docs_protocol(code, action):
    assert close_action(code) is action


def test_backoff_is_exponential_with_full_jitter_and_capped():
    assert backoff_delay(1, 0.5, 20, random=lambda: 0.0) == 0.0
    ceilings = [backoff_delay(n, 0.5, 20, random=lambda: 1.0) for n in range(1, 10)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    assert backoff_delay(3, 0.5, 20, random=lambda: 0.5) == 1.0
    assert backoff_delay(10_000, 0.5, 20, random=lambda: 0.25) == 5.0  # no overflow
    for n in range(1, 20):
        d = backoff_delay(n, 0.5, 20)
        assert 0 <= d <= min(20, 0.5 * 2 ** (n - 1))


def test_tokens_are_hs256_jwts_with_the_hubs_claims():
    secret = "0123456789abcdef0123456789abcdef"
    token = make_token(secret, "ann", ttl=60, channels=["private:a*"], info={"nick": "Ann"}, issued_at=1000)
    head, payload, sig = token.split(".")

    def b64(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    assert json.loads(b64(head)) == {"alg": "HS256", "typ": "JWT"}
    claims = json.loads(b64(payload))
    assert claims["sub"] == "ann" and claims["iat"] == 1000
    assert claims["channels"] == ["private:a*"] and claims["info"] == {"nick": "Ann"}
    assert 0 < claims["exp"] - __import__("time").time() <= 61
    expected = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    assert b64(sig) == expected
    with pytest.raises(ValueError, match="at least 32"):
        make_token("short", "ann")
    with pytest.raises(ValueError, match="user"):
        make_token(secret, "")
    with pytest.raises(ValueError, match="ttl"):
        make_token(secret, "ann", ttl=0)


async def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="ws://"):
        Client("http://127.0.0.1/ws")
    with pytest.raises(ValueError, match="not both"):
        Client("ws://x/ws", token="a", token_provider=lambda: "b")
    with pytest.raises(ValueError, match="1 KiB"):
        Client("ws://x/ws", info={"x": "y" * 2000})
    with pytest.raises(TypeError, match="JSON"):
        Client("ws://x/ws", info={1, 2})
    with pytest.raises(ValueError, match="ping_timeout"):
        Client("ws://x/ws", ping_timeout=0)

    async def async_cb(_):  # pragma: no cover - never called
        pass

    client = Client("ws://127.0.0.1:9/ws")
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        client.subscribe("")
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        client.subscribe("x" * 256)
    with pytest.raises(TypeError, match="str"):
        client.subscribe(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="plain function"):
        client.subscribe("c", on_publication=async_cb)
    with pytest.raises(TypeError, match="since"):
        client.subscribe("c", since=5)  # type: ignore[arg-type]
    # Before connect(): requests cannot be sent.
    with pytest.raises(ClosedError, match="connect\\(\\) first"):
        await client.publish("c", 1)
    sub = client.subscribe("c", on_publication=lambda p: None)
    with pytest.raises(TypeError, match="on_publication"):
        sub.__aiter__()
    with pytest.raises(ServerError) as e:
        client.subscribe("c")
    assert e.value.code == ErrorCode.ALREADY_SUBSCRIBED
    await client.close()
    assert sub.ended and client.state == "stopped"
    with pytest.raises(ClosedError):
        await client.connect()

    with pytest.raises(ValueError, match="16 characters"):
        ApiClient("http://127.0.0.1:9", "short")
    with pytest.raises(ValueError, match="http"):
        ApiClient("ftp://127.0.0.1:9", "k" * 16)
    api = ApiClient("http://127.0.0.1:9", "k" * 16)
    with pytest.raises(ValueError, match="4000 to 4999"):
        await api.disconnect("ann", code=1000)
    with pytest.raises(ValueError, match="123 bytes"):
        await api.disconnect("ann", reason="x" * 124)
    with pytest.raises(ValueError, match="1 to 1000"):
        await api.broadcast([], 1)
    with pytest.raises(TypeError, match="JSON"):
        await api.publish("c", math.nan)
    with pytest.raises(ValueError, match="idempotency_key"):
        await api.publish("c", 1, idempotency_key="k" * 129)
    with pytest.raises(ValueError, match="limit"):
        await api.history("c", limit=10_001)
    with pytest.raises(ValueError, match="batch"):
        await api.batch([("batch", {})])
    with pytest.raises(ValueError, match="user"):
        await api.block_user("")
    await api.close()


# ---------------------------------------------------------------------------- scripted


async def test_duplicates_are_skipped_and_gaps_and_new_epochs_resubscribe_with_since():
    async with ScriptServer() as server:
        client = Client(server.url, **FAST)
        conn = await connected(server, client)
        sub = client.subscribe("c")
        req = await conn.expect("subscribe")
        assert "since" not in req
        await conn.reply(req, {"offset": 0, "epoch": "e"})
        await sub.ready(5)
        for offset in (1, 2, 2, 1, 5):  # repeats, then a jump to 5
            await conn.publication("c", offset, "e")
        unsub = await conn.expect("unsubscribe")
        await conn.reply(unsub, {})
        resub = await conn.expect("subscribe")
        assert resub["since"] == {"offset": 2, "epoch": "e"}
        pubs = [{"channel": "c", "offset": o, "epoch": "e", "data": o} for o in (3, 4, 5)]
        await conn.reply(resub, {"offset": 5, "epoch": "e", "recovered": True, "publications": pubs})
        await conn.publication("c", 5, "e")
        await conn.publication("c", 6, "e")
        # An epoch that changes under a live subscription: resubscribe, not recovered.
        await conn.publication("c", 1, "f")
        await conn.reply(await conn.expect("unsubscribe"), {})
        resub = await conn.expect("subscribe")
        assert resub["since"] == {"offset": 6, "epoch": "e"}
        await conn.reply(resub, {"offset": 10, "epoch": "f", "recovered": False, "publications": []})
        await conn.publication("c", 11, "f")
        got = []
        while len(got) < 8:
            item = await sub.get(timeout=5)
            if isinstance(item, Publication):
                got.append(f"{item.epoch}{item.offset}")
            else:
                assert isinstance(item, Unrecoverable)
                assert item.epoch_changed and item.since == StreamPosition(6, "e")
                got.append(f"lost, now {item.position.epoch}{item.position.offset}")
        assert got == ["e1", "e2", "e3", "e4", "e5", "e6", "lost, now f10", "f11"]
        assert sub.position == StreamPosition(11, "f")
        await client.close()


async def test_resubscribes_refused_for_a_while_are_tried_again_and_lose_nothing():
    """A resubscribe refused for a while (112 engine down, 107 over the subscribe rate)
    keeps the subscription and is tried again with the same since; a first subscribe
    refused that way fails for its caller."""
    async with ScriptServer() as server:
        errors = []
        client = Client(
            server.url,
            on_event=lambda e: errors.append(e.error) if type(e).__name__ == "ErrorEvent" else None,
            **FAST,
        )
        conn = await connected(server, client)
        sub = client.subscribe("c")
        await conn.reply(await conn.expect("subscribe"), {"offset": 0, "epoch": "e"})
        await sub.ready(5)
        await conn.publication("c", 1, "e")
        first = client.subscribe("d")
        await conn.error(await conn.expect("subscribe"), 112, "engine down")
        with pytest.raises(ServerError) as e:
            await first.ready(5)
        assert e.value.code == ErrorCode.UNAVAILABLE
        await conn.close(1012, "restart")
        conn = await server.next_conn()
        await conn.accept_connect()
        resub = await conn.expect("subscribe")
        assert resub["since"] == {"offset": 1, "epoch": "e"}
        await conn.error(resub, 112, "engine down")
        # Published meanwhile: not delivered before a subscribe succeeds.
        await conn.publication("c", 3, "e")
        resub = await conn.expect("subscribe")
        assert resub["since"] == {"offset": 1, "epoch": "e"}
        await conn.error(resub, 107, "slow down")
        resub = await conn.expect("subscribe")
        assert resub["since"] == {"offset": 1, "epoch": "e"}
        pubs = [{"channel": "c", "offset": o, "epoch": "e", "data": o} for o in (2, 3)]
        await conn.reply(resub, {"offset": 3, "epoch": "e", "recovered": True, "publications": pubs})
        await conn.publication("c", 4, "e")
        got = []
        while len(got) < 4:
            item = await sub.get(timeout=5)
            assert isinstance(item, Publication), item
            got.append(item.offset)
        assert got == [1, 2, 3, 4]
        refused = [x.code for x in errors if isinstance(x, ServerError) and "for now" in str(x)]
        assert refused == [112, 107]
        await client.close()


async def connected(server: ScriptServer, client: Client, **accept):
    """Starts the client and accepts its connection: the script's side of it."""
    task = asyncio.ensure_future(client.connect(timeout=5))
    conn = await server.next_conn()
    await conn.accept_connect(**accept)
    await task
    return conn


async def test_a_server_subscription_made_during_a_subscribe_is_taken_over_from_its_position():
    async with ScriptServer() as server:
        client = Client(server.url, **FAST)
        conn = await connected(server, client)
        sub = client.subscribe("user:ann")
        req = await conn.expect("subscribe")
        # The backend subscribed this connection first: a push, then our subscribe gets 106.
        await conn.send({"channel": "user:ann", "subscribed": {"offset": 4, "epoch": "e"}})
        await conn.error(req, 106, "already subscribed")
        await conn.reply(await conn.expect("unsubscribe"), {})
        resub = await conn.expect("subscribe")
        assert resub["since"] == {"offset": 4, "epoch": "e"}
        await conn.reply(resub, {"offset": 4, "epoch": "e", "recovered": True, "publications": []})
        await conn.publication("user:ann", 5, "e")
        await sub.ready(5)
        item = await sub.get(timeout=5)
        assert (item.offset, item.epoch) == (5, "e")
        assert client.subscription("user:ann") is sub and not sub.server_side
        await client.close()


async def test_requests_wait_for_the_connection_and_go_after_connect_and_subscriptions():
    async with ScriptServer() as server:
        events = []
        client = Client(server.url, on_event=events.append, **FAST)
        conn = await connected(server, client)
        sub = client.subscribe("c")
        req = await conn.expect("subscribe")
        await conn.reply(req, {"offset": 7, "epoch": "e"})
        await sub.ready(5)
        publish = asyncio.ensure_future(client.publish("c", "in flight"))
        await conn.expect("publish")
        await conn.close(1012, "restart")
        with pytest.raises(DisconnectedError, match="may or may not"):
            await asyncio.wait_for(publish, 5)
        # Made while reconnecting: queued, sent once connected, after connect and resubscribe.
        queued = asyncio.ensure_future(client.publish("c", "queued"))
        conn2 = await server.next_conn()
        first = await conn2.recv()
        assert first["op"] == "connect"
        await conn2.reply(first, {"client": "c-2", "user": None, "version": "tidewire.v1"})
        resub = await conn2.recv()
        assert resub["op"] == "subscribe" and resub["since"] == {"offset": 7, "epoch": "e"}
        pub = await conn2.recv()
        assert (pub["op"], pub["data"]) == ("publish", "queued")
        await conn2.reply(pub, {"offset": 8, "epoch": "e"})
        assert await asyncio.wait_for(queued, 5) == StreamPosition(8, "e")
        kinds = [type(e).__name__ for e in events if not type(e).__name__ == "ErrorEvent"]
        assert kinds[:4] == ["Connected", "Disconnected", "Reconnecting", "Connected"]
        lost = next(e for e in events if isinstance(e, Disconnected))
        assert (lost.code, lost.reason) == (1012, "restart")
        await client.close()


async def test_request_timeouts_and_late_replies():
    async with ScriptServer() as server:
        client = Client(server.url, request_timeout=0.3, **FAST)
        conn = await connected(server, client)
        with pytest.raises(RequestTimeout, match="no reply within 0.3 s"):
            await client.publish("c", 1)
        late = await conn.expect("publish")
        await conn.reply(late, {"offset": 1, "epoch": "e"})  # ignored
        ping = asyncio.ensure_future(client.ping(timeout=5))
        await conn.reply(await conn.expect("ping"), {})
        assert await ping >= 0
        # An error reply carries the protocol's code and message.
        hist = asyncio.ensure_future(client.history("nope:x", limit=5))
        req = await conn.expect("history")
        assert req["limit"] == 5
        await conn.error(req, 103, "unknown namespace nope")
        with pytest.raises(ServerError) as e:
            await hist
        assert (e.value.code, e.value.message) == (103, "unknown namespace nope")
        await client.close()


async def test_a_silent_connection_is_dropped_by_the_heartbeat_and_replaced():
    async with ScriptServer() as server:
        events = []
        client = Client(server.url, ping_interval=0.2, ping_timeout=0.3, on_event=events.append, **FAST)
        conn = await connected(server, client)
        ping = await conn.recv(5)
        assert ping["op"] == "ping"  # not answered: the connection counts as dead
        conn2 = await server.next_conn(5)
        await conn2.accept_connect(client="c-2")
        lost = [e for e in events if isinstance(e, Disconnected)]
        assert lost and lost[0].code is None and "ping_timeout" in lost[0].reason
        await asyncio.wait_for(_until(lambda: client.connection and client.connection.client == "c-2"), 5)
        await client.close()


async def test_a_connect_that_gets_no_reply_is_given_up_and_retried():
    async with ScriptServer() as server:
        events = []
        client = Client(server.url, on_event=events.append, initial_delay=0.05, max_delay=0.1, connect_timeout=0.3)
        task = asyncio.ensure_future(client.connect(timeout=10))
        conn = await server.next_conn()
        await conn.expect("connect")  # never answered
        conn2 = await server.next_conn(5)
        await conn2.accept_connect()
        await task
        lost = next(e for e in events if isinstance(e, Disconnected))
        assert lost.code is None and "connect_timeout" in lost.reason
        await client.close()


@pytest.mark.parametrize("code", [1000, 4003, 4008, 4500, 4501, 4999])
async def test_terminal_close_codes_stop_and_say_why(code):
    async with ScriptServer() as server:
        client = Client(server.url, **FAST)
        conn = await connected(server, client)
        sub = client.subscribe("c")
        await conn.reply(await conn.expect("subscribe"), {"offset": 0, "epoch": "e"})
        await sub.ready(5)
        await conn.close(code, f"reason {code}")
        stopped = await client.wait_stopped(5)
        assert (stopped.code, stopped.reason) == (code, f"reason {code}")
        assert stopped.error is not None and stopped.error.code == code
        with pytest.raises(ClosedError) as e:
            await sub.get(timeout=5)
        assert (e.value.code, e.value.reason) == (code, f"reason {code}")
        with pytest.raises(ClosedError) as e:
            await client.publish("c", 1)
        assert e.value.code == code
        await asyncio.sleep(0.3)
        assert server.count == 1  # no reconnection
        await client.close()


async def test_token_expiry_stops_a_fixed_token_and_reconnects_with_a_provider():
    async with ScriptServer() as server:
        client = Client(server.url, token="t1", **FAST)
        conn = await connected(server, client)
        await conn.close(4001, "token expired")
        stopped = await client.wait_stopped(5)
        assert stopped.code == 4001 and "no token_provider" in str(stopped.error)

        tokens = iter(["t-a", "t-b"])

        async def provider():
            return next(tokens)

        client = Client(server.url, token_provider=provider, **FAST)
        task = asyncio.ensure_future(client.connect(timeout=5))
        conn = await server.next_conn()
        assert (await conn.accept_connect())["token"] == "t-a"
        await task
        await conn.close(4001, "token expired")
        conn = await server.next_conn()
        assert (await conn.accept_connect())["token"] == "t-b"
        await client.close()


async def test_refused_handshakes_a_4xx_stops_a_503_is_retried():
    server = await http_refusal_server(403, "Forbidden")
    port = server.sockets[0].getsockname()[1]
    client = Client(f"ws://127.0.0.1:{port}/ws", **FAST)
    with pytest.raises(ClosedError) as e:
        await client.connect(timeout=5)
    assert e.value.http_status == 403 and server.hits["n"] == 1
    server.close()

    server = await http_refusal_server(503, "Service Unavailable", "Retry-After: 0\r\n")
    port = server.sockets[0].getsockname()[1]
    client = Client(f"ws://127.0.0.1:{port}/ws", max_attempts=2, **FAST)
    with pytest.raises(ClosedError, match="gave up after 2"):
        await client.connect(timeout=5)
    assert server.hits["n"] == 3
    server.close()


async def test_a_server_that_does_not_speak_tidewire_v1_stops_the_client():
    async with ScriptServer(subprotocols=[]) as server:
        client = Client(server.url, **FAST)
        with pytest.raises(ClosedError, match="did not select the tidewire.v1"):
            await client.connect(timeout=5)


async def test_oversized_requests_and_a_full_queue_are_refused_unsent():
    async with ScriptServer() as server:
        client = Client(server.url, max_message_size=1000, queue_size=1, **FAST)
        conn = await connected(server, client)
        with pytest.raises(MessageTooLargeError, match="max_message_size"):
            await client.publish("c", "x" * 1000)
        await conn.close(1012)
        # Not connected: one request waits, the next is refused.
        waiting = asyncio.ensure_future(client.publish("c", 1, timeout=5))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await client.publish("c", 2)
        conn = await server.next_conn()
        await conn.accept_connect()
        await conn.reply(await conn.expect("publish"), {"offset": 1, "epoch": "e"})
        assert (await waiting).offset == 1
        await client.close()


async def test_callbacks_get_publications_presence_and_their_failures_are_reported():
    async with ScriptServer() as server:
        errors, seen, joins = [], [], []
        client = Client(server.url, on_event=lambda e: errors.append(e) if type(e).__name__ == "ErrorEvent" else None, **FAST)
        conn = await connected(server, client)

        def on_pub(p):
            seen.append(p.offset)
            if p.offset == 2:
                raise RuntimeError("app bug")

        sub = client.subscribe("c", on_publication=on_pub, on_join=joins.append)
        await conn.reply(await conn.expect("subscribe"), {"offset": 0, "epoch": "e"})
        await sub.ready(5)
        await conn.send({"channel": "c", "join": {"client": "c-9", "user": "bob", "info": {"n": 1}}})
        for o in (1, 2, 3):
            await conn.publication("c", o, "e")
        await asyncio.wait_for(_until(lambda: len(seen) == 3), 5)
        assert seen == [1, 2, 3]
        assert joins[0].user == "bob" and joins[0].info == {"n": 1}
        assert any(isinstance(e.error, RuntimeError) for e in errors)
        await client.close()


async def _until(check, interval: float = 0.01):
    while not check():
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------- HTTP


class FakeApi:
    """An HTTP/1.1 server answering POST /api/* from a list of (status, headers, body),
    which closes each connection after ``per_connection`` responses (without saying so)."""

    def __init__(self, responses, per_connection=100, chunked=False):
        self.responses = list(responses)
        self.per_connection = per_connection
        self.chunked = chunked
        self.requests = []
        self.connections = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            for _ in range(self.per_connection):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
                body = await reader.readexactly(int(headers["content-length"]))
                self.requests.append((lines[0], headers, json.loads(body)))
                status, extra, payload = self.responses.pop(0)
                data = json.dumps(payload).encode()
                out = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                out += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                if self.chunked:
                    half = len(data) // 2
                    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (data[:half], data[half:]) if c)
                    writer.write(out.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
                else:
                    writer.write(out.encode() + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


OK_POS = (200, {}, {"offset": 1, "epoch": "e"})
BUSY = (503, {"Retry-After": "0"}, {"error": {"code": 112, "message": "engine timeout"}})


async def test_api_requests_carry_the_key_and_reuse_or_replace_kept_alive_connections():
    async with FakeApi([OK_POS] * 3, per_connection=1) as fake:
        async with ApiClient(fake.url + "/", "k" * 20) as api:
            for _ in range(3):
                assert await api.publish("c", {"x": 1}) == StreamPosition(1, "e")
        # Each reused connection had been closed by the server: the request went again
        # on a new one, once.
        assert fake.connections == 3 and len(fake.requests) == 3
        line, headers, body = fake.requests[0]
        assert line == "POST /api/publish HTTP/1.1"
        assert headers["authorization"] == "apikey " + "k" * 20
        assert headers["content-type"] == "application/json"
        assert body == {"channel": "c", "data": {"x": 1}}
    async with FakeApi([OK_POS] * 3, chunked=True) as fake:
        async with ApiClient(fake.url, "k" * 20) as api:
            for _ in range(3):
                assert (await api.publish("c", 1)).offset == 1
        assert fake.connections == 1  # kept alive


async def test_a_503_is_retried_after_retry_after_only_when_safe():
    async with FakeApi([BUSY, BUSY, OK_POS]) as fake:
        async with ApiClient(fake.url, "k" * 20, retries=2) as api:
            assert (await api.publish("c", 1, idempotency_key="x")).offset == 1
        assert len(fake.requests) == 3
    async with FakeApi([BUSY, OK_POS]) as fake:
        async with ApiClient(fake.url, "k" * 20, retries=2) as api:
            with pytest.raises(ApiError) as e:
                await api.publish("c", 1)
            assert (e.value.status, e.value.code, e.value.retry_after) == (503, 112, 0)
            assert e.value.message == "engine timeout"
        assert len(fake.requests) == 1
    async with FakeApi([BUSY, BUSY, BUSY]) as fake:
        async with ApiClient(fake.url, "k" * 20, retries=2) as api:
            with pytest.raises(ApiError):
                await api.presence("c")  # a read: retried, twice at most
        assert len(fake.requests) == 3
    async with FakeApi([BUSY, (200, {}, {})]) as fake:
        async with ApiClient(fake.url, "k" * 20, retry_unsafe=True) as api:
            await api.disconnect("ann")  # opted in
        assert len(fake.requests) == 2
    async with FakeApi([BUSY, (200, {}, {"replies": []})]) as fake:
        async with ApiClient(fake.url, "k" * 20) as api:
            with pytest.raises(ApiError):
                await api.batch([("presence", {"channel": "a"}), ("publish", {"channel": "a", "data": 1})])
        assert len(fake.requests) == 1  # an unkeyed publish inside: not retried


async def test_close_while_reconnecting_and_while_connected_is_prompt_and_clean():
    from conftest import free_port

    client = Client(f"ws://127.0.0.1:{free_port()}/ws", initial_delay=5, max_delay=5)
    stream = client.events()
    attempt = asyncio.ensure_future(client.connect())
    first = await stream.get(timeout=5)
    assert isinstance(first, Reconnecting) and "cannot connect" in first.reason
    start = asyncio.get_running_loop().time()
    await client.close()  # during the 5 s backoff
    assert asyncio.get_running_loop().time() - start < 2
    with pytest.raises(ClosedError, match="closed"):
        await asyncio.wait_for(attempt, 5)
    last = await stream.get(timeout=5)
    assert isinstance(last, Stopped) and last.error is None
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()

    async with ScriptServer() as server:
        client = Client(server.url, **FAST)
        conn = await connected(server, client)
        sub = client.subscribe("c")
        await conn.reply(await conn.expect("subscribe"), {"offset": 0, "epoch": "e"})
        await conn.publication("c", 1, "e")
        await asyncio.wait_for(_until(lambda: sub.position and sub.position.offset == 1), 5)
        start = asyncio.get_running_loop().time()
        await client.close()
        assert asyncio.get_running_loop().time() - start < 2
        await asyncio.wait_for(conn.ws.wait_closed(), 5)
        assert conn.ws.close_code == 1000
        # What was delivered before the close is still read, then the iteration ends.
        assert [p.offset async for p in sub] == [1]
        assert client.state == "stopped" and client.stopped.error is None
        await client.close()  # twice is fine
