"""Benchmark `sdk-bus`: publish→listener latency through the SDK bus adapters (clients/python,
clients/typescript) across two MCP server replicas, beside the SDK's in-memory bus on one replica.

Per case, an official Python SDK 2.x client listens (`Client.listen`, subscribed to every URI the
run publishes) on server replica 1; another calls the `stamp(uri)` tool on server replica 2 at a
fixed rate (10/s). `stamp` reads the system-wide monotonic clock just before it publishes
(`ctx.notify_resource_updated` / `handler.notify.resourceUpdated`) and answers it; the listener
reads the same clock when the event arrives: latency = arrival − publish start, per event. With the
adapters, replica 1's bus follows mcp-fanout A and replica 2's publishes to mcp-fanout B (one
Postgres): the path is HTTP publish → commit → NOTIFY → B's and A's log reads → A's GET stream → the
bus → the SDK's listen stream → the client. The baseline is one replica with the SDK's in-memory
bus (listener and publisher on the same server process). Every event must arrive exactly once.

Run from the repository root, after `cargo build --release` and `scripts/e2e-setup py2bus node2`:

    target/e2e/py2bus/bin/python bench/sdk_bus.py [--events 300] [--rate 10]

Postgres: DATABASE_URL if set, else a throwaway cluster from /usr/lib/postgresql/*/bin (as the
`postgres` user when run as root). Prints a Markdown table (the BENCHMARKS.md `sdk-bus` section).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from mcp import Client

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-sdk-bus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway cluster (initdb + postgres on a free port, trust auth), stopped on exit."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            sys.exit("no /usr/lib/postgresql/*/bin: set DATABASE_URL")
        self.bin = Path(bins[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="sdk-bus-bench-pg-"))
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        subprocess.run(
            [*self.as_user, str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.proc = subprocess.Popen(
            [
                *self.as_user,
                str(self.bin / "postgres"),
                "-D", str(data),
                "-p", str(self.port),
                "-k", str(self.dir),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "max_connections=200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    time.sleep(0.5)  # accepting; give startup a moment to finish recovery
                    return
            time.sleep(0.1)
        sys.exit("postgres did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def wait_http(url: str, timeout: float = 30) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    async with httpx2.AsyncClient(trust_env=False) as c:
        while time.monotonic() < deadline:
            try:
                if (await c.get(url)).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@asynccontextmanager
async def fanout(binary: str, db_url: str, schema: str):
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": db_url,
        "FANOUT_SCHEMA": schema,
        "FANOUT_ADMIN_TOKENS": TOKEN,
        "FANOUT_ADDR": f"127.0.0.1:{port}",
        "RUST_LOG": "warn",
    }
    proc = await asyncio.create_subprocess_exec(binary, env=env, stdout=asyncio.subprocess.DEVNULL)
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        await proc.wait()


@asynccontextmanager
async def mcp_server(sdk: str, fanout_url: str | None):
    env = {"PATH": os.environ.get("PATH", ""), "FANOUT_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    if fanout_url:
        env["FANOUT_URL"] = fanout_url
    flags = [] if fanout_url else ["--memory"]
    if sdk == "python":
        cmd = [sys.executable, str(REPO / "tests/e2e/py2bus/server.py"), *flags]
    else:
        cmd = ["node", str(REPO / "target/e2e/node2/server.mjs"), *flags]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        yield json.loads(line)["url"]
    finally:
        proc.kill()
        await proc.wait()


async def measure(listen_url: str, publish_url: str, events: int, rate: float) -> dict:
    uris = [f"bench://sdk-bus/{i}" for i in range(events)]
    arrived: dict[str, list[int]] = {}
    done = asyncio.Event()
    async with Client(listen_url) as listener, Client(publish_url) as caller:
        async with listener.listen(resource_subscriptions=uris) as sub:

            async def receive() -> None:
                async for event in sub:
                    arrived.setdefault(getattr(event, "uri", "?"), []).append(time.monotonic_ns())
                    if sum(len(v) for v in arrived.values()) >= events:
                        done.set()

            task = asyncio.create_task(receive())
            started: dict[str, int] = {}
            t_start = time.monotonic()
            for i, uri in enumerate(uris):
                delay = t_start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                result = await caller.call_tool("stamp", {"uri": uri})
                started[uri] = int(result.content[0].text)
            try:
                await asyncio.wait_for(done.wait(), 30)
            except TimeoutError:
                pass
            task.cancel()
    lat = sorted((arrived[u][0] - started[u]) / 1e6 for u in uris if u in arrived)
    missing = sum(1 for u in uris if u not in arrived)
    dups = sum(len(v) - 1 for v in arrived.values())
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return {
        "events": events,
        "delivered": len(lat),
        "missing": missing,
        "duplicates": dups,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": q[98] if lat else float("nan"),
        "max": lat[-1] if lat else float("nan"),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--bin", default=str(REPO / "target/release/mcp-fanout"))
    ap.add_argument("--sdk", choices=["python", "typescript", "both"], default="both")
    args = ap.parse_args()
    pg = None if os.environ.get("DATABASE_URL") else Postgres()
    db_url = os.environ.get("DATABASE_URL") or pg.url  # type: ignore[union-attr]
    rows = []
    try:
        sdks = ["python", "typescript"] if args.sdk == "both" else [args.sdk]
        for sdk in sdks:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            async with AsyncExitStack() as stack:
                a = await stack.enter_async_context(fanout(args.bin, db_url, schema))
                b = await stack.enter_async_context(fanout(args.bin, db_url, schema))
                s1 = await stack.enter_async_context(mcp_server(sdk, a))
                s2 = await stack.enter_async_context(mcp_server(sdk, b))
                r = await measure(s1, s2, args.events, args.rate)
                rows.append((f"{sdk} adapter, 2 server replicas, 2 mcp-fanout replicas", r))
            async with mcp_server(sdk, None) as s:
                r = await measure(s, s, args.events, args.rate)
                rows.append((f"{sdk} SDK in-memory bus, 1 server replica", r))
    finally:
        if pg is not None:
            pg.stop()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(
        f"\n`sdk-bus`, {args.events} events at {args.rate:g}/s per case, commit {commit.stdout.strip()}, "
        f"{platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )
    print("| case | events | delivered | missing | duplicates | lat_p50_ms | lat_p99_ms | lat_max_ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['events']} | {r['delivered']} | {r['missing']} | {r['duplicates']} "
            f"| {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
