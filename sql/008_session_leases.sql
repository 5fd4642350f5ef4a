-- mcp-fanout migration 008: sessions with an open stream are leased, and generations are never
-- reused.
-- `streamed_at` is set when a stream claims a session and each time a replica marks the sessions
-- its open streams hold (every minute): the trim past FANOUT_MAX_SESSIONS skips rows streamed
-- within the lease, so a flood of new session ids cannot push a live stream's session out and let
-- another principal bind it.
-- Generations come from one sequence for the whole deployment (a claim takes at least the row's
-- own + 1, for rows a previous release bumped): a session forgotten and bound again starts above
-- every generation it had, so its next claim ends an older stream wherever it is (with a per-row
-- count it restarted at 1, the older stream's own, and both streams stayed open). USAGE for
-- PUBLIC, like `append_events`' EXECUTE: a service role granted the tables (not the owner) draws
-- from it, and drawing grants nothing.
-- Only adds a nullable column, a sequence and a default: a previous release keeps working during a
-- rolling upgrade (its inserts take the sequence's value too).
ALTER TABLE {{schema}}.sessions ADD COLUMN streamed_at timestamptz;
CREATE SEQUENCE {{schema}}.session_generation;
SELECT setval('{{schema}}.session_generation',
              greatest(1, (SELECT max(generation) FROM {{schema}}.sessions)));
ALTER TABLE {{schema}}.sessions
    ALTER COLUMN generation SET DEFAULT nextval('{{schema}}.session_generation');
GRANT USAGE ON SEQUENCE {{schema}}.session_generation TO PUBLIC;
