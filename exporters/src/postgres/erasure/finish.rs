//! The last transaction of an erasure: the per-user rollups, budget crossings
//! and API keys re-keyed to the pseudonym, the `admin.user.erase` event, the
//! record marked `done`.

use super::*;

/// Re-keys the rollups, budget crossings and API keys, records the event and
/// marks the erasure done (the caller commits).
pub(super) async fn finish(
    tx: &Transaction<'_>,
    target: &Target,
    archives: &[String],
) -> Result<(), ErasureError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROLLUP_LOCK_KEY])
        .await?;
    let keys: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&target.tenant, &target.subject, &target.pseudonym];
    let mut rollups = 0;
    for sql in REKEY_SQL {
        rollups += count(tx.execute(*sql, &keys).await?);
    }
    // The tenant-less last-seen rollup: the user's other tenants keep theirs.
    tx.execute(
        "DELETE FROM activity_user_last_seen_all WHERE user_id = $1",
        &[&target.subject],
    )
    .await?;
    tx.execute(
        "INSERT INTO activity_user_last_seen_all (user_id, last_seen) \
         SELECT user_id, max(last_seen) FROM activity_user_last_seen \
         WHERE user_id = ANY(ARRAY[$1, $2]) GROUP BY user_id \
         ON CONFLICT (user_id) DO UPDATE \
             SET last_seen = greatest(activity_user_last_seen_all.last_seen, EXCLUDED.last_seen)",
        &[&target.subject, &target.pseudonym],
    )
    .await?;
    let budgets = tx
        .execute(
            "UPDATE budget_thresholds SET user_id = $3 WHERE tenant_id = $1 AND user_id = $2",
            &keys,
        )
        .await?;
    let api_keys = tx
        .execute(
            "UPDATE api_keys SET user_id = $3, description = NULL, \
                 revoked_at = coalesce(revoked_at, now()) \
             WHERE tenant = $1 AND user_id = $2",
            &keys,
        )
        .await?;
    // The identities shared for attribution across instances: a late token row
    // of the user's trace is attributed to the pseudonym, never the clear id.
    let identities = tx
        .execute(
            "UPDATE trace_identities SET user_id = $3, session_id = NULL \
             WHERE user_id = $2 AND (tenant_id = $1 OR record_tenant = $1)",
            &keys,
        )
        .await?;
    for (table, rows) in [
        ("rollups", rollups),
        ("budget_thresholds", count(budgets)),
        ("api_keys", count(api_keys)),
        ("trace_identities", count(identities)),
    ] {
        if rows > 0 {
            add_count(tx, target.id, table, rows).await?;
        }
    }
    let counts: serde_json::Value = tx
        .query_one("SELECT counts FROM erasures WHERE id = $1", &[&target.id])
        .await?
        .try_get(0)?;
    let mut attributes = serde_json::Map::new();
    attributes.insert("erasure.id".into(), target.id.to_string().into());
    attributes.insert("erasure.reason".into(), target.reason.clone().into());
    attributes.insert("erasure.pseudonym".into(), target.pseudonym.clone().into());
    let mut total = 0;
    if let Some(map) = counts.as_object() {
        for (table, rows) in map {
            let rows = rows.as_i64().unwrap_or(0);
            total += rows;
            attributes.insert(format!("erasure.rows.{table}"), rows.into());
        }
    }
    attributes.insert("erasure.rows".into(), total.into());
    if !archives.is_empty() {
        attributes.insert("erasure.archives".into(), archives.len().into());
    }
    let event_id = Uuid::now_v7();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&ACTIVITY_EVENTS_LOCK_KEY],
    )
    .await?;
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome, \
             resource_type, resource_id, service, attributes, taxonomy_valid) \
         VALUES ($1, nextval('activity_events_seq'), now(), $2, $3, $4, 'success', 'user', $5, \
             'tally', $6, true)",
        &[
            &event_id,
            &target.tenant,
            &target.requested_by,
            &ERASE_ACTION,
            &target.pseudonym,
            &serde_json::Value::Object(attributes),
        ],
    )
    .await?;
    tx.execute(
        "UPDATE erasures SET state = 'done', subject = NULL, completed_at = now(), event_id = $2, \
             archives = $3 WHERE id = $1",
        &[&target.id, &event_id, &serde_json::json!(archives)],
    )
    .await?;
    Ok(())
}

/// Moves the user's rows of the per-user rollups (daily, weekly: migration
/// 0029, last seen) to the pseudonym, adding them into rows the pseudonym
/// already has ($1 tenant, $2 user, $3 pseudonym).
const REKEY_SQL: &[&str] = &[
    "WITH moved AS (DELETE FROM activity_daily WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING day, action, outcome, events) \
     INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
     SELECT day, $1, $3, action, outcome, events FROM moved \
     ON CONFLICT (tenant_id, day, user_id, action, outcome) \
         DO UPDATE SET events = activity_daily.events + EXCLUDED.events",
    "WITH moved AS (DELETE FROM token_usage_daily WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING day, provider, model, requests, unknown_usage_requests, unpriced_requests, \
             input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
             reasoning_tokens, total_tokens, cost_usd) \
     INSERT INTO token_usage_daily (day, tenant_id, user_id, provider, model, requests, \
         unknown_usage_requests, unpriced_requests, input_tokens, output_tokens, \
         cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd) \
     SELECT day, $1, $3, provider, model, requests, unknown_usage_requests, unpriced_requests, \
         input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
         total_tokens, cost_usd FROM moved \
     ON CONFLICT (tenant_id, day, user_id, provider, model) DO UPDATE SET \
         requests = token_usage_daily.requests + EXCLUDED.requests, \
         unknown_usage_requests = token_usage_daily.unknown_usage_requests \
             + EXCLUDED.unknown_usage_requests, \
         unpriced_requests = token_usage_daily.unpriced_requests + EXCLUDED.unpriced_requests, \
         input_tokens = token_usage_daily.input_tokens + EXCLUDED.input_tokens, \
         output_tokens = token_usage_daily.output_tokens + EXCLUDED.output_tokens, \
         cache_read_tokens = token_usage_daily.cache_read_tokens + EXCLUDED.cache_read_tokens, \
         cache_write_tokens = token_usage_daily.cache_write_tokens + EXCLUDED.cache_write_tokens, \
         reasoning_tokens = token_usage_daily.reasoning_tokens + EXCLUDED.reasoning_tokens, \
         total_tokens = token_usage_daily.total_tokens + EXCLUDED.total_tokens, \
         cost_usd = token_usage_daily.cost_usd + EXCLUDED.cost_usd",
    "WITH moved AS (DELETE FROM activity_user_weekly WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING week, events) \
     INSERT INTO activity_user_weekly (tenant_id, week, user_id, events) \
     SELECT $1, week, $3, events FROM moved \
     ON CONFLICT (tenant_id, user_id, week) \
         DO UPDATE SET events = activity_user_weekly.events + EXCLUDED.events",
    "WITH moved AS (DELETE FROM token_usage_user_weekly WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING week, requests, unknown_usage_requests, unpriced_requests, input_tokens, \
             output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
             total_tokens, cost_usd) \
     INSERT INTO token_usage_user_weekly (tenant_id, week, user_id, requests, \
         unknown_usage_requests, unpriced_requests, input_tokens, output_tokens, \
         cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd) \
     SELECT $1, week, $3, requests, unknown_usage_requests, unpriced_requests, input_tokens, \
         output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, \
         cost_usd FROM moved \
     ON CONFLICT (tenant_id, user_id, week) DO UPDATE SET \
         requests = token_usage_user_weekly.requests + EXCLUDED.requests, \
         unknown_usage_requests = token_usage_user_weekly.unknown_usage_requests \
             + EXCLUDED.unknown_usage_requests, \
         unpriced_requests = token_usage_user_weekly.unpriced_requests \
             + EXCLUDED.unpriced_requests, \
         input_tokens = token_usage_user_weekly.input_tokens + EXCLUDED.input_tokens, \
         output_tokens = token_usage_user_weekly.output_tokens + EXCLUDED.output_tokens, \
         cache_read_tokens = token_usage_user_weekly.cache_read_tokens \
             + EXCLUDED.cache_read_tokens, \
         cache_write_tokens = token_usage_user_weekly.cache_write_tokens \
             + EXCLUDED.cache_write_tokens, \
         reasoning_tokens = token_usage_user_weekly.reasoning_tokens + EXCLUDED.reasoning_tokens, \
         total_tokens = token_usage_user_weekly.total_tokens + EXCLUDED.total_tokens, \
         cost_usd = token_usage_user_weekly.cost_usd + EXCLUDED.cost_usd",
    "WITH moved AS (DELETE FROM activity_user_last_seen WHERE tenant_id = $1 AND user_id = $2 \
         RETURNING last_seen) \
     INSERT INTO activity_user_last_seen (tenant_id, user_id, last_seen) \
     SELECT $1, $3, last_seen FROM moved \
     ON CONFLICT (tenant_id, user_id) DO UPDATE \
         SET last_seen = greatest(activity_user_last_seen.last_seen, EXCLUDED.last_seen)",
];
