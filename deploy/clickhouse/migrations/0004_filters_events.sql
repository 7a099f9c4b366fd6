-- The position filters' verdict: why a fix was set aside (zero, future,
-- speed, ...), '' for a fix taken into fences, trips, last positions and
-- events. The comment is its own statement: 18.16 ignores one given with
-- ADD COLUMN.
ALTER TABLE {{DB}}.positions ADD COLUMN filtered {{LC}} DEFAULT '';
ALTER TABLE {{DB}}.positions COMMENT COLUMN filtered 'why the position filters set the fix aside; empty when taken';

-- Every event told (webhooks, MQTT), as delivered; one row per id after
-- merges.
CREATE TABLE IF NOT EXISTS {{DB}}.events
(
    id String COMMENT 'stable: kind:user/device:tst[:fence]',
    kind {{LC}} COMMENT 'enter, leave, trip_started, trip_ended, stop_started, stop_ended, silent, back, battery_low',
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tst DateTime COMMENT 'when it happened (UNIX seconds, UTC)',
    lat Float64 COMMENT 'where, decimal degrees',
    lon Float64 COMMENT 'where, decimal degrees',
    fence String COMMENT 'the fence or region it concerns; empty if none',
    body String COMMENT 'the event as delivered, JSON',
    received_at {{TIME_MS}} COMMENT 'received_at of the message that caused it, milliseconds since the UNIX epoch'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(tst)
ORDER BY (user, device, tst, id);

-- The last position is the last one taken: a fix dated next year or 500 km
-- off is not where the device is.
DROP TABLE IF EXISTS {{DB}}.last_positions_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS {{DB}}.last_positions_mv TO {{DB}}.last_positions
AS SELECT user, device, tid, tst, lat, lon, acc, vel, batt, received_at FROM {{DB}}.positions WHERE filtered = '';
