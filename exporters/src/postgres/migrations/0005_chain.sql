-- Tally schema, version 5: tamper evidence (see docs/tamper-evidence.md).
--
-- Each tenant's activity_events rows are chained in seq order by the chainer job:
--   row_hash = SHA-256(prev_hash || canonical form of the row)
-- with prev_hash = 32 zero bytes for a tenant's first row. Events without a tenant
-- are chained under tenant_id '' (the value activity_events stores for them).
-- These tables are not partitioned: links outlive the daily partitions that
-- retention drops, so a verified chain survives the drops.

-- One link per chained row. `day` is the UTC day of the row's ts (its partition),
-- `prev_seq` the seq of the tenant's previous link (NULL for the first).
CREATE TABLE IF NOT EXISTS activity_chain (
    tenant_id  text        NOT NULL,
    seq        bigint      NOT NULL,
    day        date        NOT NULL,
    prev_seq   bigint,
    prev_hash  bytea       NOT NULL,
    row_hash   bytea       NOT NULL,
    chained_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, seq)
);

-- The last link of each tenant: where its chain continues.
CREATE TABLE IF NOT EXISTS chain_heads (
    tenant_id  text        PRIMARY KEY,
    seq        bigint      NOT NULL,
    row_hash   bytea       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The chainer's global watermark: every activity_events row with seq <= last_seq
-- has been chained (a row at or below it without a link was inserted out of band).
-- Updated in the same transaction as the links it covers (exactly once).
CREATE TABLE IF NOT EXISTS chain_watermark (
    name               text        PRIMARY KEY,
    last_seq           bigint      NOT NULL DEFAULT 0,
    last_checkpoint_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
INSERT INTO chain_watermark (name) VALUES ('activity_events') ON CONFLICT (name) DO NOTHING;

-- Public halves of the Ed25519 keys that signed checkpoints. key_id is the hex of
-- the first 8 bytes of SHA-256(public_key).
CREATE TABLE IF NOT EXISTS chain_keys (
    key_id     text        PRIMARY KEY,
    public_key bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Signed checkpoints: Ed25519 over the checkpoint message (tenant, seq, head_hash,
-- signed_at; see docs/tamper-evidence.md).
CREATE TABLE IF NOT EXISTS chain_checkpoints (
    tenant_id  text        NOT NULL,
    seq        bigint      NOT NULL,
    head_hash  bytea       NOT NULL,
    signed_at  timestamptz NOT NULL,
    key_id     text        NOT NULL,
    signature  bytea       NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

-- What retention dropped: one row per (partition, tenant), written in the same
-- transaction as the DROP. A link whose row is missing is accounted for only when
-- its tenant and day have a record here.
CREATE TABLE IF NOT EXISTS chain_truncations (
    table_name     text        NOT NULL,
    partition_name text        NOT NULL,
    day            date        NOT NULL,
    tenant_id      text        NOT NULL,
    rows           bigint      NOT NULL,
    min_seq        bigint,
    max_seq        bigint,
    last_chained_seq  bigint,
    last_chained_hash bytea,
    dropped_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, day, tenant_id)
);
