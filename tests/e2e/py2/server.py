"""A small MCP server written with the official Python SDK 2.x (MCPServer, Streamable HTTP), which
speaks protocol 2026-07-28 (`server/discover`, no sessions) as well as the handshake era.

Prints one JSON line `{"url": "http://127.0.0.1:PORT/mcp"}` once it accepts connections.
`POST /add-tool?name=NAME` adds a tool at run time.
"""

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_app import serve  # noqa: E402  (tests/e2e/serve_app.py)


def main() -> None:
    mcp = MCPServer("e2e-modern-upstream", log_level="WARNING")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

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
