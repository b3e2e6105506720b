-- Tally schema, version 3: change notifications for the live feeds.
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- After every INSERT statement on activity_events or token_usage, the channel
-- `tally_rows` is notified with the table's name as payload. NOTIFY is
-- transactional: it is delivered when (and only if) the writer's transaction
-- commits, once per distinct payload per transaction, i.e. once per committed
-- batch. The payload is only a hint: listeners read the rows themselves with
-- `WHERE seq > <last seq seen> ORDER BY seq`, which never skips a row because
-- `seq` is commit-ordered. A statement-level trigger costs one notification per
-- batch, whatever its size, and touches no row.

CREATE OR REPLACE FUNCTION tally_notify_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tally_rows', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS activity_events_notify ON activity_events;
CREATE TRIGGER activity_events_notify
    AFTER INSERT ON activity_events
    FOR EACH STATEMENT EXECUTE FUNCTION tally_notify_rows();

DROP TRIGGER IF EXISTS token_usage_notify ON token_usage;
CREATE TRIGGER token_usage_notify
    AFTER INSERT ON token_usage
    FOR EACH STATEMENT EXECUTE FUNCTION tally_notify_rows();
