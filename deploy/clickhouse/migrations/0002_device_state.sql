-- The latest state of each stateful stage per device (geofence and trips),
-- inserted with the rows it derived: what a restarted stage resumes from.
-- Read with FINAL (or argMax by updated_at): older versions are merged away.
CREATE TABLE IF NOT EXISTS {{DB}}.device_state
(
    kind {{LC}} COMMENT 'whose state: geo (fences inside, trip in progress) or waypoints (the device''s own regions)',
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    state String COMMENT 'the state, JSON, in the owning stage''s format',
    updated_at {{TIME_MS}} COMMENT 'when it was written, milliseconds since the UNIX epoch'
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (kind, user, device);
