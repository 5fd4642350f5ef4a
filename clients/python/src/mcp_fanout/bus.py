"""`FanoutSubscriptionBus`: the official MCP Python SDK's `SubscriptionBus` over mcp-fanout.

Publishing is `POST /admin/publish` (an idempotency key per event, retried on connection errors
and 503 until a deadline). Receiving is one `GET /mcp` stream per bus, resumed with
`Last-Event-ID` after every disconnect, so what was published meanwhile still arrives, once, in
log order; the events go to this bus's listeners (the SDK's `subscriptions/listen` streams).
An event a replica publishes reaches its own listeners through mcp-fanout too, once: there is
no local shortcut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx2
from httpx2 import EventSource
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
    event_from_wire,
)

__all__ = ["FanoutSubscriptionBus", "PublishError"]

logger = logging.getLogger("mcp_fanout")

# The stream contract this bus reads: ids on every event, a priming frame and resync signalling
# (the three list_changed notifications) as served to this protocol version.
STREAM_PROTOCOL_VERSION = "2025-11-25"

_RETRYABLE_STATUS = frozenset({502, 503, 504})


class PublishError(Exception):
    """A publish mcp-fanout did not accept: refused (a 4xx, a 500), or not reachable before the
    deadline. `status` is the last HTTP status (None when no answer came)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def event_to_message(event: ServerEvent) -> dict[str, Any]:
    """The `POST /admin/publish` body of one SDK event."""
    if isinstance(event, ToolsListChanged):
        return {"method": "notifications/tools/list_changed"}
    if isinstance(event, PromptsListChanged):
        return {"method": "notifications/prompts/list_changed"}
    if isinstance(event, ResourcesListChanged):
        return {"method": "notifications/resources/list_changed"}
    if isinstance(event, ResourceUpdated):
        return {"method": "notifications/resources/updated", "params": {"uri": event.uri}}
    raise TypeError(f"not an MCP server event: {event!r}")


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter in [d/2, d]."""
    delay = min(cap, base * (2 ** min(attempt, 16)))
    return random.uniform(delay / 2, delay)


class FanoutSubscriptionBus:
    """A `mcp.server.subscriptions.SubscriptionBus` whose backend is mcp-fanout.

        server = MCPServer("x", subscriptions=FanoutSubscriptionBus(os.environ["FANOUT_URL"],
                                                                     token=os.environ["FANOUT_TOKEN"]))

    `url`: mcp-fanout's base URL (`http://fanout:8080`), or several (replicas without a load
    balancer: the bus fails over between them, in order). `token`: an admin token
    (`FANOUT_ADMIN_TOKENS`) for publishing. `publish_url`: where `/admin/publish` is served when
    it is not `url` (replicas with a separate `FANOUT_ADMIN_ADDR`). `headers`: extra headers of the `GET /mcp` stream (a
    subscriber credential when mcp-fanout requires one).

    Constructible with no running event loop; it starts on the asyncio loop where it is first
    used (`publish`, `subscribe` from a coroutine, `start()`), and is bound to that loop. Call
    `await bus.start()` at startup to be connected before the first listener comes (otherwise
    events published while its stream first connects reach no listener of this replica — the
    SDK's in-memory bus has none then either). `aclose()` or `async with` stops it.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        publish_url: str | Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        publish_deadline: float = 10.0,
        connect_timeout: float = 5.0,
        stall_timeout: float = 45.0,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("FanoutSubscriptionBus needs at least one mcp-fanout URL")
        self._urls = [u.rstrip("/") for u in urls]
        publish_urls = urls if publish_url is None else [publish_url] if isinstance(publish_url, str) else list(publish_url)
        if not publish_urls:
            raise ValueError("FanoutSubscriptionBus needs at least one publish URL")
        self._publish_urls = [u.rstrip("/") for u in publish_urls]
        self._token = token
        self._headers = dict(headers or {})
        self._publish_deadline = publish_deadline
        self._connect_timeout = connect_timeout
        # No bytes for this long (mcp-fanout sends a keep-alive every 15 s when idle): the stream
        # is dead, reconnect.
        self._stall_timeout = stall_timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._listeners: dict[object, Callable[[ServerEvent], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx2.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected: asyncio.Event | None = None
        self._closed = False
        self._stream_url = 0
        self._publish_url = 0
        self.cursor: str | None = None
        """The id of the last event (or priming frame) read: where the stream resumes."""

    # -- lifecycle ----------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("FanoutSubscriptionBus is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._client = httpx2.AsyncClient(
                timeout=httpx2.Timeout(self._stall_timeout, connect=self._connect_timeout),
                trust_env=False,
            )
            self._connected = asyncio.Event()
            self._task = loop.create_task(self._follow(), name="mcp-fanout bus stream")
        elif self._loop is not loop:
            raise RuntimeError("FanoutSubscriptionBus is bound to the event loop where it started")

    async def start(self, timeout: float | None = 30.0) -> None:
        """Starts the bus (if it has not) and waits until its stream is open."""
        self._ensure_started()
        assert self._connected is not None
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        """Whether the stream is open now."""
        return self._connected is not None and self._connected.is_set()

    async def aclose(self) -> None:
        """Stops the stream and releases the connections. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> FanoutSubscriptionBus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- SubscriptionBus ------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Registers `listener` (called on the bus's loop with every event from mcp-fanout) and
        returns an idempotent unsubscribe callable."""
        token = object()
        self._listeners[token] = listener
        try:
            self._ensure_started()
        except RuntimeError:
            # No running loop (or closed): registered; the stream starts on first async use.
            pass

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

    async def publish(self, event: ServerEvent) -> None:
        """Publishes `event` to every replica's listeners (this one's included, through
        mcp-fanout). Returns once mcp-fanout has committed it; raises `PublishError` when it
        refuses the event or cannot be reached within `publish_deadline` seconds."""
        await self.publish_message(event_to_message(event))

    async def publish_message(self, message: dict[str, Any]) -> str:
        """Publishes one `POST /admin/publish` body; returns its event id."""
        self._ensure_started()
        assert self._loop is not None and self._client is not None
        key = f"mcp-fanout-py-{uuid.uuid4().hex}"
        headers = {"Idempotency-Key": key}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        deadline = self._loop.time() + self._publish_deadline
        attempt = 0
        while True:
            base = self._publish_urls[self._publish_url]
            remaining = max(0.1, deadline - self._loop.time())
            status: int | None = None
            try:
                resp = await self._client.post(
                    f"{base}/admin/publish",
                    json=message,
                    headers=headers,
                    timeout=httpx2.Timeout(remaining, connect=min(remaining, self._connect_timeout)),
                )
                status = resp.status_code
                if status == 200:
                    return str(resp.json()["id"])
                why = f"{base} answered {status}: {resp.text[:300]}"
                if status not in _RETRYABLE_STATUS:
                    raise PublishError(f"mcp-fanout refused the event: {why}", status=status)
            except httpx2.TransportError as e:
                why = f"{base} unreachable: {e!r}"
            attempt += 1
            if len(self._publish_urls) > 1:
                self._publish_url = (self._publish_url + 1) % len(self._publish_urls)
            delay = _backoff(attempt, self._backoff_base, self._backoff_cap)
            if self._loop.time() + delay >= deadline:
                logger.error(
                    "publish failed: method=%s attempts=%d last=%s", message.get("method"), attempt, why
                )
                raise PublishError(
                    f"publish of {message.get('method')} gave up after {attempt} attempts "
                    f"({self._publish_deadline:g} s): {why}",
                    status=status,
                )
            logger.warning("publish retry: method=%s attempt=%d why=%s", message.get("method"), attempt, why)
            await asyncio.sleep(delay)

    # -- receive side ---------------------------------------------------------------------------

    def _dispatch(self, event: ServerEvent) -> None:
        for listener in list(self._listeners.values()):
            try:
                listener(event)
            except Exception:  # fan-out boundary: one bad listener must not starve the others
                logger.exception("subscription listener raised; continuing")

    async def _follow(self) -> None:
        """Keeps one `GET /mcp` stream open, forever (until `aclose`)."""
        assert self._client is not None and self._connected is not None
        attempt = 0
        while True:
            base = self._urls[self._stream_url]
            headers = {
                "Accept": "text/event-stream",
                "MCP-Protocol-Version": STREAM_PROTOCOL_VERSION,
                **self._headers,
            }
            if self.cursor is not None:
                headers["Last-Event-ID"] = self.cursor
            retry_ms: int | None = None
            failed = True
            try:
                async with self._client.stream("GET", f"{base}/mcp", headers=headers) as resp:
                    if resp.status_code != 200:
                        body = (await resp.aread())[:300]
                        raise _StreamRefused(f"{base}/mcp answered {resp.status_code}: {body!r}")
                    self._connected.set()
                    logger.info("stream open: url=%s resumed_from=%s", base, headers.get("Last-Event-ID"))
                    attempt = 0
                    async for sse in EventSource(resp):
                        if sse.retry is not None:
                            retry_ms = sse.retry
                        if sse.id:
                            self.cursor = sse.id
                        if sse.data:
                            self._on_data(sse.data)
                    failed = False
            except asyncio.CancelledError:
                raise
            except (httpx2.HTTPError, _StreamRefused) as e:
                logger.warning("stream lost: url=%s error=%r", base, e)
            finally:
                self._connected.clear()
            if failed:
                attempt += 1
                if len(self._urls) > 1:
                    self._stream_url = (self._stream_url + 1) % len(self._urls)
                delay = _backoff(attempt, self._backoff_base, self._backoff_cap)
            elif retry_ms is not None:
                # A clean end (shutdown, rebalancing, shedding): the server's hint, already spread.
                delay = retry_ms / 1000
            else:
                delay = _backoff(1, self._backoff_base, self._backoff_cap)
            logger.info("stream reconnect: in_secs=%.3f cursor=%s", delay, self.cursor)
            await asyncio.sleep(delay)

    def _on_data(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            logger.warning("stream frame is not JSON; skipped: %.200s", data)
            return
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            return
        params = message.get("params")
        event = event_from_wire(message["method"], params if isinstance(params, dict) else None)
        if event is not None:
            # A resync (a cursor mcp-fanout cannot replay exactly: pruned, another log) arrives
            # as the three list_changed notifications: one event of each list kind, a refetch.
            self._dispatch(event)


class _StreamRefused(Exception):
    pass
