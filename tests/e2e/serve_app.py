"""Serving an e2e MCP server's ASGI app (tests/e2e/py*/server.py) with uvicorn on a free loopback
port: prints one JSON line {"url": "http://127.0.0.1:PORT/mcp"} once it accepts connections (and
`before_url`, when given, has returned)."""

import json
import socket
from collections.abc import Awaitable, Callable

import anyio
import uvicorn


def serve(app, before_url: Callable[[], Awaitable[None]] | None = None) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            if before_url is not None:
                await before_url()
            while not server.started:
                await anyio.sleep(0.01)
            print(json.dumps({"url": f"http://127.0.0.1:{port}/mcp"}), flush=True)

    anyio.run(run)
