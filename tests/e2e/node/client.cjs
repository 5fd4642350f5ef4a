// The official TypeScript SDK client (@modelcontextprotocol/sdk, pinned in package.json),
// unmodified, connected to process.argv[2] over Streamable HTTP, with a `listChanged` handler for
// tools (debounce off, so every notification is one refetch). Prints one JSON line per thing the
// test awaits:
//   {"kind":"get","status","last_event_id"}  a GET /mcp the SDK made (its Last-Event-ID header)
//   {"kind":"sse","id","method"}             one SSE block of a GET body as the wire carried it
//                                            (its id: field; the JSON-RPC method of its data)
//   {"kind":"get_end"}                       that GET's body ended cleanly
//   {"kind":"ready","session","protocol","capabilities","tools"}
//   {"kind":"notification","message"}        a server notification the transport delivered
//   {"kind":"refetched","tools"|"error"}     the SDK's listChanged handler ran (after its refetch)
//   {"kind":"called","result"|"error"}       with --call: the result of tools/call add(2, 40)
//   {"kind":"error","error"}                 client.onerror
// The taps use only public options: a `fetch` wrapper passed to the transport, and a wrapper
// around transport.onmessage installed after connect.
// Run with NODE_PATH=<npm ci dir>/node_modules.
'use strict';

const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');

const out = (fields) => process.stdout.write(JSON.stringify(fields) + '\n');

function sseBlock(block) {
  let id = null;
  const data = [];
  for (const raw of block.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'id') id = value;
    else if (name === 'data') data.push(value);
  }
  if (id === null && data.length === 0) return; // keep-alive comment or bare retry: block
  let method = null;
  if (data.join('') !== '') {
    try {
      method = JSON.parse(data.join('\n')).method ?? null;
    } catch {
      method = '<not json>';
    }
  }
  out({ kind: 'sse', id, method });
}

async function tapFetch(input, init) {
  const method = (init && init.method) || 'GET';
  const lastEventId = new Headers(init && init.headers).get('last-event-id');
  const res = await fetch(input, init);
  if (method !== 'GET') {
    return res;
  }
  out({ kind: 'get', status: res.status, last_event_id: lastEventId });
  if (!res.body) {
    return res;
  }
  const decoder = new TextDecoder();
  let buf = '';
  const body = res.body.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        buf += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          sseBlock(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
        controller.enqueue(chunk);
      },
      flush() {
        out({ kind: 'get_end' });
      },
    }),
  );
  return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
}

async function main() {
  const url = new URL(process.argv[2]);
  const client = new Client(
    { name: 'mcp-fanout-e2e-ts', version: '1.0.0' },
    {
      listChanged: {
        tools: {
          debounceMs: 0,
          onChanged: (error, tools) => {
            if (error) {
              out({ kind: 'refetched', error: String(error) });
            } else {
              out({ kind: 'refetched', tools: tools.map((t) => t.name).sort() });
            }
          },
        },
      },
    },
  );
  client.onerror = (e) => out({ kind: 'error', error: String(e) });
  const transport = new StreamableHTTPClientTransport(url, { fetch: tapFetch });
  await client.connect(transport);
  const deliver = transport.onmessage;
  transport.onmessage = (message, extra) => {
    if (message && typeof message.method === 'string' && message.id === undefined) {
      out({ kind: 'notification', message });
    }
    if (deliver) {
      deliver(message, extra);
    }
  };
  const tools = await client.listTools();
  out({
    kind: 'ready',
    session: transport.sessionId,
    protocol: transport.protocolVersion,
    capabilities: client.getServerCapabilities(),
    tools: tools.tools.map((t) => t.name).sort(),
  });
  if (process.argv.includes('--call')) {
    try {
      out({ kind: 'called', result: await client.callTool({ name: 'add', arguments: { a: 2, b: 40 } }) });
    } catch (e) {
      out({ kind: 'called', error: String(e) });
    }
  }
}

main().catch((e) => {
  out({ kind: 'fatal', error: String(e && e.stack ? e.stack : e) });
  process.exit(1);
});
