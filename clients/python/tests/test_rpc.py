"""Client.rpc: a call to the application's backend through a real `tidewire serve`
(docs/backend.md), with a backend written for the test (the standard library's HTTP
server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List

import pytest

from conftest import CONFIG, Hub
from tidewire import Client, ServerError

FAST = dict(initial_delay=0.05, max_delay=0.2, connect_timeout=5.0)


class Backend(BaseHTTPRequestHandler):
    calls: List[Dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Backend.calls.append({"path": self.path, **body})
        if body.get("method") == "game:cheat":
            answer: Dict[str, Any] = {"error": {"code": 1409, "message": "not in this game"}}
        else:
            answer = {"result": {"data": {"rolled": [3, 5], "asked": body.get("data")}}}
        out = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def rpc_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    hub = Hub("hub-rpc", extra=["--backend-url", url])
    hub.config.write_text(CONFIG + "\n[namespaces.game]\nrpc_proxy = true\n")
    hub.start()
    yield hub
    hub.kill()
    server.shutdown()


async def test_rpc_round_trip_and_refusals(rpc_hub: Hub):
    async with Client(rpc_hub.ws_url, **FAST) as client:
        assert await client.rpc("game:roll", {"dice": 2}) == {"rolled": [3, 5], "asked": {"dice": 2}}
        assert Backend.calls[-1]["path"] == "/rpc"
        assert Backend.calls[-1]["method"] == "game:roll"
        assert await client.rpc("game:roll") == {"rolled": [3, 5], "asked": None}
        codes = []
        for method in ["game:cheat", "roll", "nope:roll"]:
            with pytest.raises(ServerError) as e:
                await client.rpc(method)
            codes.append(e.value.code)
        assert codes == [1409, 104, 103]
        with pytest.raises(ValueError):
            await client.rpc("")
