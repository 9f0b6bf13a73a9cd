#!/usr/bin/env python3
"""Python `websockets` echo server for benches/compare.sh.

    .venv/bin/python echo.py --port P [--host 127.0.0.1] [--compression]

Echoes every text and binary message back unchanged (same type); websockets answers pings
and closes itself. One asyncio event loop (the default one), TCP_NODELAY on (asyncio sets
it on TCP transports). --compression: compression="deflate", i.e. websockets' default
permessage-deflate settings (server_max_window_bits=12, client_max_window_bits=12 when the
client offers it, memLevel 5, context takeover kept); without it compression=None.
Messages up to 64 MiB.
"""
import argparse
import asyncio
import signal
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    try:
        async for msg in ws:
            await ws.send(msg)
    except Exception:
        pass


async def main():
    p = argparse.ArgumentParser(description="websockets echo server (compare.sh peer)")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--compression", action="store_true", help="permessage-deflate with websockets defaults")
    a = p.parse_args()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(
        echo,
        a.host,
        a.port,
        compression="deflate" if a.compression else None,
        max_size=64 * 1024 * 1024,
        ping_interval=None,
        backlog=4096,
    ):
        print(f"echo-python-websockets: listening on {a.host}:{a.port} "
              f"(permessage-deflate {'on' if a.compression else 'off'})", file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
