-- Tally schema, version 27: change generations of the live tails (issue 18).
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- The admin API keeps, per raw table, the unfolded tail (rows above the rollup
-- watermark) grouped in memory, so that a live answer over every tenant does
-- not re-read and re-group it at each request (admin-api/src/tailcache.rs).
-- That cache is valid for one watermark and one generation: it is extended by
-- the rows whose `seq` is above the newest one it holds (inserts: `seq` is
-- commit-ordered), and rebuilt when the watermark moves or when anything else
-- changes what it was built from. `tally_tail_generations` counts those other
-- changes, per raw table; the generation is the sum of its shards. Counters
-- only grow, so a different sum means a change.
--
-- Bumped in the changing transaction (a snapshot that sees the change sees
-- the bump, and the other way round):
-- * by statement-level triggers on the raw tables for UPDATE, DELETE and
--   TRUNCATE (late attribution, erasure, de-duplication, deletes per tenant
--   through the parent), and on the rollups the activity cache probes
--   (`activity_daily`, `activity_user_last_seen_all`) for any write (folds
--   move the watermark as well; erasure and retention rewrite or delete);
-- * explicitly, by `tally_bump_tail_generation(raw_table)`, where a statement
--   fires no trigger of the parent: retention dropping or deleting from a
--   partition directly (exporters/src/postgres/retention.rs).
-- Sharded by `pg_backend_pid() % 16` so that concurrent writers rarely wait
-- on one row until each other's commit.
CREATE TABLE IF NOT EXISTS tally_tail_generations (
    raw_table text   NOT NULL,
    shard     int    NOT NULL,
    n         bigint NOT NULL,
    PRIMARY KEY (raw_table, shard)
);

CREATE OR REPLACE FUNCTION tally_bump_tail_generation(p_table text) RETURNS void
LANGUAGE sql AS $f$
    INSERT INTO tally_tail_generations AS g (raw_table, shard, n)
        VALUES (p_table, pg_backend_pid() % 16, 1)
        ON CONFLICT (raw_table, shard) DO UPDATE SET n = g.n + 1;
$f$;

CREATE OR REPLACE FUNCTION tally_note_tail_change() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
    -- TG_ARGV[0]: the raw table whose cached tail this change invalidates.
    PERFORM tally_bump_tail_generation(TG_ARGV[0]);
    RETURN NULL;
END
$f$;

DROP TRIGGER IF EXISTS tally_tail_change ON activity_events;
CREATE TRIGGER tally_tail_change AFTER UPDATE OR DELETE OR TRUNCATE ON activity_events
    FOR EACH STATEMENT EXECUTE FUNCTION tally_note_tail_change('activity_events');
DROP TRIGGER IF EXISTS tally_tail_change ON token_usage;
CREATE TRIGGER tally_tail_change AFTER UPDATE OR DELETE OR TRUNCATE ON token_usage
    FOR EACH STATEMENT EXECUTE FUNCTION tally_note_tail_change('token_usage');
DROP TRIGGER IF EXISTS tally_tail_change ON activity_daily;
CREATE TRIGGER tally_tail_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON activity_daily
    FOR EACH STATEMENT EXECUTE FUNCTION tally_note_tail_change('activity_events');
DROP TRIGGER IF EXISTS tally_tail_change ON activity_user_last_seen_all;
CREATE TRIGGER tally_tail_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON activity_user_last_seen_all
    FOR EACH STATEMENT EXECUTE FUNCTION tally_note_tail_change('activity_events');
