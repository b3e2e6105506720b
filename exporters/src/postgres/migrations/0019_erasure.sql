-- Tally schema, version 19: erasure of one user that keeps the chain verifiable
-- (see docs/privacy.md, "Erasure", and docs/tamper-evidence.md, "Canonical form v3").

-- The personal attribute keys: removed by an erasure, and hashed into a v3 row's
-- personal digest instead of its public attributes. Fixed for canonical form v3
-- (changing the set would change the form of chained rows): a new set needs a
-- new form.
CREATE OR REPLACE FUNCTION tally_is_personal_key(k text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT k = ANY (ARRAY['user.id', 'user.email', 'user.name', 'user.full_name',
                          'user.hash', 'client.address', 'client.ip', 'source.address',
                          'source.ip', 'network.peer.address', 'net.peer.ip',
                          'net.sock.peer.addr', 'http.client_ip', 'session.id',
                          'session.previous_id'])
        OR k LIKE 'enduser.%'
$$;

-- The personal keys of an attributes object (sorted; empty when none).
CREATE OR REPLACE FUNCTION tally_personal_keys(attrs jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(attrs) = 'object' THEN
        coalesce((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(attrs) AS k
                  WHERE tally_is_personal_key(k)), '{}'::text[])
        ELSE '{}'::text[] END
$$;

-- The personal part of an attributes object (NULL when it has none).
CREATE OR REPLACE FUNCTION tally_personal_attributes(attrs jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(attrs) = 'object' THEN
        (SELECT jsonb_object_agg(k, v) FROM jsonb_each(attrs) AS e(k, v)
         WHERE tally_is_personal_key(k))
        END
$$;

-- A JSON value with the personal keys (and `session_id`) removed at every depth
-- and every occurrence of `subject` inside a string replaced by `pseudonym`: for
-- the unchained JSON of an erased user (token attributes, quarantined records).
CREATE OR REPLACE FUNCTION tally_erase_json(j jsonb, subject text, pseudonym text)
    RETURNS jsonb LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    CASE jsonb_typeof(j)
        WHEN 'object' THEN
            RETURN coalesce((SELECT jsonb_object_agg(replace(k, subject, pseudonym),
                                                     tally_erase_json(v, subject, pseudonym))
                             FROM jsonb_each(j) AS e(k, v)
                             WHERE NOT tally_is_personal_key(k) AND k <> 'session_id'),
                            '{}'::jsonb);
        WHEN 'array' THEN
            RETURN coalesce((SELECT jsonb_agg(tally_erase_json(v, subject, pseudonym) ORDER BY o)
                             FROM jsonb_array_elements(j) WITH ORDINALITY AS a(v, o)),
                            '[]'::jsonb);
        WHEN 'string' THEN
            IF strpos(j #>> '{}', subject) > 0 THEN
                RETURN to_jsonb(replace(j #>> '{}', subject, pseudonym));
            END IF;
            RETURN j;
        ELSE
            RETURN j;
    END CASE;
END
$$;

-- Canonical form v3 (docs/tamper-evidence.md): rows written from now on carry
-- chain_form 3 and a random per-row salt; rows already stored keep NULL (their
-- v1/v2 form). Added without a default first, so existing rows are not rewritten.
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS chain_form smallint;
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS chain_salt bytea;
ALTER TABLE activity_events ALTER COLUMN chain_form SET DEFAULT 3;
ALTER TABLE activity_events ALTER COLUMN chain_salt SET DEFAULT uuid_send(gen_random_uuid());
-- Set by an erasure: its id, the row's personal digest (v3 rows) or the signature
-- over the erased row (v1/v2 rows).
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS erasure_id uuid;
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS erased_digest bytea;
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS erased_signature bytea;

-- One row per erasure of (tenant, user). `subject` holds the user id in clear only
-- while the erasure is pending (to find the rows left after a crash); it is set
-- to NULL in the transaction that completes the erasure. `counts` holds the rows
-- changed per table so far.
CREATE TABLE IF NOT EXISTS erasures (
    id           uuid        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    pseudonym    text        NOT NULL,
    subject      text,
    reason       text        NOT NULL,
    requested_by text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('pending', 'done')),
    counts       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    key_id       text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    event_id     uuid,
    UNIQUE (tenant_id, pseudonym),
    CHECK ((state = 'done') = (subject IS NULL))
);
CREATE INDEX IF NOT EXISTS erasures_pending ON erasures (requested_at) WHERE state = 'pending';
