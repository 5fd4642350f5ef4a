"""The official Python SDK 1.x client (legacy Streamable HTTP: initialize, then the GET stream),
unmodified, connected to URL. Prints one JSON line per thing the test awaits:

- {"kind": "get", "status", "last_event_id"}: a GET /mcp the SDK made (its Last-Event-ID header);
- {"kind": "sse", "id", "method"}: one SSE block of a GET body, as the wire carried it (its `id:`
  field, and the JSON-RPC method of its data; both null for a priming frame's data / no id);
- {"kind": "get_end"}: that GET's body ended;
- {"kind": "ready", "session", "protocol", "capabilities", "tools"}: initialized, tool list fetched;
- {"kind": "called", "result"}: with `--call`, the structured result of `tools/call add(2, 40)`
  (or {"kind": "called", "error"});
- {"kind": "notification", "message"}: a server notification the session's message handler got;
- {"kind": "error", "error"}: an exception the session surfaced.

The HTTP taps are an httpx transport wrapper handed to the SDK through its public `http_client`
argument; the SDK itself is untouched.
"""

import json
import sys

import anyio
import httpx
import mcp.types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


def out(**fields) -> None:
    print(json.dumps(fields), flush=True)


def sse_block(block: str) -> None:
    event_id, data = None, []
    for line in block.split("\n"):
        line = line.rstrip("\r")
        if line.startswith(":") or not line:
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)
    if event_id is None and not data:
        return  # a keep-alive comment or a bare retry: block
    method = None
    if data and "".join(data):
        try:
            method = json.loads("\n".join(data)).get("method")
        except ValueError:
            method = "<not json>"
    out(kind="sse", id=event_id, method=method)


class TapStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self):
        buf = ""
        async for chunk in self.inner:
            buf += chunk.decode("utf-8", "replace")
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                sse_block(block)
            yield chunk
        out(kind="get_end")

    async def aclose(self) -> None:
        await self.inner.aclose()


class Tap(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "GET":
            out(
                kind="get",
                status=response.status_code,
                last_event_id=request.headers.get("last-event-id"),
            )
            response.stream = TapStream(response.stream)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def on_message(message) -> None:
    if isinstance(message, Exception):
        out(kind="error", error=repr(message))
    elif isinstance(message, types.ServerNotification):
        out(kind="notification", message=message.root.model_dump(by_alias=True, mode="json", exclude_none=True))


async def main(url: str, call: bool) -> None:
    http = httpx.AsyncClient(transport=Tap(), timeout=httpx.Timeout(30, read=300))
    async with http:
        async with streamable_http_client(url, http_client=http) as (read, write, session_id):
            async with ClientSession(read, write, message_handler=on_message) as session:
                init = await session.initialize()
                tools = await session.list_tools()
                out(
                    kind="ready",
                    session=session_id(),
                    protocol=str(init.protocolVersion),
                    capabilities=init.capabilities.model_dump(by_alias=True, mode="json", exclude_none=True),
                    tools=sorted(t.name for t in tools.tools),
                )
                if call:
                    try:
                        result = await session.call_tool("add", {"a": 2, "b": 40})
                        out(kind="called", result=result.model_dump(by_alias=True, mode="json", exclude_none=True))
                    except Exception as e:  # printed for the test, which fails on it
                        out(kind="called", error=repr(e))
                await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], "--call" in sys.argv[2:])
