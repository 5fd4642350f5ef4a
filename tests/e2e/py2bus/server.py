"""An MCP server written with the official Python SDK 2.x (`MCPServer`) whose `subscriptions/listen`
streams are fanned out across replicas by `mcp_fanout.FanoutSubscriptionBus` (clients/python),
bound to the mcp-fanout replica(s) in FANOUT_URL (comma-separated) with the admin token
FANOUT_TOKEN. The two lines a server adds are marked.

Tools: `touch_tools()` publishes tools list_changed; `touch_resource(uri)` publishes
resources/updated for `uri` (both through `ctx.notify_*`, awaited: an error reaches the caller);
`stamp(uri)` is `touch_resource` answering the system-wide monotonic clock (ns) read just before
the publish (bench/sdk_bus.py measures publish→listener latency with it).

Prints {"url": "http://127.0.0.1:PORT/mcp"} once it accepts connections and its bus stream is open.
With --memory it uses the SDK's in-memory bus instead (the one-replica baseline).
"""

import logging
import os
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer

from mcp_fanout import FanoutSubscriptionBus  # (1)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_app import serve  # noqa: E402  (tests/e2e/serve_app.py)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    memory = "--memory" in sys.argv[1:]
    bus = None
    if not memory:
        bus = FanoutSubscriptionBus(os.environ["FANOUT_URL"].split(","), token=os.environ.get("FANOUT_TOKEN"))
    mcp = MCPServer("e2e-bus-server", log_level="WARNING", subscriptions=bus)  # (2)

    @mcp.tool()
    async def touch_tools(ctx: Context) -> str:
        """Announce that the tool list changed."""
        await ctx.notify_tools_changed()
        return "published"

    @mcp.tool()
    async def touch_resource(uri: str, ctx: Context) -> str:
        """Announce that the resource at `uri` changed."""
        await ctx.notify_resource_updated(uri)
        return "published"

    @mcp.tool()
    async def stamp(uri: str, ctx: Context) -> str:
        """Publish resources/updated for `uri`; answer when (monotonic ns) the publish began."""
        t0 = time.monotonic_ns()
        await ctx.notify_resource_updated(uri)
        return str(t0)

    async def bus_connected() -> None:
        if bus is not None:
            await bus.start()

    serve(mcp.streamable_http_app(), before_url=bus_connected)


if __name__ == "__main__":
    sys.exit(main())
