-- Grouping by user one day at a time for callers who see every tenant
-- (`/tokens/usage` and `/activity/aggregates` with group_by=user at day grain,
-- and the one-day periods of week and month pages): `day = d ORDER BY user_id`
-- reads a day's rows in user order and stops after one page of users, instead
-- of grouping every user of the window. The (day, user_id) index replaces the
-- (day) index of 0002, which it also serves (day ranges, retention), so the
-- rollup job maintains as many indexes as before.
CREATE INDEX IF NOT EXISTS activity_daily_day_user_idx ON activity_daily (day, user_id);
DROP INDEX IF EXISTS activity_daily_day_idx;
CREATE INDEX IF NOT EXISTS token_usage_daily_day_user_idx ON token_usage_daily (day, user_id);
DROP INDEX IF EXISTS token_usage_daily_day_idx;
