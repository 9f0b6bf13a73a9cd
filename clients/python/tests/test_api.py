"""tidewire.api against a real `tidewire serve`: every method of docs/api.md, and what
the connections of the tidewire.v1 client see of it."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import API_KEY, Hub, eventually, free_port, unique
from tidewire import (
    ApiClient,
    ApiConnectionError,
    ApiError,
    Client,
    ClosedError,
    Connected,
    Disconnected,
    Publication,
    ServerSubscribed,
    ServerUnsubscribed,
    StreamPosition,
)

FAST = dict(initial_delay=0.05, max_delay=0.2, connect_timeout=5.0)


async def connect(hub: Hub, user: str, **kw) -> Client:
    client = Client(hub.ws_url, token=hub.token(user), **{**FAST, **kw})
    await client.connect(timeout=10)
    return client


async def test_publish_is_delivered_and_an_idempotency_key_publishes_once(hub: Hub):
    ch = unique("chat:pub-")
    async with hub.api() as api, Client(hub.ws_url, **FAST) as client:
        sub = await client.subscribe(ch)
        first = await api.publish(ch, {"n": 1}, idempotency_key="k-1")
        again = await api.publish(ch, {"n": 1}, idempotency_key="k-1")
        assert first == again and first.offset == 1
        second = await api.publish(ch, [1, "two", None])
        assert second == StreamPosition(2, first.epoch)
        items = [await sub.get(timeout=5), await sub.get(timeout=5)]
        assert [(p.offset, p.data) for p in items] == [(1, {"n": 1}), (2, [1, "two", None])]
        history = await api.history(ch)
        assert [p.data for p in history.publications] == [{"n": 1}, [1, "two", None]]


async def test_broadcast_answers_per_channel_in_order(hub: Hub):
    a, b = unique("chat:bc-a-"), unique("chat:bc-b-")
    async with hub.api() as api, Client(hub.ws_url, **FAST) as client:
        sub_a, sub_b = await client.subscribe(a), await client.subscribe(b)
        results = await api.broadcast([a, "$hub", b], {"hello": True}, idempotency_key="bc-1")
        assert [r.channel for r in results] == [a, "$hub", b]
        assert results[0].ok and results[0].position.offset == 1
        assert not results[1].ok and results[1].error.code == 103
        assert results[2].ok and results[2].position.offset == 1
        for sub in (sub_a, sub_b):
            p = await sub.get(timeout=5)
            assert p.data == {"hello": True}


async def test_server_side_subscribe_and_unsubscribe_reach_every_connection_of_the_user(hub: Hub):
    user, ch = unique("ann-"), unique("user:inbox-")
    events1, events2 = [], []
    async with hub.api() as api:
        c1 = await connect(hub, user, on_event=events1.append)
        c2 = await connect(hub, user, on_event=events2.append)
        await api.subscribe(user, ch)
        s1 = await eventually(lambda: c1.subscription(ch), what="the subscribed push on connection 1")
        s2 = await eventually(lambda: c2.subscription(ch), what="the subscribed push on connection 2")
        assert s1.server_side and s2.server_side
        assert any(isinstance(e, ServerSubscribed) and e.channel == ch for e in events1)
        await api.publish(ch, "for ann")
        assert (await s1.get(timeout=5)).data == "for ann"
        assert (await s2.get(timeout=5)).data == "for ann"
        # `client` narrows it to one connection.
        await api.unsubscribe(user, ch, client=c1.connection.client)
        await eventually(lambda: s1.ended, what="connection 1 unsubscribed")
        assert s1.end_reason == "unsubscribed by the server"
        assert any(isinstance(e, ServerUnsubscribed) and e.channel == ch for e in events1)
        assert not s2.ended
        with pytest.raises(StopAsyncIteration):
            await s1.get(timeout=5)
        await api.unsubscribe(user, ch)
        await eventually(lambda: s2.ended, what="connection 2 unsubscribed")
        await c1.close()
        await c2.close()


async def test_disconnect_with_a_reconnectable_code_and_one_client_only(hub: Hub):
    user = unique("dis-")
    e1, e2 = [], []
    async with hub.api() as api:
        c1 = await connect(hub, user, on_event=e1.append)
        c2 = await connect(hub, user, on_event=e2.append)
        await api.disconnect(user, client=c1.connection.client, code=4100, reason="move along")
        lost = await eventually(lambda: [e for e in e1 if isinstance(e, Disconnected)], what="disconnect")
        assert (lost[0].code, lost[0].reason) == (4100, "move along")
        # 4000-4499: the client reconnects by itself.
        await eventually(lambda: [e for e in e1 if isinstance(e, Connected)][1:], what="reconnected")
        assert c1.state == "connected"
        assert not [e for e in e2 if isinstance(e, Disconnected)]
        await c1.close()
        await c2.close()


async def test_refresh_moves_the_expiry_and_a_fixed_token_then_stops_with_4001(hub: Hub):
    user = unique("ref-")
    async with hub.api() as api:
        client = await connect(hub, user)
        await api.refresh(user, expire_at=time.time() + 1)
        stopped = await client.wait_stopped(15)
        assert stopped.code == 4001
        # A refresh without expire_at (never) is accepted as well.
        other = await connect(hub, user)
        await api.refresh(user, client=other.connection.client)
        await other.ping()
        await other.close()


async def test_presence_and_presence_stats(hub: Hub):
    ch = unique("chat:room-")
    ann, bob = unique("ann-"), unique("bob-")
    async with hub.api() as api:
        c1 = await connect(hub, ann, info={"nick": "Ann"})
        c2 = await connect(hub, ann)
        c3 = await connect(hub, bob)
        for c in (c1, c2, c3):
            await c.subscribe(ch)
        clients = await api.presence(ch)
        assert sorted(c.user for c in clients) == sorted([ann, ann, bob])
        assert {"nick": "Ann"} in [c.info for c in clients]
        stats = await api.presence_stats(ch)
        assert (stats.clients, stats.users) == (3, 2)
        with pytest.raises(ApiError) as e:
            await api.presence(unique("typing:"))
        assert (e.value.status, e.value.code) == (400, 110)
        for c in (c1, c2, c3):
            await c.close()


async def test_history_newest_since_and_history_remove(hub: Hub):
    ch = unique("chat:hist-")
    async with hub.api() as api:
        positions = [await api.publish(ch, i) for i in range(10)]
        epoch = positions[0].epoch
        newest = await api.history(ch, limit=3)
        assert [p.data for p in newest.publications] == [7, 8, 9]
        assert newest.position == StreamPosition(10, epoch)
        since = await api.history(ch, since=StreamPosition(6, epoch))
        assert [p.offset for p in since.publications] == [7, 8, 9, 10] and since.complete is True
        other_epoch = await api.history(ch, since={"offset": 6, "epoch": "not-this-one"})
        assert other_epoch.complete is False
        empty = await api.history(unique("chat:never-"))
        assert (empty.offset, empty.epoch, empty.publications) == (0, "", [])
        await api.history_remove(ch)
        after = await api.history(ch)
        assert after.publications == [] and after.position == StreamPosition(10, epoch)
        assert (await api.publish(ch, "next")).offset == 11


async def test_channels_with_a_pattern_and_info(hub: Hub):
    prefix = unique("chat:list-")
    async with hub.api() as api, Client(hub.ws_url, **FAST) as c1, Client(hub.ws_url, **FAST) as c2:
        await c1.subscribe(prefix + "-a")
        await c2.subscribe(prefix + "-a")
        await c2.subscribe(prefix + "-b")
        assert await api.channels(prefix + "*") == {prefix + "-a": 2, prefix + "-b": 1}
        assert prefix + "-a" in await api.channels()
        nodes = await api.info()
        assert len(nodes) == 1
        assert nodes[0].connections >= 2 and nodes[0].subscriptions >= 3 and nodes[0].version


async def test_block_user_closes_with_4501_and_refuses_until_unblocked(hub: Hub):
    user = unique("blocked-")
    async with hub.api() as api:
        client = await connect(hub, user)
        sub = await client.subscribe(unique("chat:b-"))
        await api.block_user(user)
        stopped = await client.wait_stopped(10)
        assert (stopped.code, stopped.reason) == (4501, "blocked")
        with pytest.raises(ClosedError) as e:
            await sub.get(timeout=5)
        assert e.value.code == 4501
        # Refused at connect while blocked: error 109, close 4501.
        again = Client(hub.ws_url, token=hub.token(user), **FAST)
        with pytest.raises(ClosedError) as e:
            await again.connect(timeout=10)
        assert e.value.code == 4501
        assert e.value.connect_error is not None and e.value.connect_error.code == 109
        await api.unblock_user(user)
        client = await connect(hub, user)
        await client.ping()
        await client.close()
        # A block with an end time in the past blocks nobody.
        await api.block_user(user, until=time.time() - 60)
        client = await connect(hub, user)
        await client.close()
        await api.unblock_user(user)


async def test_revoke_tokens_closes_with_4001_and_a_fresh_token_gets_in(hub: Hub):
    user = unique("rev-")
    tokens = [hub.token(user, issued_at=time.time() - 100)]
    made = []

    def provider():
        made.append(1)
        # A token issued after the revocation: `iat` is in whole seconds and the default
        # `before` revokes this second's tokens too, so the fresh one says the next second.
        return tokens.pop(0) if tokens else hub.token(user, issued_at=int(time.time()) + 1)

    events = []
    async with hub.api() as api:
        client = Client(hub.ws_url, token_provider=provider, on_event=events.append, **FAST)
        await client.connect(timeout=10)
        await api.revoke_tokens(user)
        await eventually(lambda: [e for e in events if isinstance(e, Connected)][1:], what="reconnected")
        lost = next(e for e in events if isinstance(e, Disconnected))
        assert lost.code == 4001
        assert len(made) == 2 and client.state == "connected"
        # A token issued before `before` is refused at connect (109, then close 4001).
        old = Client(hub.ws_url, token=hub.token(user, issued_at=time.time() - 100), **FAST)
        with pytest.raises(ClosedError) as e:
            await old.connect(timeout=10)
        assert e.value.code == 4001 and e.value.connect_error.code == 109
        await api.revoke_tokens(user, before=0)  # before the epoch: revokes nothing new
        await client.ping()
        await client.close()


async def test_batch_runs_commands_in_order_with_a_reply_each(hub: Hub):
    ch = unique("chat:batch-")
    async with hub.api() as api:
        replies = await api.batch(
            [
                ("publish", {"channel": ch, "data": 1, "idempotency_key": "b-1"}),
                {"method": "publish", "params": {"channel": ch, "data": 2}},
                ("presence", {"channel": unique("typing:")}),
                ("history", {"channel": ch}),
            ]
        )
        assert [r.ok for r in replies] == [True, True, False, True]
        assert replies[0].result["offset"] == 1 and replies[1].unwrap()["offset"] == 2
        assert replies[2].error.code == 110 and replies[2].error.status is None
        with pytest.raises(ApiError):
            replies[2].unwrap()
        assert [p["data"] for p in replies[3].result["publications"]] == [1, 2]


async def test_errors_carry_status_code_and_message(hub: Hub):
    async with ApiClient(hub.api_url, "wrong-key-0123456789") as bad:
        with pytest.raises(ApiError) as e:
            await bad.info()
        assert (e.value.status, e.value.code) == (401, 109)
    async with hub.api() as api:
        with pytest.raises(ApiError) as e:
            await api.call("no_such_method", {})
        assert (e.value.status, e.value.code) == (404, 102)
        with pytest.raises(ApiError) as e:
            await api.call("publish", {"channel": "x"})
        assert (e.value.status, e.value.code) == (400, 101) and "data" in e.value.message
        with pytest.raises(ApiError) as e:
            await api.publish("nope:x", 1)
        assert (e.value.status, e.value.code) == (400, 103)
        # Many calls reuse kept-alive connections (and survive the server closing idle ones).
        ch = unique("chat:many-")
        got = await asyncio.gather(*(api.publish(ch, i) for i in range(50)))
        assert sorted(p.offset for p in got) == list(range(1, 51))
    async with ApiClient(f"http://127.0.0.1:{free_port()}", API_KEY) as nowhere:
        with pytest.raises(ApiConnectionError, match="cannot reach"):
            await nowhere.info()
