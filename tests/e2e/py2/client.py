"""The official Python SDK 2.x client, unmodified, on protocol 2026-07-28: `Client(URL)` (which
probes `server/discover`), then `client.listen(...)` — the `subscriptions/listen` stream — and a
refetch of the tool list on every event. Prints one JSON line per thing the test awaits:

- {"kind": "connected", "protocol", "capabilities"};
- {"kind": "called", "result"}: with `--call`, the result of `tools/call add(2, 40)` (or "error");
- {"kind": "ready", "subscription", "honored"}: the stream was acknowledged;
- {"kind": "notification", "message"}: every server notification the session's message handler got
  (listen-stream frames are teed there, one per frame on the wire);
- {"kind": "event", "event"} then {"kind": "refetched", "tools"}: a typed event from the
  subscription iterator, and the tool list fetched after it;
- {"kind": "ended"} (graceful close) or {"kind": "lost", "error"} (SubscriptionLost);
- {"kind": "listen_unsupported", "error"}: the SDK refused to listen at the negotiated protocol
  version (an upstream that does not speak 2026-07-28);
- {"kind": "error", "error"}: an exception the session surfaced.

Usage: client.py URL [--prompts] [--resources] [--call] [--no-tools] [--uri URI | --uri=URI]...
  (also opt into prompts / resources list_changed; call a tool before listening; do not opt into
  tools list_changed; subscribe to `notifications/resources/updated` for URI — the event line
  then carries its "uri")
"""

import json
import sys

import anyio
from mcp import Client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost


def out(**fields) -> None:
    print(json.dumps(fields), flush=True)


def dump(model):
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


async def on_message(message) -> None:
    if isinstance(message, Exception):
        out(kind="error", error=repr(message))
    else:
        out(kind="notification", message=dump(message))


async def main(url: str, prompts: bool, resources: bool, call: bool, tools: bool, uris: list[str]) -> None:
    async with Client(url, message_handler=on_message) as client:
        out(kind="connected", protocol=client.protocol_version, capabilities=dump(client.server_capabilities))
        if call:
            try:
                out(kind="called", result=dump(await client.call_tool("add", {"a": 2, "b": 40})))
            except Exception as e:  # printed for the test, which fails on it
                out(kind="called", error=repr(e))
        try:
            async with client.listen(
                tools_list_changed=tools,
                prompts_list_changed=prompts,
                resources_list_changed=resources,
                resource_subscriptions=uris,
            ) as sub:
                out(kind="ready", subscription=sub.subscription_id, honored=dump(sub.honored))
                async for event in sub:
                    uri = getattr(event, "uri", None)
                    out(kind="event", event=type(event).__name__, **({"uri": uri} if uri is not None else {}))
                    tools = await client.list_tools()
                    out(kind="refetched", tools=sorted(t.name for t in tools.tools))
            out(kind="ended")
        except SubscriptionLost as e:
            out(kind="lost", error=repr(e))
        except ListenNotSupportedError as e:
            out(kind="listen_unsupported", error=str(e))


if __name__ == "__main__":
    flags = sys.argv[2:]
    uris = [flags[i + 1] for i, f in enumerate(flags[:-1]) if f == "--uri"]
    uris += [f.removeprefix("--uri=") for f in flags if f.startswith("--uri=")]
    anyio.run(
        main,
        sys.argv[1],
        "--prompts" in flags,
        "--resources" in flags,
        "--call" in flags,
        "--no-tools" not in flags,
        uris,
    )
