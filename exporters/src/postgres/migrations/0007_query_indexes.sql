-- Tally schema, version 7: indexes for the admin API's queries (issue 8, benchmark 3).
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- `GET /api/v1/activity?resource_type=…&resource_id=…` ("who touched this
-- document") had no index to use: at 10 million rows PostgreSQL walked the
-- (ts, id) index newest first and filtered every row, and the request hit the
-- 30 s statement timeout. A resource id is selective (a handful of rows), so a
-- plain index on it (partial: events without a resource are not indexed) finds
-- the rows of every partition directly and the page is sorted from those few.
-- `=` on text is leakproof, so the index is used under the admin API's forced
-- row-level security too.
--
-- Cost: one more index maintained on every insert into activity_events (see
-- docs/performance.md, "Queries at 10 million rows", for the measured cost).
-- On an existing database the index is built for every partition inside the
-- migration's transaction, which holds off writers of activity_events until it
-- is built (about a minute per 10 million rows on 2 cores).
CREATE INDEX IF NOT EXISTS activity_events_resource_idx
    ON activity_events (resource_id) WHERE resource_id IS NOT NULL;
