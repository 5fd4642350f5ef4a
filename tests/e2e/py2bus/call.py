"""Calls tools on an MCP server with the official Python SDK 2.x client, one after another:
`call.py URL TOOL[:JSON-ARGS]...`. Prints {"kind": "called", "tool", "result"} (or "error") per call.
"""

import json
import sys

import anyio
from mcp import Client


async def main(url: str, calls: list[str]) -> None:
    async with Client(url) as client:
        for call in calls:
            name, _, args = call.partition(":")
            try:
                result = await client.call_tool(name, json.loads(args) if args else {})
                dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
                print(json.dumps({"kind": "called", "tool": name, "result": dumped}), flush=True)
            except Exception as e:  # printed for the test, which fails on it
                print(json.dumps({"kind": "called", "tool": name, "error": repr(e)}), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2:])
