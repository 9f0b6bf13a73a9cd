#!/usr/bin/env python3
"""Run the interop SCENARIO (README.md) as a client with Python `websockets`.

Usage: py_client.py URL [--compression] [--step-timeout SECONDS]
Prints one line per step; exits 0 on success, 1 with a message otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import websockets  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

import scenario  # noqa: E402


class ScenarioError(Exception):
    pass


async def within(aw, timeout: float, what: str):
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise ScenarioError(f"timed out after {timeout:g} s: {what}") from None


def step(msg: str, t0: float) -> None:
    print(f"ok   {msg} ({(time.monotonic() - t0) * 1000:.0f} ms)", flush=True)


async def echo_step(ws, kind: str, payload, timeout: float) -> None:
    t0 = time.monotonic()
    n = len(payload.encode()) if isinstance(payload, str) else len(payload)
    await within(ws.send(payload), timeout, f"sending {kind} {n}")
    got = await within(ws.recv(), timeout, f"echo of {kind} {n}")
    if type(got) is not type(payload):
        raise ScenarioError(
            f"{kind} {n}: expected {type(payload).__name__} echo, got {scenario.describe(got)}"
        )
    if got != payload:
        a = payload.encode() if isinstance(payload, str) else payload
        b = got.encode() if isinstance(got, str) else got
        raise ScenarioError(
            f"{kind} {n}: echo differs: sent {len(a)} bytes, got {len(b)} bytes, "
            f"first difference at byte {scenario.first_difference(a, b)}"
        )
    step(f"{kind} {n} bytes echoed", t0)


async def run(url: str, compression: bool, timeout: float) -> None:
    t0 = time.monotonic()
    async with connect(
        url,
        compression="deflate" if compression else None,
        max_size=scenario.MAX_MESSAGE_SIZE,
        ping_interval=None,  # no keepalive pings interleaved with the scenario
        close_timeout=timeout,
        open_timeout=timeout,
        proxy=None,
    ) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "none")
        step(f"connected to {url} (websockets {websockets.__version__}, extensions: {ext})", t0)
        if not compression and ext != "none":
            raise ScenarioError(f"server negotiated extensions {ext!r} although none were offered")
        if compression and "permessage-deflate" not in ext:
            raise ScenarioError(f"permessage-deflate was offered but not negotiated (extensions: {ext})")

        for n in scenario.SIZES:
            await echo_step(ws, "text", scenario.text_payload(n), timeout)
        for n in scenario.SIZES:
            await echo_step(ws, "binary", scenario.binary_payload(n), timeout)

        t0 = time.monotonic()
        pong_waiter = await ws.ping(scenario.PING_PAYLOAD)
        # websockets resolves the waiter only on a pong carrying this payload.
        await within(pong_waiter, timeout, "pong")
        step(f"ping {scenario.PING_PAYLOAD!r} answered by pong with same payload", t0)

        t0 = time.monotonic()
        await within(ws.close(scenario.CLOSE_CODE, scenario.CLOSE_REASON), timeout, "close handshake")
        if ws.close_code != scenario.CLOSE_CODE:
            raise ScenarioError(
                f"close: expected code {scenario.CLOSE_CODE} back, got {ws.close_code} "
                f"(sent={ws.close_sent}, received={ws.close_rcvd})"
            )
        step(f"close {ws.close_code} handshake completed", t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("url")
    ap.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    ap.add_argument("--step-timeout", type=float, default=30.0)
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        asyncio.run(run(args.url, args.compression, args.step_timeout))
    except (ScenarioError, OSError, asyncio.TimeoutError, websockets.WebSocketException) as e:
        print(f"FAIL {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"done: scenario passed in {time.monotonic() - t0:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
