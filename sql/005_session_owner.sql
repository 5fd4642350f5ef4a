-- mcp-fanout migration 005: a session's owner is the whole principal — issuer, tenant and subject
-- of a token (the tenant in header mode) — kept in `owner`. The previous release kept only
-- `principal` (a token's `sub` alone), and its rows have no `owner`: this release takes such a row
-- as its owner's only when that one string still names the whole principal (no credential, or a
-- header-mode tenant), never for a token, so a row keyed by `sub` alone grants no other tenant's
-- or issuer's token with the same `sub` anything. Only adds a nullable column: a replica of the
-- previous release keeps working during a rolling upgrade (this release fills `principal` so that
-- one never takes a token principal's session either).
ALTER TABLE {{schema}}.sessions ADD COLUMN owner text;
