-- mcp-fanout migration 006: `compact_json` in one pass over jsonb's own text, the same output as
-- the recursive version of migration 001 at a fraction of the cost. jsonb prints its separators as
-- ", " and ": " and puts no other whitespace outside strings; so compact JSON is that text with the
-- space after each separator outside a string removed. The pattern matches, left to right, either
-- a whole string (kept as it is: escapes `\"` and `\\` are consumed with it, so no match starts
-- inside one) or a separator and its space (kept without the space). The recursive version was an
-- SQL function planned anew on every call and called once per value: ~0.23 ms of a `publish()`
-- with one key on a test machine, against ~0.03 ms for this one (BENCHMARKS.md, publish-latency).
-- Same name, signature and result: nothing that calls it changes, and replicas of the previous
-- release (which never call it) keep working during a rolling upgrade.
CREATE OR REPLACE FUNCTION {{schema}}.compact_json(j jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT regexp_replace(j::text, '("(?:[^"\\]|\\.)*")|([,:]) ', '\1\2', 'g')
$$;
