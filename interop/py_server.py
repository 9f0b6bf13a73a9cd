#!/usr/bin/env python3
"""Echo server with Python `websockets` for the interop SCENARIO (README.md).

Usage: py_server.py --port P [--host 127.0.0.1] [--compression]
Echoes every text and binary message with the same type; pings are answered
and close frames echoed (same code) by the library itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import websockets  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402

import scenario  # noqa: E402


async def echo(ws) -> None:
    try:
        async for msg in ws:
            await ws.send(msg)
    except websockets.ConnectionClosed:
        pass


async def run(host: str, port: int, compression: bool) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        echo,
        host,
        port,
        compression="deflate" if compression else None,
        max_size=scenario.MAX_MESSAGE_SIZE,
        ping_interval=None,
    ):
        print(
            f"py_server: websockets {websockets.__version__} echo listening on "
            f"ws://{host}:{port} (compression {'on' if compression else 'off'})",
            flush=True,
        )
        await stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--compression", action="store_true", help="accept permessage-deflate")
    args = ap.parse_args()
    asyncio.run(run(args.host, args.port, args.compression))
    return 0


if __name__ == "__main__":
    sys.exit(main())
