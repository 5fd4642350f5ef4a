// FanoutEventBus against the real mcp-fanout binary (memory mode, started per test on a port it
// binds itself, read from its log): own events once and in order, resync as one event of each list
// kind, failover, publish errors reported to `onerror`, close() flushing the queue.
//
// The binary: MCP_FANOUT_BIN, else target/debug/mcp-fanout of the repository. Needs dist/ (npm
// install builds it). Run: MCP_FANOUT_BIN=target/debug/mcp-fanout node --test clients/typescript/test/
// (tests/sdk_bus_adapters.rs runs them in `cargo test`).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { FanoutEventBus, PublishError } from '../dist/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.MCP_FANOUT_BIN || join(here, '../../../target/debug/mcp-fanout');
const TOKEN = 'ts-bus-test-token';

function freePort() {
    return new Promise((resolve, reject) => {
        const s = createServer();
        s.on('error', reject);
        s.listen(0, '127.0.0.1', () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
    });
}

async function until(pred, what, timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
        assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
        await new Promise(r => setTimeout(r, 10));
    }
}

/**
 * The public address the replica logs once bound. It binds port 0: a port chosen here first could
 * be taken by another process before the replica binds it, and that one would answer.
 */
function listeningUrl(child) {
    return new Promise((resolve, reject) => {
        const lines = createInterface({ input: child.stdout });
        lines.on('line', line => {
            let fields;
            try {
                fields = JSON.parse(line).fields ?? {};
            } catch {
                return;
            }
            if (fields.message === 'listening' && fields.role === 'public') resolve(`http://${fields.addr}`);
        });
        child.on('exit', code => reject(new Error(`mcp-fanout exited (${code}) before it listened`)));
    });
}

/** A memory-mode mcp-fanout with an admin token, killed after the test; its base URL. */
async function startFanout(t) {
    const child = spawn(BIN, [], {
        env: {
            PATH: process.env.PATH,
            FANOUT_ADDR: '127.0.0.1:0',
            FANOUT_ADMIN_TOKENS: TOKEN,
            FANOUT_LOG_FORMAT: 'json'
        },
        stdio: ['ignore', 'pipe', 'ignore']
    });
    t.after(() => child.kill('SIGKILL'));
    const url = await listeningUrl(child);
    const deadline = Date.now() + 20_000;
    for (;;) {
        const ok = await fetch(`${url}/readyz`).then(
            r => r.status === 200,
            () => false
        );
        if (ok) return url;
        assert.ok(Date.now() < deadline, 'mcp-fanout did not become ready');
        await new Promise(r => setTimeout(r, 50));
    }
}

const closedUrl = async () => `http://127.0.0.1:${await freePort()}`;

test('own events reach own listeners once, in order; close() flushes the queue', async t => {
    const url = await startFanout(t);
    const errors = [];
    const bus = new FanoutEventBus({ url, token: TOKEN, onerror: e => errors.push(e) });
    const got = [];
    const unsubscribe = bus.subscribe(e => got.push(e));
    await bus.start();
    const events = [
        { kind: 'tools_list_changed' },
        { kind: 'resource_updated', uri: 'file:///a' },
        { kind: 'prompts_list_changed' },
        { kind: 'resources_list_changed' },
        { kind: 'resource_updated', uri: 'file:///end' }
    ];
    for (const e of events) bus.publish(e);
    await until(() => got.some(e => e.uri === 'file:///end'), 'the last event');
    assert.deepEqual(got, events);
    unsubscribe();
    unsubscribe();
    assert.deepEqual(errors, []);
    await bus.close();
});

test('a cursor that cannot be replayed is one event of each list kind', async t => {
    const url = await startFanout(t);
    const bus = new FanoutEventBus({ url, token: TOKEN });
    bus.cursor = 'anotherlogepoch-42';
    const got = [];
    bus.subscribe(e => got.push(e));
    await bus.start();
    await until(() => got.length >= 3, 'the resync');
    assert.deepEqual(got.map(e => e.kind).sort(), ['prompts_list_changed', 'resources_list_changed', 'tools_list_changed']);
    bus.publish({ kind: 'resource_updated', uri: 'file:///after' });
    await until(() => got.length >= 4, 'the event after the resync');
    assert.deepEqual(got.slice(3), [{ kind: 'resource_updated', uri: 'file:///after' }]);
    await bus.close();
});

test('an unreachable first URL fails over to the next', async t => {
    const url = await startFanout(t);
    const bus = new FanoutEventBus({ url: [await closedUrl(), url], token: TOKEN, backoffBaseMs: 50 });
    const got = [];
    bus.subscribe(e => got.push(e));
    await bus.start();
    bus.publish({ kind: 'tools_list_changed' });
    await until(() => got.length >= 1, 'the event');
    assert.deepEqual(got, [{ kind: 'tools_list_changed' }]);
    await bus.close();
});

test('a refused publish is reported at once; an unreachable one at its deadline', async t => {
    const url = await startFanout(t);
    const errors = [];
    const refused = new FanoutEventBus({ url, token: 'wrong', publishDeadlineMs: 30_000, onerror: e => errors.push(e) });
    const started = Date.now();
    refused.publish({ kind: 'tools_list_changed' });
    await refused.close();
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof PublishError);
    assert.equal(errors[0].status, 401);
    assert.ok(Date.now() - started < 5_000, 'a 401 is not retried');

    const lost = [];
    const unreachable = new FanoutEventBus({
        url: await closedUrl(),
        token: TOKEN,
        publishDeadlineMs: 1_000,
        backoffBaseMs: 50,
        onerror: e => lost.push(e)
    });
    const t0 = Date.now();
    unreachable.publish({ kind: 'resource_updated', uri: 'file:///x' });
    await unreachable.close();
    const elapsed = Date.now() - t0;
    assert.equal(lost.length, 1);
    assert.ok(lost[0] instanceof PublishError);
    assert.equal(lost[0].status, undefined);
    assert.deepEqual(lost[0].event, { kind: 'resource_updated', uri: 'file:///x' });
    assert.ok(elapsed > 300 && elapsed < 5_000, `gave up after ${elapsed} ms`);
});
