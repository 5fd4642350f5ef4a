-- mcp-fanout migration 002: sessions, shared by every replica.
-- The first stream for a session binds it to its principal (JWT `sub`, or the tenant in header
-- mode); each new stream bumps `generation`, and the replica that claimed it NOTIFYs the control
-- channel so the replica holding the older stream ends it.
CREATE TABLE {{schema}}.sessions (
    session    text        PRIMARY KEY CHECK (session ~ '^[\x21-\x7e]{1,128}$'),
    principal  text,
    generation bigint      NOT NULL DEFAULT 1,
    last_seen  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX sessions_last_seen ON {{schema}}.sessions (last_seen);
