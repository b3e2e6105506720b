-- Tally schema, migration 22: beyond one machine.
--
-- 1. trace_identities: who a trace is about, shared by every Tally instance on this
--    database, so that an LLM span and the request span carrying its user may reach
--    different instances (round-robin load balancing) and the token row is still
--    attributed (docs/tokens.md, "Attribution across instances"). Written by the
--    writers in the same transaction as the rows of the request that taught it, one
--    multi-row upsert per batch:
--    * `tenant_id` is the sender's tenant scope: its ingest key's tenant, '' for
--      senders bound to none. Traces of different scopes never meet, whatever trace
--      id a client chooses (trace ids are client-chosen).
--    * `user_id`, `session_id`, `record_tenant` (the tenant the records named; only
--      senders bound to none may name one): the first value of each field wins, as
--      in each instance's own trace cache.
--    * `pending_since`: the earliest `ts` of this trace's token rows stored without
--      attribution, by any instance. An upsert that finds both an identity and a
--      pending mark tells its writer to attribute the trace's stored rows (the
--      existing attribution path, after commit).
--    * `seen_at`: last upsert; rows older than the attribution window are deleted by
--      the rollup job (TTL).
--    UNLOGGED: no WAL for a table rewritten at ingest rate and whose rows live
--    minutes. The trade-off: after a PostgreSQL crash (not a clean shutdown) the
--    table is empty, and it is not on standbys (a promoted standby starts with it
--    empty); traces in flight then (within the attribution window) may keep token
--    rows unattributed when their spans went to different instances, exactly as if
--    their identity had arrived after the window. Nothing else is lost: token rows,
--    activity rows and call keys are logged tables.
CREATE UNLOGGED TABLE IF NOT EXISTS trace_identities (
    tenant_id     text        NOT NULL,
    trace_id      text        NOT NULL,
    user_id       text,
    session_id    text,
    record_tenant text,
    pending_since timestamptz,
    seen_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, trace_id)
);

-- 2. Distributed-PostgreSQL readiness: every primary key includes tenant_id
--    (docs/scaling.md). Lock cost: each ALTER below takes an ACCESS EXCLUSIVE lock
--    on the table (and every partition) while the new unique index is built over
--    all of its rows: writes and reads wait for it (measured in docs/scaling.md:
--    ~7 s per million token rows on a loaded 2-core machine). Nothing is
--    rewritten or lost; the build fails, and the migration rolls back, only if
--    the new key had duplicates, which the old, narrower key excludes.
--
--    token_usage: (ts, id) → (tenant_id, ts, id). Its (tenant_id, ts) index is the
--    new key's prefix and goes; a (ts, id) index stays for reads without a tenant
--    (platform callers' pages, rows named by (ts, id)). A retried report whose
--    stored row was attributed to a tenant meanwhile is skipped by the writer
--    (it probes (ts, id) under the token lock), no longer by the key.
ALTER TABLE token_usage DROP CONSTRAINT IF EXISTS token_usage_pkey;
ALTER TABLE token_usage ADD CONSTRAINT token_usage_pkey PRIMARY KEY (tenant_id, ts, id);
DROP INDEX IF EXISTS token_usage_tenant_idx;
CREATE INDEX IF NOT EXISTS token_usage_ts_id_idx ON token_usage (ts, id);

--    budget_thresholds: (budget, period_start, threshold) → (tenant_id, budget,
--    period_start, threshold). A budget names one tenant ('' for every tenant), so
--    the claims it makes are the same rows.
ALTER TABLE budget_thresholds DROP CONSTRAINT IF EXISTS budget_thresholds_pkey;
ALTER TABLE budget_thresholds ADD CONSTRAINT budget_thresholds_pkey
    PRIMARY KEY (tenant_id, budget, period_start, threshold);
