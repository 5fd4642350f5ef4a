-- mcp-fanout migration 007: the replicas' keyless group commit as one function call. Its two
-- statements (advance the head, which takes the head row's lock; insert the rows numbered after
-- the old head) were sent as unnamed statements, parsed and planned on every publish (PgBouncer's
-- transaction mode rules out named prepared statements); inside a PL/pgSQL function they are
-- planned once per server connection and the plans kept, through PgBouncer too. The same rows,
-- the same lock, the same one statement trigger and NOTIFY. Returns the new head (NULL, and
-- nothing written, when the head row is missing). Replicas of the previous release never call it.
CREATE FUNCTION {{schema}}.append_events(
    n bigint, rel bigint[], methods text[], params text[], tenants text[], sessions text[])
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_head bigint;
BEGIN
    UPDATE {{schema}}.head h SET seq = h.seq + n RETURNING h.seq INTO v_head;
    IF v_head IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO {{schema}}.events (seq, method, params, tenant, session)
        SELECT v_head - n + t.rel, t.method, t.params, t.tenant, t.session
        FROM unnest(rel, methods, params, tenants, sessions) AS t(rel, method, params, tenant, session);
    RETURN v_head;
END $$;
-- Not SECURITY DEFINER: it runs with its caller's privileges on `head` and `events`, so it grants
-- nothing; EXECUTE stays with PUBLIC, so a service role that was granted the tables (migrations
-- applied by another role) can call it as it could run the statements.
