-- `unpriced_requests` counts the calls that reported usage but whose model has no
-- price (the meaning of `tally_llm_unpriced_requests_total`); a call without usage is
-- counted in `unknown_usage_requests` only. Rollups folded before this migration also
-- counted every call without usage as unpriced. Such a call never has a cost, so the
-- old count is exactly the new one plus `unknown_usage_requests`: subtract it, in the
-- daily rollup and in the ones derived from it (sums of it, so the same subtraction
-- holds), under the rollup job's lock (ROLLUP_LOCK_KEY, the bytes 'tallyrol').
SELECT pg_advisory_xact_lock(8386103194290384748);

UPDATE token_usage_daily
    SET unpriced_requests = unpriced_requests - unknown_usage_requests
    WHERE unknown_usage_requests > 0 AND unpriced_requests >= unknown_usage_requests;
UPDATE token_usage_daily_tenant
    SET unpriced_requests = unpriced_requests - unknown_usage_requests
    WHERE unknown_usage_requests > 0 AND unpriced_requests >= unknown_usage_requests;
UPDATE token_usage_daily_all
    SET unpriced_requests = unpriced_requests - unknown_usage_requests
    WHERE unknown_usage_requests > 0 AND unpriced_requests >= unknown_usage_requests;
