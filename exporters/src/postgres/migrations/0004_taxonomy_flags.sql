-- Tally schema, version 4: the taxonomy verdict of each stored activity event, and
-- the table of generated secrets.
-- taxonomy_valid: NULL = not checked (processors.validate.mode off), true = a declared
-- action with valid metadata, false = stored flagged (mode lenient) with the reason
-- code in taxonomy_reason. In mode strict such events go to rejected_events instead.
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS taxonomy_valid boolean;
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS taxonomy_reason text;

-- Secrets Tally generates for itself and shares between instances, e.g. the
-- redaction HMAC key when processors.redact.hmac_key is not configured.
CREATE TABLE IF NOT EXISTS tally_secrets (
    name       text        PRIMARY KEY,
    value      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
