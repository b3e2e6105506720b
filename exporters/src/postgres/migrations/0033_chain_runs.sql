-- Tally schema, version 33: the writer's chain links stored per run (issue 21).
--
-- A writer that links its own batch (migration 0032's direct path) stores one
-- row per tenant with a few rows in the batch (4 or more, `MIN_RUN_LINKS`)
-- instead of one activity_chain row per event: the
-- run's seqs in order, the UTC day of each row's ts, and each row's link hash,
-- 32 bytes after 32 bytes. Link i of a run is
--   (seq = seqs[i], day = days[i],
--    prev_seq  = i = 1 ? prev_seq  : seqs[i - 1],
--    prev_hash = i = 1 ? prev_hash : row_hashes[i - 1],
--    row_hash  = row_hashes[i])
-- so a run holds exactly the links activity_chain would, for about a third of
-- the bytes and one heap tuple and index entry per batch and tenant instead of
-- per row. The chainer keeps writing activity_chain; readers read both through
-- tally_chain_links / tally_chain_link (below). Not partitioned: like
-- activity_chain, runs outlive the partitions retention drops.
CREATE TABLE IF NOT EXISTS activity_chain_runs (
    tenant_id  text        NOT NULL,
    first_seq  bigint      NOT NULL,
    last_seq   bigint      NOT NULL,
    prev_seq   bigint,
    prev_hash  bytea       NOT NULL,
    seqs       bigint[]    NOT NULL,
    days       date[]      NOT NULL,
    row_hashes bytea       NOT NULL,
    chained_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, last_seq),
    CONSTRAINT activity_chain_runs_shape CHECK (
        cardinality(seqs) > 0
        AND cardinality(days) = cardinality(seqs)
        AND octet_length(row_hashes) = 32 * cardinality(seqs)
        AND seqs[1] = first_seq AND seqs[cardinality(seqs)] = last_seq)
);
-- Link hashes do not compress: store them out of line as they are, and keep a
-- run of up to ~180 rows in its heap tuple.
ALTER TABLE activity_chain_runs ALTER COLUMN row_hashes SET STORAGE EXTERNAL;
ALTER TABLE activity_chain_runs SET (toast_tuple_target = 8160);

-- The links of a tenant with p_after < seq <= p_upto, whether stored alone
-- (activity_chain) or in a run, in no particular order. A run is found by its
-- last_seq, so a range that starts far below the tenant's newest run reads
-- every run above it: walk in pages (as `tally verify` does), or use
-- tally_chain_link for single links.
CREATE OR REPLACE FUNCTION tally_chain_links(p_tenant text, p_after bigint, p_upto bigint)
RETURNS TABLE (tenant_id text, seq bigint, day date, prev_seq bigint, prev_hash bytea,
               row_hash bytea)
LANGUAGE sql STABLE AS $f$
    SELECT c.tenant_id, c.seq, c.day, c.prev_seq, c.prev_hash, c.row_hash
    FROM activity_chain c
    WHERE c.tenant_id = p_tenant AND c.seq > p_after AND c.seq <= p_upto
    UNION ALL
    SELECT r.tenant_id, u.seq, r.days[u.i],
        CASE WHEN u.i = 1 THEN r.prev_seq ELSE r.seqs[u.i - 1] END,
        CASE WHEN u.i = 1 THEN r.prev_hash
             ELSE substring(r.row_hashes FROM (u.i - 2)::int * 32 + 1 FOR 32) END,
        substring(r.row_hashes FROM (u.i - 1)::int * 32 + 1 FOR 32)
    FROM activity_chain_runs r
    CROSS JOIN LATERAL unnest(r.seqs) WITH ORDINALITY AS u(seq, i)
    WHERE r.tenant_id = p_tenant AND r.last_seq > p_after AND r.first_seq <= p_upto
      AND u.seq > p_after AND u.seq <= p_upto
$f$;

-- The link of (p_tenant, p_seq): from activity_chain, or from the run whose
-- last_seq is the first at or above p_seq (runs of a tenant do not overlap).
-- No row when there is none. One index probe per table.
CREATE OR REPLACE FUNCTION tally_chain_link(p_tenant text, p_seq bigint)
RETURNS TABLE (tenant_id text, seq bigint, day date, prev_seq bigint, prev_hash bytea,
               row_hash bytea)
LANGUAGE sql STABLE AS $f$
    SELECT c.tenant_id, c.seq, c.day, c.prev_seq, c.prev_hash, c.row_hash
    FROM activity_chain c
    WHERE c.tenant_id = p_tenant AND c.seq = p_seq
    UNION ALL
    SELECT r.tenant_id, p_seq, r.days[u.i],
        CASE WHEN u.i = 1 THEN r.prev_seq ELSE r.seqs[u.i - 1] END,
        CASE WHEN u.i = 1 THEN r.prev_hash
             ELSE substring(r.row_hashes FROM (u.i - 2) * 32 + 1 FOR 32) END,
        substring(r.row_hashes FROM (u.i - 1) * 32 + 1 FOR 32)
    FROM (SELECT * FROM activity_chain_runs x
          WHERE x.tenant_id = p_tenant AND x.last_seq >= p_seq
          ORDER BY x.last_seq LIMIT 1) r
    CROSS JOIN LATERAL (SELECT array_position(r.seqs, p_seq) AS i) u
    WHERE u.i IS NOT NULL
$f$;

-- Every link, one row per chained row, whichever table holds it: for people and
-- scripts (docs/tamper-evidence.md). It reads every run: filter by tenant_id,
-- and prefer the functions above for ranges and single links. Not granted to
-- tally_api (the admin API reads the tables under their row security).
CREATE OR REPLACE VIEW activity_chain_links AS
    SELECT c.tenant_id, c.seq, c.day, c.prev_seq, c.prev_hash, c.row_hash, c.chained_at
    FROM activity_chain c
    UNION ALL
    SELECT r.tenant_id, u.seq, r.days[u.i],
        CASE WHEN u.i = 1 THEN r.prev_seq ELSE r.seqs[u.i - 1] END,
        CASE WHEN u.i = 1 THEN r.prev_hash
             ELSE substring(r.row_hashes FROM (u.i - 2)::int * 32 + 1 FOR 32) END,
        substring(r.row_hashes FROM (u.i - 1)::int * 32 + 1 FOR 32),
        r.chained_at
    FROM activity_chain_runs r
    CROSS JOIN LATERAL unnest(r.seqs) WITH ORDINALITY AS u(seq, i);
