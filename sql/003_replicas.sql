-- mcp-fanout migration 003: replica heartbeats, for GET /admin/cluster.
CREATE TABLE {{schema}}.replicas (
    id             text        PRIMARY KEY,
    address        text,
    subscribers    integer     NOT NULL DEFAULT 0,
    last_delivered bigint      NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_heartbeat timestamptz NOT NULL DEFAULT clock_timestamp()
);
