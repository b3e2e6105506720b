-- Row-level security for the admin API's queries (defence in depth behind the
-- API's own tenant filters). Re-applied by every `tally migrate` / start, after
-- the versioned migrations, so tables added later are covered too. Idempotent.
--
-- * Role `tally_api` (NOLOGIN): the admin API's connections `SET ROLE tally_api`.
--   It may SELECT every Tally table except tally_secrets and the migration log,
--   and never a partition directly (partitions carry no policy).
-- * Every table with a `tenant_id` column gets FORCE ROW LEVEL SECURITY and two
--   policies: `tally_api_tenant` lets tally_api read the rows of the tenant named
--   by the session setting `tally.tenant` ('*' = every tenant; unset or '' = no
--   rows), and `tally_others` leaves every other role (the writer, rollups,
--   retention) unrestricted.
-- * The tenant-less rollups (`*_all`, migration 0008) get FORCE ROW LEVEL
--   SECURITY too: `tally_api_all` shows them to tally_api only when
--   `tally.tenant` is '*'; `tally_others` as above.
-- Without the right to create the role (no CREATEROLE), Tally warns and the
-- admin API runs on its own tenant filters alone.
DO $rls$
DECLARE
    t text;
    -- The session values are read once per statement (scalar subqueries become
    -- init plans), not once per row: current_setting() per row cost about a
    -- microsecond per rollup row read, and `tenant_id = (SELECT …)` can be an
    -- index condition.
    others_using text := '(SELECT current_user) <> ''tally_api''';
    others_check text := 'current_user <> ''tally_api''';
    tenant_using text := '(SELECT current_setting(''tally.tenant'', true)) = ''*'' '
        'OR tenant_id = (SELECT nullif(current_setting(''tally.tenant'', true), ''''))';
    all_using text := '(SELECT current_setting(''tally.tenant'', true)) = ''*''';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_api') THEN
        BEGIN
            CREATE ROLE tally_api NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL; -- created meanwhile by another database's migration
            WHEN insufficient_privilege THEN
                RAISE WARNING 'tally: cannot create role tally_api (%): the admin API runs without row-level security', SQLERRM;
                RETURN;
        END;
    END IF;
    IF NOT pg_has_role(current_user, 'tally_api', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT tally_api TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'tally: cannot grant role tally_api to % (%): the admin API runs without row-level security', current_user, SQLERRM;
            RETURN;
        END;
    END IF;
    -- Grants only what is missing: a GRANT rewrites the catalog row even when
    -- nothing changes, which would contend with concurrent partition creation.
    IF NOT has_schema_privilege('tally_api', current_schema(), 'USAGE') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO tally_api', current_schema());
    END IF;
    FOR t IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname NOT IN ('tally_secrets', 'tally_schema_migrations')
          AND c.relpersistence IN ('p', 'u')
    LOOP
        IF NOT has_table_privilege('tally_api', format('%I', t), 'SELECT') THEN
            EXECUTE format('GRANT SELECT ON %I TO tally_api', t);
        END IF;
    END LOOP;
    FOR t IN
        SELECT c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relpersistence IN ('p', 'u')
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_policies
                       WHERE schemaname = current_schema() AND tablename = t
                         AND policyname = 'tally_api_tenant') THEN
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
            EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
            EXECUTE format('CREATE POLICY tally_others ON %I USING (%s) WITH CHECK (%s)',
                           t, others_using, others_check);
            EXECUTE format('CREATE POLICY tally_api_tenant ON %I FOR SELECT TO tally_api USING (%s)',
                           t, tenant_using);
        ELSIF EXISTS (SELECT 1 FROM pg_policies
                      WHERE schemaname = current_schema() AND tablename = t
                        AND policyname IN ('tally_api_tenant', 'tally_others')
                        AND qual NOT LIKE '%SELECT%') THEN
            -- Policies of an older Tally, which called current_setting() per row.
            EXECUTE format('ALTER POLICY tally_others ON %I USING (%s) WITH CHECK (%s)',
                           t, others_using, others_check);
            EXECUTE format('ALTER POLICY tally_api_tenant ON %I USING (%s)', t, tenant_using);
        END IF;
    END LOOP;
    -- The rollups over all tenants (migration 0008) have no tenant_id: tally_api
    -- reads them only as a platform caller (tally.tenant = '*').
    FOR t IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname IN ('activity_daily_all', 'token_usage_daily_all',
                            'token_usage_latency_daily_all', 'token_usage_ttft_daily_all',
                            'token_usage_speed_daily_all', 'token_usage_latency_weekly_all',
                            'token_usage_speed_weekly_all',
                            'activity_users_daily_all', 'activity_user_last_seen_all')
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_policies
                       WHERE schemaname = current_schema() AND tablename = t
                         AND policyname = 'tally_api_all') THEN
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
            EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
            EXECUTE format('CREATE POLICY tally_others ON %I USING (%s) WITH CHECK (%s)',
                           t, others_using, others_check);
            EXECUTE format('CREATE POLICY tally_api_all ON %I FOR SELECT TO tally_api USING (%s)',
                           t, all_using);
        ELSIF EXISTS (SELECT 1 FROM pg_policies
                      WHERE schemaname = current_schema() AND tablename = t
                        AND policyname IN ('tally_api_all', 'tally_others')
                        AND qual NOT LIKE '%SELECT%') THEN
            EXECUTE format('ALTER POLICY tally_others ON %I USING (%s) WITH CHECK (%s)',
                           t, others_using, others_check);
            EXECUTE format('ALTER POLICY tally_api_all ON %I USING (%s)', t, all_using);
        END IF;
    END LOOP;
END
$rls$;

-- Own rows only (scope `self:read`): the admin API also sets `tally.user` on
-- each connection ('' for every other caller). The RESTRICTIVE policy
-- `tally_api_user` (ANDed with the tenant policy) lets tally_api read, of a
-- table with `user_id`, only that user's rows when it is set; of a tenant table
-- without `user_id` (tenant-level rollups, chain, quarantine), nothing then.
-- The tenant-less `*_all` rollups need tally.tenant = '*', never set for such a
-- caller.
DO $rls_user$
DECLARE
    t text;
    has_user boolean;
    any_user text := '(SELECT coalesce(current_setting(''tally.user'', true), '''')) = ''''';
    own_user text := '(SELECT coalesce(current_setting(''tally.user'', true), '''')) = '''' '
        'OR user_id = (SELECT nullif(current_setting(''tally.user'', true), ''''))';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_api') THEN
        RETURN;
    END IF;
    FOR t, has_user IN
        SELECT c.relname,
               EXISTS (SELECT 1 FROM pg_attribute u
                       WHERE u.attrelid = c.oid AND u.attname = 'user_id' AND NOT u.attisdropped)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relpersistence IN ('p', 'u')
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_policies
                       WHERE schemaname = current_schema() AND tablename = t
                         AND policyname = 'tally_api_user') THEN
            EXECUTE format('CREATE POLICY tally_api_user ON %I AS RESTRICTIVE FOR SELECT TO tally_api USING (%s)',
                           t, CASE WHEN has_user THEN own_user ELSE any_user END);
        END IF;
    END LOOP;
END
$rls_user$;

-- The newest committed seq of a raw table over every tenant: where a live feed
-- starts and how far its reader may move. The admin API's role sees only one
-- tenant's rows, so it reads this position through the owner's rights.
-- One static statement per table, so that each session plans it once (a
-- dynamic EXECUTE planned `max(seq)` over every daily partition at each call:
-- 3-16 ms at 97 partitions, against ~0.6 ms executing the cached plan).
CREATE OR REPLACE FUNCTION tally_newest_seq(table_name text) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $f$
DECLARE
    newest bigint;
BEGIN
    CASE table_name
        WHEN 'activity_events' THEN
            SELECT coalesce(max(seq), 0) INTO newest FROM activity_events;
        WHEN 'token_usage' THEN
            SELECT coalesce(max(seq), 0) INTO newest FROM token_usage;
        WHEN 'rejected_events' THEN
            SELECT coalesce(max(seq), 0) INTO newest FROM rejected_events;
        ELSE
            RAISE EXCEPTION 'tally_newest_seq: not a raw table: %', table_name;
    END CASE;
    RETURN newest;
END
$f$;
REVOKE ALL ON FUNCTION tally_newest_seq(text) FROM PUBLIC;
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_api')
       AND NOT has_function_privilege('tally_api', 'tally_newest_seq(text)', 'EXECUTE') THEN
        GRANT EXECUTE ON FUNCTION tally_newest_seq(text) TO tally_api;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$grant$;

-- Where `GET /api/v1/verify` resumes (migration 23): the admin API's role reads
-- `chain_verify_resume` under the tenant policy and writes it only through this
-- function, for the tenant its session may read (`tally.tenant` = that tenant, or
-- '*'), never another.
CREATE OR REPLACE FUNCTION tally_verify_resume_save(
    p_tenant text, p_seq bigint, p_head_hash bytea, p_signed_at text, p_key_id text,
    p_key_trusted boolean
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT AS $f$
DECLARE
    session_tenant text := coalesce(current_setting('tally.tenant', true), '');
BEGIN
    IF session_tenant <> '*' AND (session_tenant = '' OR session_tenant <> p_tenant) THEN
        RAISE EXCEPTION 'tally_verify_resume_save: the session may not write tenant %', p_tenant
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO chain_verify_resume
        (tenant_id, seq, head_hash, signed_at, key_id, key_trusted, verified_at)
    VALUES (p_tenant, p_seq, p_head_hash, p_signed_at, p_key_id, p_key_trusted, now())
    ON CONFLICT (tenant_id) DO UPDATE SET
        seq = EXCLUDED.seq, head_hash = EXCLUDED.head_hash, signed_at = EXCLUDED.signed_at,
        key_id = EXCLUDED.key_id, key_trusted = EXCLUDED.key_trusted,
        verified_at = EXCLUDED.verified_at;
END
$f$;
-- Forgets a tenant's resume point (a walk found the chain tampered), same rule.
CREATE OR REPLACE FUNCTION tally_verify_resume_forget(p_tenant text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT AS $f$
DECLARE
    session_tenant text := coalesce(current_setting('tally.tenant', true), '');
BEGIN
    IF session_tenant <> '*' AND (session_tenant = '' OR session_tenant <> p_tenant) THEN
        RAISE EXCEPTION 'tally_verify_resume_forget: the session may not write tenant %', p_tenant
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM chain_verify_resume WHERE tenant_id = p_tenant;
END
$f$;
REVOKE ALL ON FUNCTION tally_verify_resume_save(text, bigint, bytea, text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION tally_verify_resume_forget(text) FROM PUBLIC;
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_api') THEN
        IF NOT has_function_privilege('tally_api',
               'tally_verify_resume_save(text, bigint, bytea, text, text, boolean)', 'EXECUTE') THEN
            GRANT EXECUTE ON FUNCTION
                tally_verify_resume_save(text, bigint, bytea, text, text, boolean) TO tally_api;
        END IF;
        IF NOT has_function_privilege('tally_api', 'tally_verify_resume_forget(text)', 'EXECUTE') THEN
            GRANT EXECUTE ON FUNCTION tally_verify_resume_forget(text) TO tally_api;
        END IF;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$grant$;
