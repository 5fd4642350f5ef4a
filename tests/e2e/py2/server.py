"""A small MCP server written with the official Python SDK 2.x (MCPServer, Streamable HTTP), which
speaks protocol 2026-07-28 (`server/discover`, no sessions) as well as the handshake era.

Prints one JSON line `{"url": "http://127.0.0.1:PORT/mcp"}` once it accepts connections.
`POST /add-tool?name=NAME` adds a tool at run time.
"""

import json
import socket
import sys

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse


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

    app = mcp.streamable_http_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            while not server.started:
                await anyio.sleep(0.01)
            print(json.dumps({"url": f"http://127.0.0.1:{port}/mcp"}), flush=True)

    anyio.run(serve)


if __name__ == "__main__":
    sys.exit(main())
