-- mcp-fanout migration 001: the ordered event log.
-- `{{schema}}` is replaced by FANOUT_SCHEMA ([a-z_][a-z0-9_]*, validated before substitution).
-- Applied inside one transaction under a transaction-scoped advisory lock (see src/log/postgres/migrate.rs).

-- One row: the log's identity and limits.
CREATE TABLE {{schema}}.meta (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- First half of every event id; random, fixed when the schema is created.
    epoch             text    NOT NULL DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 16)
                              CHECK (epoch ~ '^[0-9a-z]{1,32}$'),
    -- Highest seq ever pruned by retention.
    pruned            bigint  NOT NULL DEFAULT 0,
    -- Largest params of one event, as compact JSON (FANOUT_MAX_PAYLOAD_BYTES; synced at start).
    max_payload_bytes integer NOT NULL DEFAULT 65536 CHECK (max_payload_bytes > 0)
);
INSERT INTO {{schema}}.meta DEFAULT VALUES;

-- One row: the highest committed seq. Publishers lock this row for the rest of their transaction
-- (UPDATE ... RETURNING), so publishing transactions are serialized and seqs become visible in
-- commit order: "every event after seq N" is well defined with concurrent publishers.
CREATE TABLE {{schema}}.head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint  NOT NULL DEFAULT 0
);
INSERT INTO {{schema}}.head DEFAULT VALUES;

CREATE TABLE {{schema}}.events (
    seq          bigint      PRIMARY KEY,
    method       text        NOT NULL CHECK (method ~ '^notifications/[A-Za-z0-9_./-]+$' AND octet_length(method) <= 128),
    -- Compact JSON text of the params object (text, not jsonb: key order is kept as published).
    params       text,
    tenant       text        CHECK (tenant IS NULL OR (octet_length(tenant) BETWEEN 1 AND 256)),
    session      text        CHECK (session IS NULL OR session ~ '^[\x21-\x7e]{1,128}$'),
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX events_committed_at ON {{schema}}.events (committed_at);

-- Idempotency keys: a retry within retention returns the original seqs.
CREATE TABLE {{schema}}.idempotency (
    key         text        PRIMARY KEY,
    fingerprint bytea       NOT NULL,
    seqs        bigint[]    NOT NULL,
    max_seq     bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idempotency_max_seq ON {{schema}}.idempotency (max_seq);

-- The wake-up: one NOTIFY per inserting statement, naming the highest seq it committed. Content
-- never travels in a NOTIFY; the bridge reads the log.
CREATE FUNCTION {{schema}}.notify_committed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('{{schema}}.events', (SELECT max(seq)::text FROM new_rows));
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON {{schema}}.events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.notify_committed();

-- jsonb as compact JSON text (no spaces), so SQL publishes are measured and stored like HTTP ones.
CREATE FUNCTION {{schema}}.compact_json(j jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE jsonb_typeof(j)
        WHEN 'object' THEN '{' || coalesce((
            SELECT string_agg(to_jsonb(k)::text || ':' || {{schema}}.compact_json(v), ',' ORDER BY ord)
            FROM jsonb_each(j) WITH ORDINALITY AS t(k, v, ord)), '') || '}'
        WHEN 'array' THEN '[' || coalesce((
            SELECT string_agg({{schema}}.compact_json(v), ',' ORDER BY ord)
            FROM jsonb_array_elements(j) WITH ORDINALITY AS t(v, ord)), '') || ']'
        ELSE j::text
    END
$$;

-- Publishing from SQL: the event exists, and is delivered, exactly when the caller's transaction
-- commits. Same validation as HTTP. It locks the head row until commit: call it last in a short
-- transaction, and set lock_timeout. Not usable with PREPARE TRANSACTION (NOTIFY forbids it).
CREATE FUNCTION {{schema}}.publish(method text, params jsonb DEFAULT NULL, tenant text DEFAULT NULL, session text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_seq    bigint;
    v_params text;
    v_limit  integer;
    v_epoch  text;
BEGIN
    IF method IS NULL OR method !~ '^notifications/[A-Za-z0-9_./-]+$' OR octet_length(method) > 128 THEN
        RAISE EXCEPTION 'invalid_method: method must be "notifications/" followed by [A-Za-z0-9_./-]+, at most 128 bytes'
            USING ERRCODE = '22023';
    END IF;
    IF params IS NOT NULL AND jsonb_typeof(params) = 'null' THEN
        params := NULL;
    END IF;
    IF params IS NOT NULL AND jsonb_typeof(params) <> 'object' THEN
        RAISE EXCEPTION 'invalid_params: params must be an object or null' USING ERRCODE = '22023';
    END IF;
    IF tenant IS NOT NULL AND (octet_length(tenant) NOT BETWEEN 1 AND 256 OR tenant ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'invalid_field: tenant must be 1 to 256 bytes without control characters' USING ERRCODE = '22023';
    END IF;
    IF session IS NOT NULL AND session !~ '^[\x21-\x7e]{1,128}$' THEN
        RAISE EXCEPTION 'invalid_field: session must be 1 to 128 bytes of visible ASCII' USING ERRCODE = '22023';
    END IF;
    SELECT m.max_payload_bytes, m.epoch INTO v_limit, v_epoch FROM {{schema}}.meta m;
    v_params := {{schema}}.compact_json(params);
    IF octet_length(v_params) > v_limit THEN
        RAISE EXCEPTION 'payload_too_large: params is % bytes as compact JSON; at most % are allowed',
            octet_length(v_params), v_limit USING ERRCODE = '22023';
    END IF;
    UPDATE {{schema}}.head h SET seq = h.seq + 1 RETURNING h.seq INTO v_seq;
    INSERT INTO {{schema}}.events (seq, method, params, tenant, session)
        VALUES (v_seq, publish.method, v_params, publish.tenant, publish.session);
    RETURN v_epoch || '-' || v_seq;
END $$;
-- SECURITY DEFINER with a pinned search_path: a SQL publisher needs only
--   GRANT USAGE ON SCHEMA {{schema}} TO <role>;
--   GRANT EXECUTE ON FUNCTION {{schema}}.publish(text, jsonb, text, text) TO <role>;
REVOKE ALL ON FUNCTION {{schema}}.publish(text, jsonb, text, text) FROM PUBLIC;
