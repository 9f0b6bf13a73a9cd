"""tidewire.v1 against a real `tidewire serve` (memory engine): subscribe, publish,
history, presence, errors, resuming without loss or duplicate, server-side
subscriptions, terminal closes."""

from __future__ import annotations

import asyncio
import subprocess
from typing import List

import pytest

from conftest import SECRET, TIDEWIRE_BIN, Hub, eventually, unique
from tidewire import (
    Client,
    ClosedError,
    Connected,
    ErrorCode,
    Publication,
    ServerError,
    StreamPosition,
    SubscribedEvent,
    Unrecoverable,
)

FAST = dict(initial_delay=0.05, max_delay=0.2, connect_timeout=5.0)


async def test_subscribe_publish_history_presence(hub: Hub):
    ch = unique("chat:basic-")
    user = unique("ann-")
    joins, leaves = [], []
    async with Client(hub.ws_url, token=hub.token(user), info={"nick": "Ann"}, **FAST) as ann:
        assert ann.connection.user == user and ann.connection.version == "tidewire.v1"
        sub = ann.subscribe(ch)
        await sub
        assert sub.state == "subscribed" and sub.position.offset == 0
        async with Client(hub.ws_url, **FAST) as anon:
            assert anon.connection.user is None
            seen: List[Publication] = []
            watch = anon.subscribe(ch, on_publication=seen.append, on_join=joins.append, on_leave=leaves.append)
            await watch.ready(5)
            pos = await ann.publish(ch, {"text": "hi"})
            assert pos.offset == 1
            item = await sub.get(timeout=5)
            assert isinstance(item, Publication) and (item.channel, item.offset, item.data) == (ch, 1, {"text": "hi"})
            await eventually(lambda: seen, what="the callback's publication")
            assert seen[0] == item
            history = await anon.history(ch, limit=10)
            assert history.position == pos and [p.data for p in history.publications] == [{"text": "hi"}]
            people = await anon.presence(ch)
            assert sorted((p.user or "", p.info or {}) for p in people) == sorted([(user, {"nick": "Ann"}), ("", {})])
            await sub.unsubscribe()
            assert sub.ended
            left = await eventually(lambda: [c for c in leaves if c.user == user], what="ann's leave")
            assert left[0].client == ann.connection.client
        assert any(c.user is None for c in joins)  # anon's own join


async def test_server_errors_carry_code_and_message(hub: Hub):
    async with Client(hub.ws_url, token=hub.token(unique("err-")), **FAST) as client:
        sub = client.subscribe("nope:x")
        with pytest.raises(ServerError) as e:
            await sub.ready(5)
        assert e.value.code == ErrorCode.UNKNOWN_CHANNEL and "nope:x" in str(e.value)
        assert sub.ended and client.subscription("nope:x") is None
        with pytest.raises(ServerError) as e:
            await client.presence(unique("typing:"))
        assert e.value.code == ErrorCode.NOT_AVAILABLE
        with pytest.raises(ServerError) as e:
            await client.publish("live:ticks", 1)
        assert e.value.code == ErrorCode.PERMISSION_DENIED
        private = unique("private:room-")
        with pytest.raises(ServerError) as e:
            await client.subscribe(private)
        assert e.value.code == ErrorCode.PERMISSION_DENIED
    token = hub.token(unique("vip-"), channels=["private:room-*"])
    async with Client(hub.ws_url, token=token, **FAST) as vip:
        sub = await vip.subscribe(private)
        assert sub.state == "subscribed"


async def test_a_bad_token_stops_with_4008_and_the_reason(hub: Hub):
    client = Client(hub.ws_url, token=hub.token("x")[:-4] + "AAAA", **FAST)
    with pytest.raises(ClosedError) as e:
        await client.connect(timeout=10)
    assert e.value.code == 4008
    assert e.value.connect_error.code == ErrorCode.UNAUTHORIZED and "signature" in e.value.connect_error.message
    assert client.stopped.code == 4008


async def test_a_token_from_tidewire_gentoken_is_accepted(hub: Hub):
    token = subprocess.run(
        [TIDEWIRE_BIN, "gentoken", "--user", "from-cli", "--ttl", "5m", "--auth-hmac-secret", SECRET],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()
    async with Client(hub.ws_url, token=token, **FAST) as client:
        assert client.connection.user == "from-cli"


async def test_a_new_client_resumes_from_a_saved_position(hub: Hub):
    ch = unique("chat:saved-")
    async with hub.api() as api:
        for i in range(5):
            await api.publish(ch, i)
        async with Client(hub.ws_url, **FAST) as c:
            sub = await c.subscribe(ch)
            saved = sub.position
        for i in range(5, 9):
            await api.publish(ch, i)
        subscribed: List[SubscribedEvent] = []
        async with Client(hub.ws_url, **FAST) as c:
            sub = c.subscribe(ch, since=saved, on_subscribed=subscribed.append)
            got = [await sub.get(timeout=5) for _ in range(4)]
            assert [p.data for p in got] == [5, 6, 7, 8]
            assert subscribed[0].recovered is True and subscribed[0].recovered_count == 4


async def test_history_too_short_to_resume_gives_an_unrecoverable_item(hub: Hub):
    ch = unique("short:")  # keeps 3 publications
    async with hub.api() as api:
        first = await api.publish(ch, 0)
        for i in range(1, 10):
            await api.publish(ch, i)
        unrecoverable: List[Unrecoverable] = []
        async with Client(hub.ws_url, **FAST) as c:
            sub = c.subscribe(ch, since=first, on_unrecoverable=unrecoverable.append)
            item = await sub.get(timeout=5)
            assert isinstance(item, Unrecoverable)
            assert not item.epoch_changed and item.since == first and item.position.offset == 10
            assert unrecoverable == [item]
            await api.publish(ch, 10)
            nxt = await sub.get(timeout=5)
            assert (nxt.offset, nxt.data) == (11, 10)


async def test_a_slow_reader_falls_behind_and_catches_up_without_loss(hub: Hub):
    ch = unique("chat:slow-")
    async with hub.api() as api, Client(hub.ws_url, subscription_buffer=4, **FAST) as c:
        sub = await c.subscribe(ch)
        await asyncio.gather(*(api.publish(ch, i, idempotency_key=f"s{i}") for i in range(40)))
        got = [await sub.get(timeout=5) for _ in range(40)]
        assert [p.offset for p in got] == list(range(1, 41))
        assert sorted(p.data for p in got) == list(range(40))


async def test_a_server_side_subscription_is_kept_across_reconnects_until_the_server_ends_it(hub: Hub):
    user, ch = unique("srv-"), unique("user:feed-")
    made = []
    async with hub.api() as api:
        client = Client(hub.ws_url, token=hub.token(user), on_server_subscribe=made.append, **FAST)
        await client.connect(timeout=10)
        await api.subscribe(user, ch)
        sub = await eventually(lambda: client.subscription(ch), what="the subscribed push")
        assert made == [sub] and sub.server_side and sub.position.offset == 0
        await api.publish(ch, "a")
        assert (await sub.get(timeout=5)).data == "a"
        # Cut the connection; publish while it is down: resubscribed with since, nothing lost.
        reconnected = asyncio.get_running_loop().create_future()
        remove = client.add_listener(
            lambda e: reconnected.done() or isinstance(e, Connected) and reconnected.set_result(e)
        )
        await api.disconnect(user, code=4000, reason="cut")
        await api.publish(ch, "b")
        await api.publish(ch, "c")
        await asyncio.wait_for(reconnected, 10)
        remove()
        assert [(await sub.get(timeout=5)).data for _ in range(2)] == ["b", "c"]
        assert client.subscription(ch) is sub
        await api.publish(ch, "d")
        assert (await sub.get(timeout=5)).data == "d"
        # Ended by the server: not resubscribed after the next reconnect.
        await api.unsubscribe(user, ch)
        await eventually(lambda: sub.ended, what="the unsubscribed push")
        before = client.connection.client
        await api.disconnect(user, code=4000)
        await eventually(lambda: client.state == "connected" and client.connection.client != before, what="reconnect")
        await client.ping()
        assert client.subscription(ch) is None
        await client.close()


async def test_terminal_disconnect_stops_and_surfaces_code_and_reason(hub: Hub):
    user = unique("term-")
    async with hub.api() as api:
        client = Client(hub.ws_url, token=hub.token(user), **FAST)
        await client.connect(timeout=10)
        sub = await client.subscribe(unique("chat:t-"))
        reader = asyncio.ensure_future(sub.get(timeout=10))
        await api.disconnect(user, reason="logged out")
        with pytest.raises(ClosedError) as e:
            await reader
        assert (e.value.code, e.value.reason) == (4500, "logged out")
        stopped = await client.wait_stopped(5)
        assert (stopped.code, stopped.reason) == (4500, "logged out")
        with pytest.raises(ClosedError) as e:
            await client.publish("chat:x", 1)
        assert e.value.code == 4500 and "logged out" in str(e.value)
        assert client.state == "stopped"


async def test_resume_without_loss_or_duplicate_while_a_publisher_keeps_publishing(hub: Hub):
    """The subscriber's connection is cut three times (API disconnect, 4000: reconnect)
    while publications keep coming: it gets every one once, in order."""
    user, ch = unique("res-"), unique("chat:stream-")
    total = 300
    subscribed: List[SubscribedEvent] = []
    async with hub.api() as api:
        # The backoff's jitter at its ceiling: every reconnection waits 0.1 s, so
        # publications happen while the subscriber is away.
        client = Client(
            hub.ws_url, token=hub.token(user), initial_delay=0.1, max_delay=0.1, random=lambda: 1.0
        )
        await client.connect(timeout=10)
        sub = client.subscribe(ch, on_subscribed=subscribed.append)
        await sub.ready(5)

        async def publisher():
            for i in range(total):
                await api.publish(ch, i)
                await asyncio.sleep(0.004)

        async def cutter():
            for _ in range(3):
                await asyncio.sleep(0.3)
                await api.disconnect(user, code=4000, reason="cut")

        async def reader():
            got = []
            while len(got) < total:
                got.append(await sub.get(timeout=10))
            return got

        got, _, _ = await asyncio.gather(reader(), publisher(), cutter())
        assert all(isinstance(p, Publication) for p in got), [p for p in got if not isinstance(p, Publication)]
        assert [p.data for p in got] == list(range(total))
        assert [p.offset for p in got] == list(range(1, total + 1))
        # The last cut may come after the last publication: wait for its resubscription.
        resumed = await eventually(lambda: [e for e in subscribed if e.resubscribed][2:] and subscribed, what="3 resubscriptions")
        resumed = [e for e in resumed if e.resubscribed]
        assert all(e.recovered for e in resumed)
        assert sum(e.recovered_count for e in resumed) > 0
        await client.close()


async def test_a_restarted_memory_hub_has_a_new_epoch_the_client_says_so(own_hub):
    h: Hub = own_hub()
    ch = unique("chat:restart-")
    async with h.api() as api:
        await api.publish(ch, "before")
    client = Client(h.ws_url, **FAST)
    await client.connect(timeout=10)
    sub = await client.subscribe(ch)
    before = sub.position
    h.kill()
    h.start()
    item = await sub.get(timeout=15)
    assert isinstance(item, Unrecoverable) and item.epoch_changed and item.since == before
    async with h.api() as api:
        await api.publish(ch, "after")
    p = await sub.get(timeout=5)
    assert (p.data, p.epoch) == ("after", item.position.epoch)
    await client.close()
