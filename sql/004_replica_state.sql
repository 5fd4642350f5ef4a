-- mcp-fanout migration 004: what the operator console shows of each replica (subscribers by kind,
-- LISTEN state). Only adds columns with defaults: a replica of the previous release keeps writing
-- its heartbeats without them.
ALTER TABLE {{schema}}.replicas
    ADD COLUMN subscribers_sse    integer NOT NULL DEFAULT 0,
    ADD COLUMN subscribers_poll   integer NOT NULL DEFAULT 0,
    ADD COLUMN subscribers_listen integer NOT NULL DEFAULT 0,
    ADD COLUMN listen_connected   boolean;
