-- Desired and reported state (issue 17): each device has a desired
-- document (written by clients, PATCH /v1/devices/{id}/state/desired) and a
-- reported one (merge patches the device sends in "report" frames), each
-- with a version that grows by one per change. A device without a row has
-- empty documents at version 0: the row is written on the first change.

-- +goose Up
CREATE TABLE device_state (
    device_id           text PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    desired             jsonb NOT NULL DEFAULT '{}' CONSTRAINT device_state_desired_object CHECK (jsonb_typeof(desired) = 'object'),
    desired_version     bigint NOT NULL DEFAULT 0,
    desired_updated_at  timestamptz,
    reported            jsonb NOT NULL DEFAULT '{}' CONSTRAINT device_state_reported_object CHECK (jsonb_typeof(reported) = 'object'),
    reported_version    bigint NOT NULL DEFAULT 0,
    reported_updated_at timestamptz
);

-- A JSON merge patch (RFC 7396) applied to target: an object patch merges
-- key by key (null deletes a key, nested objects merge), anything else
-- replaces the target. In PL/pgSQL, not SQL, because it calls itself.
-- +goose StatementBegin
CREATE FUNCTION sb_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF patch IS NULL OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    RETURN (
        SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
        FROM (SELECT coalesce(p.key, t.key) AS k,
                     CASE WHEN p.key IS NULL THEN t.value ELSE sb_merge_patch(t.value, p.value) END AS v
              FROM jsonb_each(CASE WHEN jsonb_typeof(target) = 'object' THEN target ELSE '{}'::jsonb END) t
              FULL JOIN jsonb_each(patch) p ON p.key = t.key
              WHERE p.key IS NULL OR jsonb_typeof(p.value) <> 'null') s);
END
$$;
-- +goose StatementEnd

-- The delta: the desired keys whose values differ from the reported ones
-- (top-level keys, compared as JSON values: 1 and 1.0 are equal).
CREATE FUNCTION sb_state_delta(desired jsonb, reported jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(d.key, d.value), '{}'::jsonb)
    FROM jsonb_each(desired) d
    WHERE reported -> d.key IS DISTINCT FROM d.value
$$;

-- +goose Down
DROP FUNCTION sb_state_delta(jsonb, jsonb);
DROP FUNCTION sb_merge_patch(jsonb, jsonb);
DROP TABLE device_state;
