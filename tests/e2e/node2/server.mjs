// An MCP server written with the official TypeScript SDK 2.x (`createMcpHandler` on node's http
// server) whose `subscriptions/listen` streams are fanned out across replicas by `FanoutEventBus`
// (clients/typescript, installed with `npm install clients/typescript`), bound to the mcp-fanout
// replica(s) in FANOUT_URL (comma-separated) with the admin token FANOUT_TOKEN.
//
// Tools: `touch_tools()` publishes tools list_changed; `touch_resource({uri})` publishes
// resources/updated for `uri`; `stamp({uri})` is `touch_resource` answering the system-wide monotonic
// clock (ns) read just before the publish (bench/sdk_bus.py measures latency with it). Publish failures are printed as {"kind": "bus_error", "error"}.
// Prints {"url": "http://127.0.0.1:PORT/mcp"} once it accepts connections and its bus stream is open.
// With --memory it uses the SDK's in-memory bus instead (the one-replica baseline).
import http from 'node:http';

import { toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpHandler, McpServer } from '@modelcontextprotocol/server';
import { FanoutEventBus } from 'mcp-fanout';
import { z } from 'zod';

const out = fields => process.stdout.write(JSON.stringify(fields) + '\n');
const memory = process.argv.includes('--memory');

const bus = memory
    ? undefined
    : new FanoutEventBus({
          url: process.env.FANOUT_URL.split(','),
          token: process.env.FANOUT_TOKEN,
          onerror: e => out({ kind: 'bus_error', error: String(e) }),
          log: (level, message, fields) => process.stderr.write(`${level} ${message} ${JSON.stringify(fields)}\n`)
      });

let handler;
const factory = () => {
    const server = new McpServer(
        { name: 'e2e-ts-bus-server', version: '1.0.0' },
        // Resource subscriptions are honoured only when the server declares them.
        { capabilities: { resources: { subscribe: true } } }
    );
    server.registerTool('touch_tools', { description: 'Announce that the tool list changed.' }, async () => {
        handler.notify.toolsChanged();
        return { content: [{ type: 'text', text: 'published' }] };
    });
    server.registerTool(
        'touch_resource',
        { description: 'Announce that the resource at uri changed.', inputSchema: z.object({ uri: z.string() }) },
        async ({ uri }) => {
            handler.notify.resourceUpdated(uri);
            return { content: [{ type: 'text', text: 'published' }] };
        }
    );
    server.registerTool(
        'stamp',
        { description: 'Publish resources/updated for uri; answer when the publish began.', inputSchema: z.object({ uri: z.string() }) },
        async ({ uri }) => {
            const t0 = process.hrtime.bigint();
            handler.notify.resourceUpdated(uri);
            return { content: [{ type: 'text', text: String(t0) }] };
        }
    );
    return server;
};
handler = createMcpHandler(factory, bus ? { bus } : {});
const node = toNodeHandler(handler);
const srv = http.createServer((req, res) => {
    node(req, res).catch(e => {
        process.stderr.write(`handler error ${e}\n`);
    });
});
if (bus) await bus.start();
srv.listen(0, '127.0.0.1', () => {
    out({ url: `http://127.0.0.1:${srv.address().port}/mcp` });
});
