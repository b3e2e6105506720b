-- Bytes per row, table + indexes, of the raw tables (docs/scaling.md).
-- Run on a freshly migrated, empty database (`tally migrate`), e.g.
--   createdb -h 127.0.0.1 -U postgres tally_sizes
--   TALLY_DATABASE_URL=postgres://postgres@127.0.0.1/tally_sizes target/debug/tally migrate
--   psql -h 127.0.0.1 -U postgres -d tally_sizes -v rows=500000 -f bench/sql/row_sizes.sql
--   dropdb -h 127.0.0.1 -U postgres tally_sizes
-- Rows are shaped like the bench's workload (bench/src/gen.rs): ~40 tenants, ~2,000
-- users, a ~210-byte jsonb on activity rows, a small one on token rows, ids and
-- trace ids random, times spread over today.
\set ON_ERROR_STOP on
\timing on
INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, session_id, action, outcome,
    resource_type, resource_id, service, trace_id, span_id, attributes, duration_ms, name)
SELECT gen_random_uuid(), nextval('activity_events_seq'),
    date_trunc('day', now()) + (g % 86000) * interval '1 second' + (g % 997) * interval '1 microsecond',
    'tenant-' || (g % 40), 'user-' || (g % 2000), 'session-' || (g % 9000),
    (ARRAY['document.view', 'document.edit', 'auth.login', 'file.upload'])[1 + g % 4],
    (ARRAY['success', 'failure', 'unknown'])[1 + g % 3],
    'document', 'doc-' || (g % 50000), 'web-api',
    md5(g::text), substr(md5((g + 1)::text), 1, 16),
    jsonb_build_object('http.request.method', 'GET', 'http.route', '/api/documents/{id}',
        'http.response.status_code', 200, 'client.address', md5((g % 5000)::text),
        'user_agent.original', 'Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0'),
    (g % 500)::float8, 'GET /api/documents/{id}'
FROM generate_series(1, :rows) AS g;
INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, session_id, service, trace_id,
    span_id, provider, operation, request_model, response_model, model, input_tokens,
    output_tokens, cache_read_tokens, total_tokens, cost_usd, outcome, duration_ms,
    attribution_source, attributes)
SELECT gen_random_uuid(), nextval('token_usage_seq'),
    date_trunc('day', now()) + (g % 86000) * interval '1 second' + (g % 991) * interval '1 microsecond',
    'tenant-' || (g % 40), 'user-' || (g % 2000), 'session-' || (g % 9000), 'web-api',
    md5(g::text), substr(md5((g + 2)::text), 1, 16), 'openai', 'chat', 'gpt-4o',
    'gpt-4o-2024-08-06', 'gpt-4o-2024-08-06', 1000 + g % 3000, 100 + g % 500, g % 400,
    1100 + g % 3500, 0.0035, 'success', 800 + g % 2000, 'record',
    jsonb_build_object('gen_ai.response.id', 'chatcmpl-' || g)
FROM generate_series(1, :rows) AS g;
INSERT INTO trace_identities (tenant_id, trace_id, user_id, session_id, pending_since)
SELECT 'tenant-' || (g % 40), md5(g::text), 'user-' || (g % 2000), 'session-' || (g % 9000),
    CASE WHEN g % 10 = 0 THEN now() END
FROM generate_series(1, :rows / 5) AS g;
ANALYZE;
-- Bytes per row: heap (with TOAST) and indexes, summed over the partitions.
SELECT parent AS table_name, rows,
    round(heap::numeric / rows) AS heap_bytes_per_row,
    round(indexes::numeric / rows) AS index_bytes_per_row,
    round((heap + indexes)::numeric / rows) AS total_bytes_per_row
FROM (
    SELECT p.relname AS parent,
        sum(pg_table_size(c.oid)) AS heap, sum(pg_indexes_size(c.oid)) AS indexes,
        (SELECT count(*) FROM activity_events) AS rows
    FROM pg_class p, pg_partition_tree(p.oid) t JOIN pg_class c ON c.oid = t.relid
    WHERE p.relname = 'activity_events' AND t.isleaf GROUP BY p.relname
    UNION ALL
    SELECT p.relname, sum(pg_table_size(c.oid)), sum(pg_indexes_size(c.oid)),
        (SELECT count(*) FROM token_usage)
    FROM pg_class p, pg_partition_tree(p.oid) t JOIN pg_class c ON c.oid = t.relid
    WHERE p.relname = 'token_usage' AND t.isleaf GROUP BY p.relname
    UNION ALL
    SELECT 'trace_identities', pg_table_size('trace_identities'),
        pg_indexes_size('trace_identities'), (SELECT count(*) FROM trace_identities)
) AS s;
-- What each index of the partitioned tables costs per row.
SELECT i.indrelid::regclass AS partition, c.relname AS index_name,
    round(pg_relation_size(c.oid)::numeric / greatest(p.reltuples, 1)) AS bytes_per_row
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class p ON p.oid = i.indrelid
WHERE p.relispartition AND p.reltuples > 0
ORDER BY 1, 2;
-- The lock cost of migration 22's key change: rebuilding the token_usage key.
ALTER TABLE token_usage DROP CONSTRAINT token_usage_pkey,
    ADD CONSTRAINT token_usage_pkey PRIMARY KEY (tenant_id, ts, id);
