"""The official Python SDK 2.x client, unmodified, on protocol 2026-07-28: `Client(URL)`, one
`tools/call`, then exit. Prints {"kind": "called", "tool", "result"} (or "error").

Usage: call.py URL TOOL [JSON_ARGUMENTS]
"""

import json
import sys

import anyio
from mcp import Client


def out(**fields) -> None:
    print(json.dumps(fields), flush=True)


async def main(url: str, tool: str, arguments: dict) -> None:
    async with Client(url) as client:
        try:
            result = await client.call_tool(tool, arguments)
            out(kind="called", tool=tool, result=result.model_dump(by_alias=True, mode="json", exclude_none=True))
        except Exception as e:  # printed for the test, which fails on it
            out(kind="called", tool=tool, error=repr(e))


if __name__ == "__main__":
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    anyio.run(main, sys.argv[1], sys.argv[2], args)
