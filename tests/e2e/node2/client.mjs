// The official TypeScript SDK 2.x client, unmodified, on protocol 2026-07-28: `connect` with
// `versionNegotiation: { mode: 'auto' }` (probes `server/discover`), then `client.listen(...)`, the
// `subscriptions/listen` stream. Prints one JSON line per thing the test awaits:
// {"kind": "connected", "protocol"}, {"kind": "ready", "honored"},
// {"kind": "event", "event", "uri"?} per change notification, {"kind": "closed", "how"}.
//
// Usage: client.mjs URL [--no-tools] [--uri URI]...
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const out = fields => process.stdout.write(JSON.stringify(fields) + '\n');
const [url, ...flags] = process.argv.slice(2);
const uris = flags.flatMap((f, i) => (f === '--uri' && flags[i + 1] ? [flags[i + 1]] : []));
const tools = !flags.includes('--no-tools');

const client = new Client({ name: 'e2e-ts2-client', version: '1.0.0' }, { versionNegotiation: { mode: 'auto' } });
client.setNotificationHandler('notifications/tools/list_changed', () => out({ kind: 'event', event: 'ToolsListChanged' }));
client.setNotificationHandler('notifications/resources/updated', n =>
    out({ kind: 'event', event: 'ResourceUpdated', uri: n.params?.uri })
);
await client.connect(new StreamableHTTPClientTransport(new URL(url)));
out({ kind: 'connected', protocol: client.getNegotiatedProtocolVersion?.() ?? null });
const filter = {};
if (tools) filter.toolsListChanged = true;
if (uris.length > 0) filter.resourceSubscriptions = uris;
const sub = await client.listen(filter);
out({ kind: 'ready', honored: sub.honoredFilter });
out({ kind: 'closed', how: await sub.closed });
