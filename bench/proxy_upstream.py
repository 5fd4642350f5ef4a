"""The upstream of `fanout-bench proxy-overhead`: a stateless MCP server from the official Python
SDK 1.x (`FastMCP(..., stateless_http=True, json_response=True)`) with one tool, `add(a, b)`,
served by uvicorn on a free loopback port (access log off, one process).

Prints one JSON line {"url": "http://127.0.0.1:PORT/mcp"} once it accepts connections. Run with
the venv `./scripts/e2e-setup py1` makes: target/e2e/py1/bin/python bench/proxy_upstream.py
"""

import json
import socket

import anyio
import uvicorn
from mcp.server.fastmcp import FastMCP


def main() -> None:
    mcp = FastMCP(
        "fanout-bench-upstream",
        stateless_http=True,
        json_response=True,
        log_level="WARNING",
    )

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by the accepted connections: uvicorn writes an answer's head and body in two
    # sends and sets no TCP_NODELAY itself here, so on a kept-alive connection the body would
    # wait for the ACK of the head, which the client delays by 40 ms (Nagle + delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        mcp.streamable_http_app(), log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            while not server.started:
                await anyio.sleep(0.01)
            print(json.dumps({"url": f"http://127.0.0.1:{port}/mcp"}), flush=True)

    anyio.run(run)


if __name__ == "__main__":
    main()
