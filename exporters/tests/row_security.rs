//! Forced row-level security for the admin API's role, against the real PostgreSQL.

use tally_exporters::postgres::{migrate, API_ROLE};
use tally_exporters::testing::TestDatabase;
use tokio_postgres::Client;

/// The tenant tables and a seq-free count query for each.
const TENANT_TABLES: &[&str] = &[
    "activity_events",
    "token_usage",
    "rejected_events",
    "activity_daily",
    "token_usage_daily",
    "token_calls",
    "token_metric_minutes",
    "trace_identities",
];

/// Two rows per tenant `a`, one for `b`, one without a tenant (''), in every tenant table.
async fn seed(client: &Client) {
    client
        .batch_execute(
            "INSERT INTO activity_events (id, seq, ts, tenant_id, action, outcome) VALUES \
               (gen_random_uuid(), 1, now(), 'a', 'auth.login', 'success'), \
               (gen_random_uuid(), 2, now(), 'a', 'auth.login', 'success'), \
               (gen_random_uuid(), 3, now(), 'b', 'auth.login', 'success'), \
               (gen_random_uuid(), 4, now(), '', 'auth.login', 'success'); \
             INSERT INTO token_usage (id, seq, ts, tenant_id) VALUES \
               (gen_random_uuid(), 1, now(), 'a'), (gen_random_uuid(), 2, now(), 'a'), \
               (gen_random_uuid(), 3, now(), 'b'), (gen_random_uuid(), 4, now(), ''); \
             INSERT INTO rejected_events (id, tenant_id, reason, record) VALUES \
               (gen_random_uuid(), 'a', 'r', '{}'), (gen_random_uuid(), 'a', 'r', '{}'), \
               (gen_random_uuid(), 'b', 'r', '{}'), (gen_random_uuid(), '', 'r', '{}'); \
             INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) VALUES \
               (current_date, 'a', 'u1', 'x', 'success', 1), (current_date, 'a', 'u2', 'x', 'success', 1), \
               (current_date, 'b', 'u1', 'x', 'success', 1), (current_date, '', 'u1', 'x', 'success', 1); \
             INSERT INTO token_usage_daily (day, tenant_id, user_id) VALUES \
               (current_date, 'a', 'u1'), (current_date, 'a', 'u2'), \
               (current_date, 'b', 'u1'), (current_date, '', 'u1'); \
             INSERT INTO token_calls (tenant_id, call_key, ts, id, from_span) VALUES \
               ('a', 'r1', now(), gen_random_uuid(), true), \
               ('a', 'r2', now(), gen_random_uuid(), true), \
               ('b', 'r1', now(), gen_random_uuid(), true), \
               ('', 'r1', now(), gen_random_uuid(), false); \
             INSERT INTO token_metric_minutes (tenant_id, minute, model, token_type, tokens_sum) VALUES \
               ('a', date_trunc('minute', now()), 'm1', 'input', 1), \
               ('a', date_trunc('minute', now()), 'm2', 'input', 1), \
               ('b', date_trunc('minute', now()), 'm1', 'input', 1), \
               ('', date_trunc('minute', now()), 'm1', 'input', 1); \
             INSERT INTO trace_identities (tenant_id, trace_id, user_id) VALUES \
               ('a', 't1', 'u1'), ('a', 't2', 'u2'), ('b', 't1', 'u1'), ('', 't1', 'u1');",
        )
        .await
        .expect("seeding the tenant tables");
}

/// Counts per table as the admin API's role with `tally.tenant` = `tenant`
/// (`None`: the setting is never made in the session).
async fn counts_as_api(db: &TestDatabase, tenant: Option<&str>) -> Vec<i64> {
    let client = db.client().await;
    client
        .batch_execute(&format!("SET ROLE {API_ROLE}"))
        .await
        .expect("SET ROLE tally_api");
    if let Some(tenant) = tenant {
        client
            .execute("SELECT set_config('tally.tenant', $1, false)", &[&tenant])
            .await
            .expect("set tally.tenant");
    }
    let mut counts = Vec::new();
    for table in TENANT_TABLES {
        let row = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"));
        counts.push(row.get::<_, i64>(0));
    }
    counts
}

#[tokio::test]
async fn the_api_role_sees_only_the_tenant_of_its_session() {
    let db = TestDatabase::migrated().await;
    seed(&db.client().await).await;

    assert_eq!(counts_as_api(&db, Some("a")).await, vec![2; 8], "tenant a");
    assert_eq!(counts_as_api(&db, Some("b")).await, vec![1; 8], "tenant b");
    assert_eq!(
        counts_as_api(&db, Some("*")).await,
        vec![4; 8],
        "every tenant"
    );
    assert_eq!(
        counts_as_api(&db, Some("")).await,
        vec![0; 8],
        "'' is no tenant"
    );
    assert_eq!(
        counts_as_api(&db, None).await,
        vec![0; 8],
        "an unset tenant sees nothing"
    );
    assert_eq!(
        counts_as_api(&db, Some("c")).await,
        vec![0; 8],
        "unknown tenant"
    );
    // The owner (the writer's role) is not restricted.
    let owner = db.client().await;
    for table in TENANT_TABLES {
        let n: i64 = owner
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("owner count")
            .get(0);
        assert_eq!(n, 4, "owner sees all rows of {table}");
    }
}

#[tokio::test]
async fn the_api_role_cannot_write_nor_read_secrets_nor_partitions() {
    let db = TestDatabase::migrated().await;
    seed(&db.client().await).await;
    let client = db.client().await;
    client
        .batch_execute(&format!("SET ROLE {API_ROLE}; SET tally.tenant = '*'"))
        .await
        .expect("SET ROLE");
    for statement in [
        "DELETE FROM activity_events",
        "UPDATE activity_events SET action = 'x'",
        "INSERT INTO activity_events (id, seq, ts, action, outcome) VALUES (gen_random_uuid(), 9, now(), 'x', 'success')",
        "SELECT count(*) FROM tally_secrets",
    ] {
        let error = client
            .batch_execute(statement)
            .await
            .expect_err(statement);
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {error}"
        );
    }
    let partition: String = db
        .client()
        .await
        .query_one(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'activity_events'::regclass LIMIT 1",
            &[],
        )
        .await
        .expect("a partition")
        .get(0);
    let error = client
        .batch_execute(&format!("SELECT count(*) FROM {partition}"))
        .await
        .expect_err("a partition read directly");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    // The newest position is readable through the definer function, over every tenant.
    client
        .batch_execute("SET tally.tenant = 'b'")
        .await
        .expect("tenant b");
    let newest: i64 = client
        .query_one("SELECT tally_newest_seq('activity_events')", &[])
        .await
        .expect("tally_newest_seq")
        .get(0);
    assert_eq!(newest, 4);
    let error = client
        .query_one("SELECT tally_newest_seq('tally_secrets')", &[])
        .await
        .expect_err("only raw tables");
    let message = error.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("not a raw table")),
        "{error:?}"
    );
}

#[tokio::test]
async fn policies_are_applied_once_and_survive_a_second_migration() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    migrate(&client).await.expect("second migrate");
    let rows = client
        .query(
            "SELECT tablename::text, count(*) FROM pg_policies \
             WHERE policyname IN ('tally_api_tenant', 'tally_others') GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .expect("policies");
    for table in TENANT_TABLES {
        let row = rows
            .iter()
            .find(|row| row.get::<_, String>(0) == *table)
            .unwrap_or_else(|| panic!("{table} has no policy"));
        assert_eq!(row.get::<_, i64>(1), 2, "{table}: two policies");
    }
    let forced: Vec<String> = client
        .query(
            "SELECT relname::text FROM pg_class WHERE relforcerowsecurity AND relrowsecurity \
             AND NOT relispartition ORDER BY 1",
            &[],
        )
        .await
        .expect("forced tables")
        .iter()
        .map(|row| row.get(0))
        .collect();
    for table in TENANT_TABLES {
        assert!(
            forced.iter().any(|t| t == table),
            "{table} not forced: {forced:?}"
        );
    }
}

#[tokio::test]
async fn the_rollups_over_every_tenant_show_only_to_platform_callers() {
    let db = TestDatabase::migrated().await;
    let owner = db.client().await;
    seed(&owner).await;
    owner
        .batch_execute("SELECT tally_rebuild_coarse_rollups()")
        .await
        .expect("rebuild the derived rollups");
    let tables = [
        ("activity_daily_all", 1),
        ("token_usage_daily_all", 1),
        ("activity_users_daily_all", 1),
        ("activity_user_last_seen_all", 2),
        ("activity_daily_tenant", 3),
        ("activity_user_last_seen", 4),
    ];
    for (tenant, expect_all, expect_tenant) in [
        (Some("*"), true, [3, 4]),
        (Some("a"), false, [1, 2]),
        (Some(""), false, [0, 0]),
        (None, false, [0, 0]),
    ] {
        let client = db.client().await;
        client
            .batch_execute(&format!("SET ROLE {API_ROLE}"))
            .await
            .expect("SET ROLE tally_api");
        if let Some(tenant) = tenant {
            client
                .execute("SELECT set_config('tally.tenant', $1, false)", &[&tenant])
                .await
                .expect("set tally.tenant");
        }
        for (i, (table, all_rows)) in tables.iter().enumerate() {
            let n: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap_or_else(|e| panic!("count {table}: {e}"))
                .get(0);
            let expected = if i < 4 {
                if expect_all {
                    *all_rows
                } else {
                    0
                }
            } else {
                expect_tenant[i - 4]
            };
            assert_eq!(n, expected, "{table} as tenant {tenant:?}");
        }
    }
}

#[tokio::test]
async fn a_session_user_limits_the_api_role_to_that_users_rows() {
    let db = TestDatabase::migrated().await;
    let owner = db.client().await;
    seed(&owner).await;
    owner
        .batch_execute(
            "UPDATE activity_events SET user_id = 'u' || seq; \
             UPDATE token_usage SET user_id = 'u' || seq; \
             INSERT INTO activity_daily_tenant (day, tenant_id, action, outcome, events) \
             VALUES (current_date, 'a', 'x', 'success', 2);",
        )
        .await
        .expect("users");
    let client = db.client().await;
    client
        .batch_execute(&format!("SET ROLE {API_ROLE}"))
        .await
        .expect("SET ROLE tally_api");
    let counts = |tenant: &'static str, user: &'static str| {
        let client = &client;
        async move {
            client
                .execute(
                    "SELECT set_config('tally.tenant', $1, false), set_config('tally.user', $2, false)",
                    &[&tenant, &user],
                )
                .await
                .expect("settings");
            let mut counts = Vec::new();
            for table in TENANT_TABLES.iter().chain(&["activity_daily_tenant"]) {
                let row = client
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .unwrap_or_else(|e| panic!("count {table}: {e}"));
                counts.push(row.get::<_, i64>(0));
            }
            counts
        }
    };
    // activity_events, token_usage, rejected_events (no user_id), activity_daily,
    // token_usage_daily, token_calls (no user_id), token_metric_minutes (no user_id),
    // trace_identities, activity_daily_tenant (no user_id).
    assert_eq!(
        counts("a", "u1").await,
        vec![1, 1, 0, 1, 1, 0, 0, 1, 0],
        "a/u1"
    );
    assert_eq!(
        counts("a", "u2").await,
        vec![1, 1, 0, 1, 1, 0, 0, 1, 0],
        "a/u2"
    );
    assert_eq!(
        counts("a", "u3").await,
        vec![0, 0, 0, 0, 0, 0, 0, 0, 0],
        "u3 is b's"
    );
    assert_eq!(
        counts("b", "u3").await,
        vec![1, 1, 0, 0, 0, 0, 0, 0, 0],
        "b/u3"
    );
    assert_eq!(
        counts("*", "u1").await,
        vec![1, 1, 0, 3, 3, 0, 0, 3, 0],
        "a user under *"
    );
    assert_eq!(
        counts("a", "").await,
        vec![2, 2, 2, 2, 2, 2, 2, 2, 1],
        "'' is any user"
    );
}

/// `chain_verify_resume` (migration 23): read under the tenant policy, written by the
/// admin API's role only through `tally_verify_resume_save` / `_forget`, and only for
/// the tenant its session may read.
#[tokio::test]
async fn the_verify_resume_point_is_read_and_written_per_tenant() {
    use tokio_postgres::error::SqlState;
    let db = TestDatabase::migrated().await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO chain_verify_resume (tenant_id, seq, head_hash, signed_at, key_id) VALUES \
               ('a', 1, '\\x00', 't', 'k'), ('b', 2, '\\x00', 't', 'k'), ('', 3, '\\x00', 't', 'k')",
        )
        .await
        .expect("seeding chain_verify_resume");
    let api = db.client().await;
    api.batch_execute(&format!("SET ROLE {API_ROLE}"))
        .await
        .expect("SET ROLE tally_api");
    let seqs = |tenant: &'static str| {
        let api = &api;
        async move {
            api.execute("SELECT set_config('tally.tenant', $1, false)", &[&tenant])
                .await
                .expect("set tally.tenant");
            api.query("SELECT seq FROM chain_verify_resume ORDER BY seq", &[])
                .await
                .expect("read")
                .iter()
                .map(|row| row.get::<_, i64>(0))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(seqs("a").await, vec![1], "tenant a");
    assert_eq!(seqs("b").await, vec![2], "tenant b");
    assert_eq!(seqs("*").await, vec![1, 2, 3], "every tenant");
    assert_eq!(seqs("").await, Vec::<i64>::new(), "'' is no tenant");

    let save = "SELECT tally_verify_resume_save($1, $2, '\\x01'::bytea, 's', 'k2', true)";
    // Tenant a's session writes a's point, not b's, and not directly.
    seqs("a").await;
    api.execute(save, &[&"a", &10_i64])
        .await
        .expect("a saves its own point");
    let error = api
        .execute(save, &[&"b", &20_i64])
        .await
        .expect_err("a writes b's point");
    assert_eq!(
        error.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{error}"
    );
    let error = api
        .execute("SELECT tally_verify_resume_forget('b')", &[])
        .await
        .expect_err("a forgets b's point");
    assert_eq!(
        error.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{error}"
    );
    for statement in [
        "UPDATE chain_verify_resume SET seq = 99",
        "DELETE FROM chain_verify_resume",
        "INSERT INTO chain_verify_resume (tenant_id, seq, head_hash, signed_at, key_id) \
         VALUES ('a', 99, '\\x00', 't', 'k')",
    ] {
        let error = api.batch_execute(statement).await.expect_err(statement);
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {error}"
        );
    }
    // A session without a tenant writes nothing; '*' writes any tenant.
    seqs("").await;
    let error = api
        .execute(save, &[&"", &30_i64])
        .await
        .expect_err("no tenant");
    assert_eq!(
        error.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{error}"
    );
    seqs("*").await;
    api.execute(save, &[&"b", &20_i64])
        .await
        .expect("'*' saves b's point");
    api.execute("SELECT tally_verify_resume_forget('')", &[])
        .await
        .expect("'*' forgets ''");
    let owner = db.client().await;
    let rows: Vec<(String, i64)> = owner
        .query(
            "SELECT tenant_id, seq FROM chain_verify_resume ORDER BY tenant_id",
            &[],
        )
        .await
        .expect("owner reads")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows, vec![("a".to_owned(), 10), ("b".to_owned(), 20)]);
}
