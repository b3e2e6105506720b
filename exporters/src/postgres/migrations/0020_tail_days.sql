-- Tally schema, version 20: the days that hold raw rows not folded yet (issue 18).
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- The live aggregates (`/tokens/usage`, `/activity/aggregates`, `/stats`) add the
-- raw rows above each rollup watermark (the "tail") to the rollups. The raw
-- tables are partitioned by day of `ts`, and a row may arrive late for any day
-- still kept, so without more knowledge the tail is searched in every
-- partition of the window. `tally_tail_days` says which days can hold a tail
-- row: one row per raw table and UTC day of `ts`, with the largest `seq`
-- inserted for that day. A day whose `max_seq` is at or below the rollup's
-- watermark holds no unfolded row, so the admin API bounds the tail's `ts`
-- below by the oldest day above the watermark (read in the same snapshot, then
-- bound into the statement as a literal): PostgreSQL prunes every older
-- partition when it plans the statement (see docs/performance.md).
--
-- Kept by a statement-level AFTER INSERT trigger on each raw table, in the
-- inserting transaction (so a row and its day's entry commit together, and a
-- snapshot that sees the row sees an entry with `max_seq >= seq`): one grouped
-- upsert per INSERT or COPY statement, a few rows. Writers already hold their
-- table's advisory lock until commit, so the upserts of one table never wait
-- on each other. `seq` never changes after insert and `ts` is never updated,
-- so updates need no trigger; deleted rows at most leave an entry that is too
-- high, which only widens the tail's search. Entries are never deleted: at
-- most one per raw table and day of retention.
CREATE TABLE IF NOT EXISTS tally_tail_days (
    raw_table text   NOT NULL,
    day       date   NOT NULL,
    max_seq   bigint NOT NULL,
    PRIMARY KEY (raw_table, day)
);

CREATE OR REPLACE FUNCTION tally_note_tail_days() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO tally_tail_days AS t (raw_table, day, max_seq)
        SELECT TG_TABLE_NAME, (ts AT TIME ZONE 'UTC')::date, max(seq)
        FROM tally_new_rows GROUP BY 2
        ON CONFLICT (raw_table, day)
        DO UPDATE SET max_seq = EXCLUDED.max_seq WHERE t.max_seq < EXCLUDED.max_seq;
    RETURN NULL;
END
$f$;

DROP TRIGGER IF EXISTS tally_tail_days ON activity_events;
CREATE TRIGGER tally_tail_days AFTER INSERT ON activity_events
    REFERENCING NEW TABLE AS tally_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tally_note_tail_days();
DROP TRIGGER IF EXISTS tally_tail_days ON token_usage;
CREATE TRIGGER tally_tail_days AFTER INSERT ON token_usage
    REFERENCING NEW TABLE AS tally_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tally_note_tail_days();

-- The rows already above the watermarks (inserted before the triggers existed;
-- CREATE TRIGGER waited for the inserts in flight, and later ones fire it).
INSERT INTO tally_tail_days AS t (raw_table, day, max_seq)
    SELECT 'activity_events', (ts AT TIME ZONE 'UTC')::date, max(seq) FROM activity_events
    WHERE seq > coalesce((SELECT last_seq FROM rollup_watermarks WHERE name = 'activity_daily'), 0)
    GROUP BY 2
    ON CONFLICT (raw_table, day)
    DO UPDATE SET max_seq = EXCLUDED.max_seq WHERE t.max_seq < EXCLUDED.max_seq;
INSERT INTO tally_tail_days AS t (raw_table, day, max_seq)
    SELECT 'token_usage', (ts AT TIME ZONE 'UTC')::date, max(seq) FROM token_usage
    WHERE seq > coalesce((SELECT last_seq FROM rollup_watermarks WHERE name = 'token_usage_daily'), 0)
    GROUP BY 2
    ON CONFLICT (raw_table, day)
    DO UPDATE SET max_seq = EXCLUDED.max_seq WHERE t.max_seq < EXCLUDED.max_seq;
