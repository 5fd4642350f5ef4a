"""FanoutSubscriptionBus against the real mcp-fanout binary (memory mode, started per test on a port
it binds itself, read from its log): own events once, resync as one event of each list kind,
failover, publish errors.

The binary: MCP_FANOUT_BIN, else target/debug/mcp-fanout of the repository. Run:
    MCP_FANOUT_BIN=target/debug/mcp-fanout python -m pytest clients/python/tests
(tests/sdk_bus_adapters.rs runs them in `cargo test`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx2
import pytest
from mcp.server.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)

from mcp_fanout import FanoutSubscriptionBus, PublishError

TOKEN = "py-bus-test-token"
BIN = os.environ.get("MCP_FANOUT_BIN") or str(Path(__file__).resolve().parents[3] / "target/debug/mcp-fanout")
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_url() -> str:
    """A URL on a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def listening_url(proc: subprocess.Popen[str]) -> str:
    """The public address the replica logs once bound (it binds port 0: a port chosen here first
    could be taken by another process before the replica binds it, and that one would answer)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        fields = entry.get("fields", {})
        if fields.get("message") == "listening" and fields.get("role") == "public":
            return f"http://{fields['addr']}"
    raise AssertionError(f"mcp-fanout exited ({proc.wait()}) before it listened")


def drain(stream: IO[str] | None) -> None:
    for _ in stream or ():
        pass


@pytest.fixture
def fanout() -> Iterator[str]:
    """A memory-mode mcp-fanout with an admin token; its base URL."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "FANOUT_ADDR": "127.0.0.1:0",
        "FANOUT_ADMIN_TOKENS": TOKEN,
        "FANOUT_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen([BIN], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = listening_url(proc)
    # Keep reading its log so that a full pipe never blocks it.
    threading.Thread(target=drain, args=(proc.stdout,), daemon=True).start()
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx2.get(f"{url}/readyz", trust_env=False).status_code == 200:
                break
        except httpx2.TransportError:
            pass
        assert time.monotonic() < deadline, "mcp-fanout did not become ready"
        time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait()


async def until(pred, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_own_events_reach_own_listeners_once_in_order(fanout: str) -> None:
    got: list[ServerEvent] = []
    async with FanoutSubscriptionBus(fanout, token=TOKEN) as bus:
        bus.subscribe(got.append)
        events = [ToolsListChanged(), ResourceUpdated(uri="file:///a"), PromptsListChanged(), ResourcesListChanged()]
        for e in events:
            await bus.publish(e)
        # One more as the barrier: log order means nothing earlier can still be on its way.
        await bus.publish(ResourceUpdated(uri="file:///end"))
        await until(lambda: ResourceUpdated(uri="file:///end") in got)
        assert got == [*events, ResourceUpdated(uri="file:///end")]


async def test_a_cursor_that_cannot_be_replayed_is_one_event_of_each_list_kind(fanout: str) -> None:
    got: list[ServerEvent] = []
    bus = FanoutSubscriptionBus(fanout, token=TOKEN)
    bus.cursor = "anotherlogepoch-42"  # e.g. a database restored elsewhere: another epoch
    bus.subscribe(got.append)
    async with bus:
        await until(lambda: len(got) >= 3)
        assert sorted(type(e).__name__ for e in got) == ["PromptsListChanged", "ResourcesListChanged", "ToolsListChanged"]
        # The cursor moved to the head: later events arrive once, with no second resync.
        await bus.publish(ResourceUpdated(uri="file:///after"))
        await until(lambda: len(got) >= 4)
        assert got[3:] == [ResourceUpdated(uri="file:///after")]


async def test_an_unreachable_first_url_fails_over_to_the_next(fanout: str) -> None:
    got: list[ServerEvent] = []
    async with FanoutSubscriptionBus([closed_url(), fanout], token=TOKEN, backoff_base=0.05) as bus:
        bus.subscribe(got.append)
        await bus.publish(ToolsListChanged())
        await until(lambda: len(got) >= 1)
        assert got == [ToolsListChanged()]


async def test_a_refused_publish_raises_at_once(fanout: str) -> None:
    async with FanoutSubscriptionBus(fanout, token="wrong-token", publish_deadline=30) as bus:
        started = time.monotonic()
        with pytest.raises(PublishError) as err:
            await bus.publish(ToolsListChanged())
        assert err.value.status == 401
        assert time.monotonic() - started < 5, "a 401 is not retried"


async def test_an_unreachable_publish_gives_up_at_its_deadline() -> None:
    bus = FanoutSubscriptionBus(closed_url(), token=TOKEN, publish_deadline=1.0, backoff_base=0.05)
    try:
        started = time.monotonic()
        with pytest.raises(PublishError) as err:
            await bus.publish(ToolsListChanged())
        elapsed = time.monotonic() - started
        assert err.value.status is None
        assert "gave up" in str(err.value)
        assert 0.3 < elapsed < 5, elapsed
    finally:
        await bus.aclose()


def test_it_is_constructible_without_an_event_loop() -> None:
    bus = FanoutSubscriptionBus("http://127.0.0.1:1", token=TOKEN)
    unsubscribe = bus.subscribe(lambda e: None)
    unsubscribe()
    unsubscribe()
    assert not bus.connected
