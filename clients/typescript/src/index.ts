/**
 * `FanoutEventBus`: mcp-fanout as the cross-replica `ServerEventBus` of the official MCP
 * TypeScript SDK 2.x (`createMcpHandler({ bus })`).
 *
 * Publishing is `POST /admin/publish`, queued and sent in order in the background (the interface's
 * `publish` is synchronous) with an idempotency key per event, retried on connection errors and
 * 502/503/504 until a deadline; a failure goes to `onerror`. Receiving is one `GET /mcp` stream per
 * bus, resumed with `Last-Event-ID` after every disconnect, so what was published meanwhile still
 * arrives, once, in log order. An event a replica publishes reaches its own listeners through
 * mcp-fanout too, once: there is no local shortcut.
 */
import type { ServerEvent, ServerEventBus } from '@modelcontextprotocol/server';
import { createParser } from 'eventsource-parser';

/** The stream contract this bus reads (ids on every event, priming, resync signalling). */
export const STREAM_PROTOCOL_VERSION = '2025-11-25';

const RETRYABLE_STATUS = new Set([502, 503, 504]);

export interface FanoutEventBusOptions {
    /** mcp-fanout's base URL (`http://fanout:8080`), or several replicas' (failover, in order). */
    url: string | string[];
    /** An admin token (`FANOUT_ADMIN_TOKENS`) for publishing. */
    token?: string;
    /** Where `/admin/publish` is served when not at `url` (a separate `FANOUT_ADMIN_ADDR`). */
    publishUrl?: string | string[];
    /** Extra headers of the `GET /mcp` stream (a subscriber credential when one is required). */
    headers?: Record<string, string>;
    /** How long one publish is retried before `onerror` gets a `PublishError` (default 10 000). */
    publishDeadlineMs?: number;
    /** No bytes for this long (mcp-fanout sends a keep-alive every 15 s): reconnect (default 45 000). */
    stallTimeoutMs?: number;
    /** Reconnect / retry backoff: base and cap (defaults 200 and 10 000), with jitter. */
    backoffBaseMs?: number;
    backoffCapMs?: number;
    /** Publish failures (a `PublishError`) and listener exceptions. */
    onerror?: (error: Error) => void;
    /** Diagnostics (stream open/lost, retries); default: none. */
    log?: (level: 'info' | 'warn', message: string, fields: Record<string, unknown>) => void;
    /** The `fetch` to use (default: the global one). */
    fetch?: typeof fetch;
}

/** A publish mcp-fanout refused (a 4xx, a 500) or that could not be delivered before the deadline. */
export class PublishError extends Error {
    constructor(
        message: string,
        /** The event that was not published. */
        readonly event: ServerEvent,
        /** The last HTTP status (undefined when no answer came). */
        readonly status?: number
    ) {
        super(message);
        this.name = 'PublishError';
    }
}

/** The `POST /admin/publish` body of one SDK event. */
export function eventToMessage(event: ServerEvent): { method: string; params?: Record<string, unknown> } {
    const extra = event.params && typeof event.params === 'object' ? { ...event.params } : undefined;
    switch (event.kind) {
        case 'tools_list_changed':
            return withParams('notifications/tools/list_changed', extra);
        case 'prompts_list_changed':
            return withParams('notifications/prompts/list_changed', extra);
        case 'resources_list_changed':
            return withParams('notifications/resources/list_changed', extra);
        case 'resource_updated':
            return { method: 'notifications/resources/updated', params: { ...extra, uri: event.uri } };
    }
}

function withParams(method: string, params: Record<string, unknown> | undefined) {
    return params && Object.keys(params).length > 0 ? { method, params } : { method };
}

/** The SDK event a stream message announces, or undefined. */
export function eventFromMessage(message: unknown): ServerEvent | undefined {
    if (!message || typeof message !== 'object') return undefined;
    const { method, params } = message as { method?: unknown; params?: unknown };
    const p = params && typeof params === 'object' ? (params as Record<string, unknown>) : undefined;
    // The params a publisher forwarded, without the URI (carried by the event itself).
    const { uri: _uri, ...rest } = p ?? {};
    const forwarded = Object.keys(rest).length > 0 ? { params: rest } : {};
    switch (method) {
        case 'notifications/tools/list_changed':
            return { kind: 'tools_list_changed', ...forwarded };
        case 'notifications/prompts/list_changed':
            return { kind: 'prompts_list_changed', ...forwarded };
        case 'notifications/resources/list_changed':
            return { kind: 'resources_list_changed', ...forwarded };
        case 'notifications/resources/updated':
            return typeof p?.uri === 'string' ? { kind: 'resource_updated', uri: p.uri, ...forwarded } : undefined;
        default:
            return undefined;
    }
}

function backoff(attempt: number, base: number, cap: number): number {
    const d = Math.min(cap, base * 2 ** Math.min(attempt, 16));
    return d / 2 + Math.random() * (d / 2);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise(resolve => {
        if (signal.aborted) return resolve();
        const done = () => {
            clearTimeout(t);
            signal.removeEventListener('abort', done);
            resolve();
        };
        const t = setTimeout(done, ms);
        signal.addEventListener('abort', done);
    });
}

interface Pending {
    event: ServerEvent;
    body: string;
    key: string;
}

/**
 * A `ServerEventBus` whose backend is mcp-fanout:
 *
 * ```ts
 * const bus = new FanoutEventBus({ url: process.env.FANOUT_URL!, token: process.env.FANOUT_ADMIN_TOKEN });
 * const handler = createMcpHandler(factory, { bus });
 * ```
 *
 * The stream starts on the first `subscribe()` (or `start()`, which also awaits it: call it at
 * startup to be connected before the first listener comes).
 */
export class FanoutEventBus implements ServerEventBus {
    private readonly urls: string[];
    private readonly publishUrls: string[];
    private readonly opts: Required<
        Pick<FanoutEventBusOptions, 'publishDeadlineMs' | 'stallTimeoutMs' | 'backoffBaseMs' | 'backoffCapMs'>
    >;
    private readonly fetchFn: typeof fetch;
    private readonly listeners = new Map<symbol, (event: ServerEvent) => void>();
    private readonly queue: Pending[] = [];
    private sending: Promise<void> | undefined;
    private following: Promise<void> | undefined;
    private readonly closing = new AbortController();
    private streamAbort: AbortController | undefined;
    private streamUrl = 0;
    private publishUrl = 0;
    private connectedNow = false;
    private connectWaiters: Array<() => void> = [];
    private closed = false;
    /** The id of the last event (or priming frame) read: where the stream resumes. */
    cursor: string | undefined;

    constructor(private readonly options: FanoutEventBusOptions) {
        const urls = Array.isArray(options.url) ? options.url : [options.url];
        if (urls.length === 0) throw new TypeError('FanoutEventBus needs at least one mcp-fanout URL');
        this.urls = urls.map(u => u.replace(/\/+$/, ''));
        const publishUrls = options.publishUrl === undefined ? urls : [options.publishUrl].flat();
        if (publishUrls.length === 0) throw new TypeError('FanoutEventBus needs at least one publish URL');
        this.publishUrls = publishUrls.map(u => u.replace(/\/+$/, ''));
        this.opts = {
            publishDeadlineMs: options.publishDeadlineMs ?? 10_000,
            stallTimeoutMs: options.stallTimeoutMs ?? 45_000,
            backoffBaseMs: options.backoffBaseMs ?? 200,
            backoffCapMs: options.backoffCapMs ?? 10_000
        };
        this.fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
    }

    /** Whether the stream is open now. */
    get connected(): boolean {
        return this.connectedNow;
    }

    /** Starts the stream (if it has not) and resolves once it is open. */
    start(): Promise<void> {
        if (this.closed) return Promise.reject(new Error('FanoutEventBus is closed'));
        this.ensureFollowing();
        if (this.connectedNow) return Promise.resolve();
        return new Promise(resolve => this.connectWaiters.push(resolve));
    }

    publish(event: ServerEvent): void {
        if (this.closed) {
            this.report(new PublishError('FanoutEventBus is closed', event));
            return;
        }
        this.queue.push({ event, body: JSON.stringify(eventToMessage(event)), key: `mcp-fanout-ts-${crypto.randomUUID()}` });
        this.sending ??= this.drain().finally(() => {
            this.sending = undefined;
        });
    }

    subscribe(listener: (event: ServerEvent) => void): () => void {
        const token = Symbol('listener');
        this.listeners.set(token, listener);
        if (!this.closed) this.ensureFollowing();
        return () => {
            this.listeners.delete(token);
        };
    }

    /** Sends what is queued (each publish within its deadline), then stops the stream. */
    async close(): Promise<void> {
        if (this.closed) return;
        this.closed = true;
        while (this.sending) await this.sending;
        this.closing.abort();
        this.streamAbort?.abort();
        await this.following;
    }

    private report(error: Error): void {
        try {
            this.options.onerror?.(error);
        } catch {
            // onerror is a reporting hook: its failure changes nothing.
        }
    }

    private log(level: 'info' | 'warn', message: string, fields: Record<string, unknown>): void {
        this.options.log?.(level, message, fields);
    }

    // -- publish side ---------------------------------------------------------------------------

    private async drain(): Promise<void> {
        for (let next = this.queue.shift(); next; next = this.queue.shift()) {
            try {
                await this.send(next);
            } catch (e) {
                this.report(e instanceof Error ? e : new Error(String(e)));
            }
        }
    }

    private async send(p: Pending): Promise<void> {
        const deadline = Date.now() + this.opts.publishDeadlineMs;
        const headers: Record<string, string> = { 'content-type': 'application/json', 'idempotency-key': p.key };
        if (this.options.token !== undefined) headers.authorization = `Bearer ${this.options.token}`;
        for (let attempt = 1; ; attempt++) {
            const base = this.publishUrls[this.publishUrl];
            let status: number | undefined;
            let why: string;
            try {
                const res = await this.fetchFn(`${base}/admin/publish`, {
                    method: 'POST',
                    headers,
                    body: p.body,
                    signal: AbortSignal.timeout(Math.max(100, deadline - Date.now()))
                });
                status = res.status;
                const text = await res.text();
                if (status === 200) return;
                why = `${base} answered ${status}: ${text.slice(0, 300)}`;
                if (!RETRYABLE_STATUS.has(status)) {
                    throw new PublishError(`mcp-fanout refused the event: ${why}`, p.event, status);
                }
            } catch (e) {
                if (e instanceof PublishError) throw e;
                why = `${base} unreachable: ${String(e)}`;
            }
            if (this.publishUrls.length > 1) this.publishUrl = (this.publishUrl + 1) % this.publishUrls.length;
            const delay = backoff(attempt, this.opts.backoffBaseMs, this.opts.backoffCapMs);
            if (Date.now() + delay >= deadline) {
                throw new PublishError(
                    `publish of ${p.event.kind} gave up after ${attempt} attempts (${this.opts.publishDeadlineMs} ms): ${why}`,
                    p.event,
                    status
                );
            }
            this.log('warn', 'publish retry', { kind: p.event.kind, attempt, why });
            await new Promise(r => setTimeout(r, delay));
        }
    }

    // -- receive side ---------------------------------------------------------------------------

    private ensureFollowing(): void {
        this.following ??= this.follow();
    }

    private setConnected(now: boolean): void {
        this.connectedNow = now;
        if (now) {
            const waiters = this.connectWaiters;
            this.connectWaiters = [];
            for (const w of waiters) w();
        }
    }

    private dispatch(event: ServerEvent): void {
        for (const listener of [...this.listeners.values()]) {
            try {
                listener(event);
            } catch (e) {
                this.report(e instanceof Error ? e : new Error(String(e)));
            }
        }
    }

    private onData(data: string): void {
        let message: unknown;
        try {
            message = JSON.parse(data);
        } catch {
            this.log('warn', 'stream frame is not JSON; skipped', { data: data.slice(0, 200) });
            return;
        }
        // A resync (a cursor mcp-fanout cannot replay exactly) arrives as the three list_changed
        // notifications: one event of each list kind, a refetch.
        const event = eventFromMessage(message);
        if (event) this.dispatch(event);
    }

    private async follow(): Promise<void> {
        let attempt = 0;
        while (!this.closing.signal.aborted) {
            const base = this.urls[this.streamUrl];
            const headers: Record<string, string> = {
                accept: 'text/event-stream',
                'mcp-protocol-version': STREAM_PROTOCOL_VERSION,
                ...this.options.headers
            };
            if (this.cursor !== undefined) headers['last-event-id'] = this.cursor;
            const abort = new AbortController();
            this.streamAbort = abort;
            let retryMs: number | undefined;
            let failed = true;
            let stall: ReturnType<typeof setTimeout> | undefined;
            const armStall = () => {
                clearTimeout(stall);
                stall = setTimeout(() => abort.abort(new Error('stream stalled')), this.opts.stallTimeoutMs);
            };
            try {
                armStall();
                const res = await this.fetchFn(`${base}/mcp`, { headers, signal: abort.signal });
                if (res.status !== 200 || !res.body) {
                    const text = await res.text().catch(() => '');
                    throw new Error(`${base}/mcp answered ${res.status}: ${text.slice(0, 300)}`);
                }
                this.setConnected(true);
                this.log('info', 'stream open', { url: base, resumedFrom: headers['last-event-id'] });
                attempt = 0;
                const parser = createParser({
                    onEvent: ev => {
                        if (ev.id) this.cursor = ev.id;
                        if (ev.data) this.onData(ev.data);
                    },
                    onRetry: ms => {
                        retryMs = ms;
                    }
                });
                const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
                for (;;) {
                    const { done, value } = await reader.read();
                    if (done) break;
                    armStall();
                    parser.feed(value);
                }
                failed = false;
            } catch (e) {
                if (this.closing.signal.aborted) break;
                this.log('warn', 'stream lost', { url: base, error: String(e) });
            } finally {
                clearTimeout(stall);
                this.setConnected(false);
            }
            let delay: number;
            if (failed) {
                attempt++;
                if (this.urls.length > 1) this.streamUrl = (this.streamUrl + 1) % this.urls.length;
                delay = backoff(attempt, this.opts.backoffBaseMs, this.opts.backoffCapMs);
            } else if (retryMs !== undefined) {
                // A clean end (shutdown, rebalancing, shedding): the server's hint, already spread.
                delay = retryMs;
            } else {
                delay = backoff(1, this.opts.backoffBaseMs, this.opts.backoffCapMs);
            }
            this.log('info', 'stream reconnect', { inMs: Math.round(delay), cursor: this.cursor });
            await sleep(delay, this.closing.signal);
        }
    }
}
