-- Tally schema, version 31: writes to the speed histogram rollups bump the
-- token tail's change generation (issue 18, `/stats` at 10M rows).
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- `/stats` (over every tenant, or of one tenant) keeps the rollups' part of
-- its duration, time-to-first-token and output speed histograms in memory per
-- tenant, window and rollup version (the token watermark and the `token_usage` generation of
-- migration 0027; admin-api/src/tailcache/memo.rs), and reads only the
-- unfolded tail at each request. That is exact only if every write to those
-- rollups moves the watermark or the generation in its own transaction. The
-- fold moves the watermark; retention (`aggregate_days`), the weekly rebuild
-- (`tally_rebuild_weekly_histograms`) and an operator's repair do not, so the
-- tables bump the generation themselves (statement-level, once per statement).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['token_usage_latency_daily', 'token_usage_ttft_daily',
                             'token_usage_speed_daily',
                             'token_usage_latency_daily_all', 'token_usage_latency_weekly_all',
                             'token_usage_ttft_daily_all', 'token_usage_speed_daily_all',
                             'token_usage_speed_weekly_all'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS tally_tail_change ON %I', t);
        EXECUTE format('CREATE TRIGGER tally_tail_change '
                       'AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION tally_note_tail_change(''token_usage'')',
                       t);
    END LOOP;
END
$$;
