"""On the Redis engine (the test's own redis-server on a spare port): history outlives a
hub, so a client resumes across a hub killed and restarted without loss or duplicate;
and the server API's 503 with Retry-After while Redis is away."""

from __future__ import annotations

import asyncio
import time
from typing import List

from conftest import Hub, Redis, eventually, unique
from tidewire import (
    ApiConnectionError,
    ApiError,
    Client,
    Connected,
    Disconnected,
    Publication,
    SubscribedEvent,
)


async def publish_reliably(api, ch: str, data, key: str, deadline: float):
    """Publishes once, whatever happens to the hub meanwhile: the same idempotency key
    on every retry."""
    while True:
        try:
            return await api.publish(ch, data, idempotency_key=key)
        except (ApiConnectionError, ApiError) as e:
            if isinstance(e, ApiError) and e.status not in (None, 503):
                raise
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_resume_across_a_hub_killed_and_restarted_on_redis(own_hub, redis_server: Redis):
    h: Hub = own_hub(engine=redis_server.url)
    user, ch = unique("redis-"), unique("chat:durable-")
    total = 400
    events: List[object] = []
    subscribed: List[SubscribedEvent] = []
    client = Client(h.ws_url, token=h.token(user), initial_delay=0.05, max_delay=0.5, on_event=events.append)
    await client.connect(timeout=10)
    sub = client.subscribe(ch, on_subscribed=subscribed.append)
    await sub.ready(10)
    api = h.api(timeout=5)
    deadline = time.monotonic() + 60

    async def publisher():
        for i in range(total):
            await publish_reliably(api, ch, i, f"{ch}-{i}", deadline)
            await asyncio.sleep(0.003)

    async def faults():
        await eventually(lambda: sub.position.offset >= 100, 20, "100 publications")
        h.kill()  # SIGKILL: no close frame, the connection just drops
        await asyncio.sleep(0.3)
        await asyncio.get_running_loop().run_in_executor(None, h.start)
        await eventually(lambda: sub.position.offset >= 250, 20, "250 publications")
        await api.disconnect(user, code=4000, reason="cut")  # and a cut the client resumes from

    async def reader():
        got = []
        while len(got) < total:
            got.append(await sub.get(timeout=20))
        return got

    got, _, _ = await asyncio.gather(reader(), publisher(), faults())
    assert all(isinstance(p, Publication) for p in got), [p for p in got if not isinstance(p, Publication)]
    assert [p.data for p in got] == list(range(total))
    assert [p.offset for p in got] == list(range(1, total + 1))
    assert len({p.epoch for p in got}) == 1  # Redis kept the channel's history
    resumed = await eventually(lambda: [e for e in subscribed if e.resubscribed][1:], 10, "2 resubscriptions")
    assert all(e.recovered for e in resumed) and sum(e.recovered_count for e in resumed) > 0
    lost = [e for e in events if isinstance(e, Disconnected)]
    assert lost[0].code is None and 4000 in [e.code for e in lost[1:]]
    assert len([e for e in events if isinstance(e, Connected)]) >= 3
    await client.close()
    await api.close()


async def test_503_with_retry_after_is_retried_only_when_safe(own_hub, redis_server: Redis):
    h: Hub = own_hub(engine=redis_server.url)
    ch = unique("chat:unavailable-")
    api = h.api(timeout=15, retries=20, max_retry_delay=1)
    await api.publish(ch, "up")
    redis_server.stop()
    # Without an idempotency key a publish is not retried: it may have been applied.
    start = time.monotonic()
    try:
        await api.publish(ch, "no key")
        raise AssertionError("published while Redis is down")
    except ApiError as e:
        assert (e.status, e.code) == (503, 112) and e.retry_after == 1
    assert time.monotonic() - start < 14

    # With a key: retried after Retry-After until Redis is back (on the same port).
    async def restart_redis():
        await asyncio.sleep(1.5)
        await asyncio.get_running_loop().run_in_executor(None, redis_server.start)

    restart = asyncio.ensure_future(restart_redis())
    pos = await api.publish(ch, "with key", idempotency_key="503-1")
    await restart
    assert pos.offset >= 1
    history = await api.history(ch)
    assert [p.data for p in history.publications][-1] == "with key"
    assert (await api.publish(ch, "with key", idempotency_key="503-1")) == pos
    await api.close()
