"""Fixtures: a real `tidewire serve` (TIDEWIRE_BIN, default the repository's release
build) on a free 127.0.0.1 port with an API key and an HS256 secret, and, for the Redis
tests, the test's own `redis-server` on a spare port (never the shared one on 6379)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, List, Optional

import pytest

from tidewire import ApiClient, make_token

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
TIDEWIRE_BIN = os.environ.get("TIDEWIRE_BIN") or str(PACKAGE / ".." / ".." / "target" / "release" / "tidewire")
API_KEY = "python-sdk-test-api-key-0123456789"
SECRET = "python-sdk-test-secret-0123456789abcdef0123456789"
LOG_DIR = Path(os.environ.get("TIDEWIRE_TEST_LOG_DIR", PACKAGE / ".logs"))

# Namespaces the tests use besides the embedded ones (default, chat, typing, board, live).
CONFIG = """
[namespaces.user]                  # server-side subscriptions (the API's subscribe)
history_size = 1000
history_ttl = "10m"
presence = false
publish = true
private = false

[namespaces.short]                 # history too short to resume from
history_size = 3
history_ttl = "10m"
presence = false
publish = true
private = false

[namespaces.private]               # needs a token whose channels claim lists the channel
history_size = 10
history_ttl = "10m"
presence = true
publish = true
private = true
"""

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test uses (channels and users are shared by a session's hub)."""
    return f"{prefix}{os.getpid()}-{next(_counter)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    """One `tidewire serve` process; stop() and start() again keep its port."""

    def __init__(self, name: str, *, engine: Optional[str] = None, extra: Optional[List[str]] = None) -> None:
        if not os.access(TIDEWIRE_BIN, os.X_OK):
            pytest.fail(f"no tidewire binary at {TIDEWIRE_BIN}: build it (cargo build --release -p tidewire-cli) or set TIDEWIRE_BIN")
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.engine = engine
        self.extra = extra or []
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.config = LOG_DIR / f"{name}.toml"
        self.config.write_text(CONFIG)
        self.log_path = LOG_DIR / f"{name}.log"
        self.log_path.write_text("")
        self.starts = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user: str, **kw: Any) -> str:
        return make_token(SECRET, user, **kw)

    def api(self, **kw: Any) -> ApiClient:
        return ApiClient(self.api_url, API_KEY, **kw)

    def start(self, timeout: float = 20.0) -> "Hub":
        assert self.proc is None
        self.starts += 1
        cmd = [
            TIDEWIRE_BIN, "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--config", str(self.config),
            "--no-demo",
            "--api-key", API_KEY,
            "--auth-hmac-secret", SECRET,
            "--auth-anonymous",
            "--publish-rate", "0",
            "--subscribe-rate", "0",
        ] + self.extra
        if self.engine:
            cmd += ["--engine", self.engine]
        offset = self.log_path.stat().st_size
        log = open(self.log_path, "ab")
        log.write(f"\n=== start {self.starts}: {' '.join(cmd)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        pattern = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)/")
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                m = pattern.search(f.read())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        pytest.fail(f"tidewire serve ({self.name}) did not start within {timeout} s:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Redis:
    """The test's own redis-server on a spare port, without persistence."""

    def __init__(self, name: str) -> None:
        self.bin = shutil.which("redis-server")
        if self.bin is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server): the Redis tests need it")
        self.port = free_port()
        self.name = name
        self.proc: Optional[subprocess.Popen] = None
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}.log"
        self.log_path.write_text("")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "Redis":
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.bin, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server on port {self.port} did not start:\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def hub() -> Iterator[Hub]:
    """A hub shared by the tests that do not stop it (memory engine)."""
    h = Hub("hub-shared").start()
    yield h
    h.stop()


@pytest.fixture
def own_hub(request: pytest.FixtureRequest) -> Iterator[Callable[..., Hub]]:
    """Makes hubs for one test (stopped at its end)."""
    made: List[Hub] = []

    def make(**kw: Any) -> Hub:
        h = Hub(f"hub-{request.node.name}-{len(made)}", **kw)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.kill()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> Iterator[Redis]:
    r = Redis(f"redis-{request.node.name}").start()
    yield r
    r.stop()


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
