"""A small MCP server written with the official Python SDK 1.x (FastMCP, Streamable HTTP).

Stateful sessions by default (the SDK's GET stream needs a session id); `--json-response` answers
POSTs with JSON instead of SSE; `--stateless` serves without sessions. It does NOT advertise
`tools.listChanged` (FastMCP's default: the proxy's rewrite has to), unless `--list-changed` (set
through the low-level server's `NotificationOptions`, FastMCP having no option for it).

Prints one JSON line `{"url": "http://127.0.0.1:PORT/mcp"}` once it accepts connections.
`POST /add-tool?name=NAME` adds a tool at run time (so a client's refetch can be told apart from
a cached list). The tool `gated(key)` logs a message to the caller, then waits until
`POST /release?key=KEY`: a client that sees the log message before the release knows the SSE
answer is being relayed as it is produced, not buffered.
"""

import argparse
import sys
from pathlib import Path

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.lowlevel.server import NotificationOptions
from starlette.requests import Request
from starlette.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_app import serve  # noqa: E402  (tests/e2e/serve_app.py)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--json-response", action="store_true")
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--list-changed", action="store_true")
    args = p.parse_args()

    mcp = FastMCP(
        "e2e-legacy-upstream",
        json_response=args.json_response,
        stateless_http=args.stateless,
        log_level="WARNING",
    )

    if args.list_changed:
        lowlevel = mcp._mcp_server
        options = lowlevel.create_initialization_options
        lowlevel.create_initialization_options = lambda *a, **k: options(
            NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True)
        )

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    gates: dict[str, anyio.Event] = {}

    def gate(key: str) -> anyio.Event:
        return gates.setdefault(key, anyio.Event())

    @mcp.tool()
    async def gated(key: str, ctx: Context) -> str:
        """Log a message, then wait until POST /release?key=KEY."""
        await ctx.info(f"waiting for {key}")
        await gate(key).wait()
        return f"released {key}"

    @mcp.custom_route("/release", methods=["POST"])
    async def release(request: Request) -> JSONResponse:
        key = request.query_params["key"]
        gate(key).set()
        del gates[key]  # the next call with this key waits again
        return JSONResponse({"released": key})

    @mcp.custom_route("/add-tool", methods=["POST"])
    async def add_tool(request: Request) -> JSONResponse:
        name = request.query_params["name"]

        def added() -> str:
            return name

        mcp.add_tool(added, name=name, description=f"added at run time: {name}")
        return JSONResponse({"added": name})

    serve(mcp.streamable_http_app())


if __name__ == "__main__":
    sys.exit(main())
