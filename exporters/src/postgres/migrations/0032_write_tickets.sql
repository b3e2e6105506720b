-- Tally schema, version 32: writers' `COPY`s run side by side, commits stay in
-- `seq` order (issue 21, the write path).
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- Until now a writer took `pg_advisory_xact_lock('tallyact')` before reserving its
-- `seq` range and held it until `COMMIT`, so the whole `COPY` of every batch ran
-- one writer at a time. Now a writer of the direct path (exporters/src/postgres/
-- activity.rs) reserves its range together with a *ticket*, `COPY`s without
-- holding anything another writer waits for, and before it links and commits
-- waits until the batch holding the previous ticket has ended (committed or
-- rolled back). Tickets are taken in `seq` order, so commits still follow `seq`:
-- a reader remembering the last `seq` it saw never skips a row committed later.
--
-- Every other writer of `activity_events` (the staged path, the erasure's audit
-- row, a Tally of an earlier version during a rolling upgrade) keeps taking the
-- same key exclusively until its commit; the direct path takes it shared, so the
-- two kinds still exclude each other as before.
--
-- The one row every insert of a day updates, the day's entry in `tally_tail_days`
-- (migration 20), would make `COPY`s side by side wait on each other in the wrong
-- order (the later ticket's `COPY` updates it first, the earlier one then waits
-- for the later, which waits for the earlier: a deadlock). So a direct-path
-- writer's `COPY` skips the trigger's upsert for `activity_events`
-- (`tally.tail_days_by_writer`, set for the transaction by the reservation) and
-- the writer upserts the same entries itself once its turn has come, in the same
-- transaction as the rows.
CREATE SEQUENCE IF NOT EXISTS tally_activity_ticket_seq AS bigint;

-- Reserves `n` values of `activity_events_seq` (the range ends at `last_seq`)
-- and a ticket, whose lock (two-key advisory lock of class 1953266036 = 'tlyt', ticket
-- modulo 2^31) the caller's transaction holds until it ends. The reservation
-- lock ('tallyres', session level) is held only inside this call, and given
-- back on every error as well.
CREATE OR REPLACE FUNCTION tally_reserve_activity_seq(n bigint, OUT ticket bigint, OUT last_seq bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(8386103194289267572);  -- 'tallyact'
    PERFORM set_config('tally.tail_days_by_writer', 'on', true);
    PERFORM pg_advisory_lock(8386103194290382195);              -- 'tallyres'
    BEGIN
        ticket := nextval('tally_activity_ticket_seq');
        PERFORM pg_advisory_xact_lock(1953266036, (ticket % 2147483648)::int);
        last_seq := setval('activity_events_seq', nextval('activity_events_seq') + n - 1);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock(8386103194290382195);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(8386103194290382195);
END $$;

-- Migration 20's trigger function, skipping `activity_events` for a direct-path
-- writer (above); every other insert is noted as before.
CREATE OR REPLACE FUNCTION tally_note_tail_days() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
    IF TG_TABLE_NAME = 'activity_events'
       AND current_setting('tally.tail_days_by_writer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO tally_tail_days AS t (raw_table, day, max_seq)
        SELECT TG_TABLE_NAME, (ts AT TIME ZONE 'UTC')::date, max(seq)
        FROM tally_new_rows GROUP BY 2
        ON CONFLICT (raw_table, day)
        DO UPDATE SET max_seq = EXCLUDED.max_seq WHERE t.max_seq < EXCLUDED.max_seq;
    RETURN NULL;
END
$f$;
