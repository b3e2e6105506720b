-- Tally schema, version 15: signed truncation records (see docs/tamper-evidence.md).
--
-- Retention signs each chain_truncations row with the checkpoint signing key
-- (Ed25519 over the truncation message: table, tenant, day, rows, seq range,
-- chained_rows, last chained seq and hash, dropped_at). Verification accepts a
-- missing row only under a record whose signature verifies and whose seq range and
-- counts match the chain. Rows recorded before this version have no signature and
-- are reported as unsigned. Nullable without a default: adding them rewrites nothing.
ALTER TABLE chain_truncations
    ADD COLUMN IF NOT EXISTS chained_rows bigint,
    ADD COLUMN IF NOT EXISTS key_id       text,
    ADD COLUMN IF NOT EXISTS signature    bytea;
