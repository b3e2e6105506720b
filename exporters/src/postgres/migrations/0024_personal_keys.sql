-- Tally schema, version 24: the personal keys of a row named at write time
-- (see docs/privacy.md, "Erasure", and docs/tamper-evidence.md, "Canonical form v3").
--
-- `personal_keys` lists the attribute keys of an activity row that are personal
-- beyond the fixed set of `tally_is_personal_key` (migration 19): the keys the
-- writing instance's redaction config declares personal (`processors.redact.keys`:
-- `personal`, `ip`, `files`) and every key whose value is the row's user id. A v3
-- row hashes them into its personal digest (with the fixed set), and an erasure
-- removes them. NULL (every row stored before this version, and rows without such
-- keys) means the fixed set alone, so rows already chained keep their exact form.
-- The column needs no hash of its own: moving a key between the two parts changes
-- the public attributes the chain commits to.
ALTER TABLE activity_events ADD COLUMN IF NOT EXISTS personal_keys text[];

-- The personal keys of an attributes object: the fixed set and `extra` (sorted;
-- empty when none).
CREATE OR REPLACE FUNCTION tally_personal_keys(attrs jsonb, extra text[]) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(attrs) = 'object' THEN
        coalesce((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(attrs) AS k
                  WHERE tally_is_personal_key(k) OR k = ANY (coalesce(extra, '{}'::text[]))),
                 '{}'::text[])
        ELSE '{}'::text[] END
$$;

-- The personal part of an attributes object under the fixed set and `extra`
-- (NULL when it has none).
CREATE OR REPLACE FUNCTION tally_personal_attributes(attrs jsonb, extra text[]) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(attrs) = 'object' THEN
        (SELECT jsonb_object_agg(k, v) FROM jsonb_each(attrs) AS e(k, v)
         WHERE tally_is_personal_key(k) OR k = ANY (coalesce(extra, '{}'::text[])))
        END
$$;

-- Whether `k` matches one of `patterns` (exact, or a prefix when the pattern ends
-- in `*`), as `processors.redact.keys` declares keys.
CREATE OR REPLACE FUNCTION tally_key_matches(k text, patterns text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT EXISTS (SELECT 1 FROM unnest(coalesce(patterns, '{}'::text[])) AS p
                   WHERE CASE WHEN right(p, 1) = '*'
                              THEN left(k, length(p) - 1) = left(p, length(p) - 1)
                              ELSE k = p END)
$$;

-- `tally_erase_json` (migration 19) that also removes the keys matching
-- `patterns` (the configured personal keys) at every depth.
CREATE OR REPLACE FUNCTION tally_erase_json(j jsonb, subject text, pseudonym text,
                                            patterns text[])
    RETURNS jsonb LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    CASE jsonb_typeof(j)
        WHEN 'object' THEN
            RETURN coalesce((SELECT jsonb_object_agg(replace(k, subject, pseudonym),
                                                     tally_erase_json(v, subject, pseudonym,
                                                                      patterns))
                             FROM jsonb_each(j) AS e(k, v)
                             WHERE NOT tally_is_personal_key(k) AND k <> 'session_id'
                               AND NOT tally_key_matches(k, patterns)),
                            '{}'::jsonb);
        WHEN 'array' THEN
            RETURN coalesce((SELECT jsonb_agg(tally_erase_json(v, subject, pseudonym, patterns)
                                              ORDER BY o)
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

-- The archive data files (`retention.archive.dir`) that held rows of the erased
-- user when the erasure finished: archives are not rewritten, so the record says
-- which files still hold the user in clear (docs/privacy.md, "Erasure").
ALTER TABLE erasures ADD COLUMN IF NOT EXISTS archives jsonb NOT NULL DEFAULT '[]'::jsonb;
