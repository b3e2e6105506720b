-- Tally schema, migration 23: where `GET /api/v1/verify` resumes, kept across restarts.
--
-- An incremental verification resumes from the latest signed checkpoint an earlier
-- intact walk verified (docs/tamper-evidence.md). That point used to live in the admin
-- API's memory only, so every restart walked each tenant's whole chain again. One row
-- per tenant: the checkpoint's seq and head hash and what the report says of it.
-- Written by the admin API through `tally_verify_resume_save` (row_security.sql), read
-- under the tenant policy like every table with a `tenant_id`. The admin API resumes
-- from a stored row only when `chain_checkpoints` still holds that checkpoint with that
-- head hash, and the walk checks that the link and row there still hash to it.
CREATE TABLE IF NOT EXISTS chain_verify_resume (
    tenant_id   text        PRIMARY KEY,
    seq         bigint      NOT NULL,
    head_hash   bytea       NOT NULL,
    signed_at   text        NOT NULL,
    key_id      text        NOT NULL,
    key_trusted boolean,
    verified_at timestamptz NOT NULL DEFAULT now()
);
