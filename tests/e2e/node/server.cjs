// A small MCP server written with the official TypeScript SDK (@modelcontextprotocol/sdk, pinned in
// package.json): the low-level `Server` behind `StreamableHTTPServerTransport` on node's own http
// server, as platforms run it. Advertises `tools.listChanged`.
//
//   node server.cjs              stateful: `sessionIdGenerator` set, one transport + server per
//                                session, kept in a map by session id (the SDK's documented pattern)
//   node server.cjs --stateless  stateless: `sessionIdGenerator: undefined`, a new transport + server
//                                for every request
//
// Prints one JSON line {"url": "http://127.0.0.1:PORT/mcp"} once it accepts connections.
// Tools: add(a, b), echo(text), and whoami (a JSON text: the session id, the `Authorization` its
// `initialize` carried, and the one of the current request); `POST /add-tool?name=NAME` adds a tool
// at run time (so a client's refetch can be told apart from a cached list); `POST /forget-sessions`
// drops every session (as a restart would) and answers how many sessions were ever initialized;
// `GET /sessions` answers the live sessions (id and handshake `Authorization`), how many were ever
// initialized and how many were ended by a `DELETE`.
// Run with NODE_PATH=<npm ci dir>/node_modules.
'use strict';

const http = require('node:http');
const { randomUUID } = require('node:crypto');
const { Server } = require('@modelcontextprotocol/sdk/server/index.js');
const { StreamableHTTPServerTransport } = require('@modelcontextprotocol/sdk/server/streamableHttp.js');
const {
  CallToolRequestSchema,
  ListToolsRequestSchema,
  isInitializeRequest,
} = require('@modelcontextprotocol/sdk/types.js');

const stateless = process.argv.includes('--stateless');
const added = [];

const intArgs = {
  type: 'object',
  properties: { a: { type: 'integer' }, b: { type: 'integer' } },
  required: ['a', 'b'],
};

function tools() {
  return [
    { name: 'add', description: 'Add two integers.', inputSchema: intArgs },
    { name: 'whoami', description: "The session's handshake credentials.", inputSchema: { type: 'object', properties: {} } },
    {
      name: 'echo',
      description: 'Return the text unchanged.',
      inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] },
    },
    ...added.map((name) => ({
      name,
      description: `added at run time: ${name}`,
      inputSchema: { type: 'object', properties: {} },
    })),
  ];
}

function text(value) {
  return { content: [{ type: 'text', text: String(value) }] };
}

function buildServer() {
  const server = new Server(
    { name: 'e2e-ts-upstream', version: '1.0.0' },
    { capabilities: { tools: { listChanged: true } } },
  );
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: tools() }));
  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const { name, arguments: args = {} } = req.params;
    if (name === 'add') return text(Number(args.a) + Number(args.b));
    if (name === 'whoami') {
      const headers = (extra.requestInfo && extra.requestInfo.headers) || {};
      return text(
        JSON.stringify({
          session: extra.sessionId || null,
          handshakeAuthorization: handshakeAuth.get(extra.sessionId) || null,
          requestAuthorization: headers.authorization || null,
        }),
      );
    }
    if (name === 'echo') return text(args.text);
    if (added.includes(name)) return text(name);
    return { content: [{ type: 'text', text: `unknown tool: ${name}` }], isError: true };
  });
  return server;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const sessions = new Map(); // stateful: session id -> transport
const handshakeAuth = new Map(); // stateful: session id -> the Authorization of its initialize
let initialized = 0; // sessions ever initialized
let deleted = 0; // sessions ended by a DELETE

async function handleMcp(req, res) {
  let body;
  if (req.method === 'POST') {
    const raw = await readBody(req);
    try {
      body = JSON.parse(raw);
    } catch {
      return reply(res, 400, { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } });
    }
  }
  if (stateless) {
    const server = buildServer();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      transport.close();
      server.close();
    });
    await server.connect(transport);
    return transport.handleRequest(req, res, body);
  }
  const sid = req.headers['mcp-session-id'];
  let transport = sid ? sessions.get(sid) : undefined;
  if (!transport) {
    if (sid || req.method !== 'POST' || !isInitializeRequest(body)) {
      const status = sid ? 404 : 400;
      const message = sid ? 'Session not found' : 'Bad Request: No valid session ID provided';
      return reply(res, status, { jsonrpc: '2.0', id: null, error: { code: -32000, message } });
    }
    const authorization = req.headers.authorization || null;
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        initialized += 1;
        sessions.set(id, transport);
        handshakeAuth.set(id, authorization);
      },
      onsessionclosed: () => {
        deleted += 1;
      },
    });
    transport.onclose = () => {
      if (transport.sessionId) {
        sessions.delete(transport.sessionId);
        handshakeAuth.delete(transport.sessionId);
      }
    };
    await buildServer().connect(transport);
  }
  return transport.handleRequest(req, res, body);
}

const httpServer = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const done = (p) =>
    p.catch((e) => {
      process.stderr.write(`request failed: ${e && e.stack ? e.stack : e}\n`);
      if (!res.headersSent) reply(res, 500, { error: String(e) });
    });
  if (url.pathname === '/mcp') return done(handleMcp(req, res));
  if (url.pathname === '/forget-sessions' && req.method === 'POST') {
    // As after a restart: every session unknown (their ids then get 404).
    const forgotten = [...sessions.values()];
    sessions.clear();
    forgotten.forEach((t) => t.close());
    return reply(res, 200, { forgotten: forgotten.length, initialized });
  }
  if (url.pathname === '/sessions' && req.method === 'GET') {
    const live = [...sessions.keys()].map((id) => ({ id, authorization: handshakeAuth.get(id) }));
    return reply(res, 200, { live, initialized, deleted });
  }
  if (url.pathname === '/add-tool' && req.method === 'POST') {
    const name = url.searchParams.get('name');
    if (name && !added.includes(name)) added.push(name);
    return reply(res, 200, { added: name });
  }
  return reply(res, 404, { error: 'not found' });
});

httpServer.listen(0, '127.0.0.1', () => {
  const { port } = httpServer.address();
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${port}/mcp` }) + '\n');
});
