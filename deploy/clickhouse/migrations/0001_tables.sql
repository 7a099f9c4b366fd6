-- otstream base schema. Rendered by `otstream migrate` for the server it
-- connects to: {{...}} placeholders become the best types that server has
-- (see deploy/clickhouse/README.md). Every statement is idempotent.
--
-- Engines: ReplacingMergeTree on each table's natural key, versioned by
-- received_at, so a redelivered or retried row collapses into one (read
-- with FINAL, or let merges do it). Partitions by month.
-- Key columns cannot be Nullable on every supported server: a key field the
-- device did not send is 0 (times) or '' (text) there.

CREATE TABLE IF NOT EXISTS {{DB}}.positions
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    tst DateTime COMMENT 'time of the fix (UNIX seconds, UTC)',
    lat Float64{{CODEC_FLOAT}} COMMENT 'latitude, decimal degrees WGS84',
    lon Float64{{CODEC_FLOAT}} COMMENT 'longitude, decimal degrees WGS84',
    acc Nullable(Int32) COMMENT 'horizontal accuracy radius, metres',
    alt Nullable(Int32) COMMENT 'altitude above sea level, metres',
    vac Nullable(Int32) COMMENT 'vertical accuracy, metres',
    vel Nullable(Int32) COMMENT 'speed, km/h',
    cog Nullable(Int32) COMMENT 'course over ground, degrees clockwise from north',
    batt Nullable(Int32) COMMENT 'battery level, percent',
    bs Nullable(Int32) COMMENT 'battery status: 0 unknown, 1 unplugged, 2 charging, 3 full',
    t Nullable(String) COMMENT 'trigger: p ping, c region, b beacon, r request, u user, t timer, v monitoring, NULL automatic',
    conn Nullable(String) COMMENT 'connectivity: w wifi, m mobile, o offline',
    p Nullable(Float64) COMMENT 'barometric pressure, kPa',
    m Nullable(Int32) COMMENT 'monitoring mode: -1 quiet, 0 manual, 1 significant, 2 move',
    ssid Nullable(String) COMMENT 'Wi-Fi network name',
    bssid Nullable(String) COMMENT 'Wi-Fi access point MAC, as sent',
    created_at Nullable(DateTime) COMMENT 'when the app created the message (UNIX seconds)',
    inregions Array(String) COMMENT 'names of the regions the device is in',
    inrids Array(String) COMMENT 'ids of the regions the device is in',
    topic Nullable(String) COMMENT 'MQTT topic, or the topic field of an HTTP payload',
    transport {{LC}} COMMENT 'http or mqtt',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch',
    extra String COMMENT 'fields without a column, verbatim, as a JSON object (empty if none)'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(tst)
ORDER BY (user, device, tst){{TTL_TST}};

CREATE TABLE IF NOT EXISTS {{DB}}.transitions
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    tst DateTime COMMENT 'time of the transition (UNIX seconds, UTC)',
    wtst DateTime COMMENT 'creation time of the region, identifies it (UNIX seconds; 0 if not sent)',
    lat Float64 COMMENT 'latitude where it fired, decimal degrees',
    lon Float64 COMMENT 'longitude where it fired, decimal degrees',
    acc Nullable(Int32) COMMENT 'accuracy of lat/lon, metres',
    event {{LC}} COMMENT 'enter or leave',
    desc String COMMENT 'region description (empty if not sent)',
    rid Nullable(String) COMMENT 'region id',
    t Nullable(String) COMMENT 'trigger: c circular, b beacon, w wifi, l location',
    source {{LC}} COMMENT 'device (reported by the app) or server (evaluated by otstream)',
    topic Nullable(String) COMMENT 'MQTT topic, or the topic field of an HTTP payload',
    transport {{LC}} COMMENT 'http or mqtt',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch',
    extra String COMMENT 'fields without a column, verbatim, as a JSON object (empty if none)'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(tst)
ORDER BY (user, device, tst, event, source, wtst, desc){{TTL_TST}};

CREATE TABLE IF NOT EXISTS {{DB}}.trips
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    start DateTime COMMENT 'start of the trip (UNIX seconds, UTC)',
    end DateTime COMMENT 'end of the trip (UNIX seconds, UTC)',
    start_lat Float64 COMMENT 'start latitude, decimal degrees',
    start_lon Float64 COMMENT 'start longitude, decimal degrees',
    end_lat Float64 COMMENT 'end latitude, decimal degrees',
    end_lon Float64 COMMENT 'end longitude, decimal degrees',
    distance Float64 COMMENT 'sum of geodesic segments, metres',
    duration UInt32 COMMENT 'end - start, seconds',
    avg_vel Float64 COMMENT 'average speed, km/h',
    max_vel Float64 COMMENT 'maximum speed, km/h',
    points UInt32 COMMENT 'positions in the trip',
    received_at {{TIME_MS}} COMMENT 'when otstream computed it, milliseconds since the UNIX epoch'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(start)
ORDER BY (user, device, start);

CREATE TABLE IF NOT EXISTS {{DB}}.stops
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    start DateTime COMMENT 'arrival (UNIX seconds, UTC)',
    end DateTime COMMENT 'departure (UNIX seconds, UTC)',
    lat Float64 COMMENT 'stop latitude, decimal degrees',
    lon Float64 COMMENT 'stop longitude, decimal degrees',
    duration UInt32 COMMENT 'end - start, seconds',
    points UInt32 COMMENT 'positions during the stop',
    received_at {{TIME_MS}} COMMENT 'when otstream computed it, milliseconds since the UNIX epoch'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(start)
ORDER BY (user, device, start);

CREATE TABLE IF NOT EXISTS {{DB}}.waypoints
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    tst DateTime COMMENT 'creation time of the waypoint, identifies it (UNIX seconds; 0 if not sent)',
    lat Nullable(Float64) COMMENT 'centre latitude, decimal degrees',
    lon Nullable(Float64) COMMENT 'centre longitude, decimal degrees',
    rad Nullable(Int32) COMMENT 'radius, metres',
    desc String COMMENT 'description (empty if not sent)',
    rid String COMMENT 'region id (empty if not sent)',
    uuid Nullable(String) COMMENT 'beacon UUID',
    major Nullable(Int32) COMMENT 'beacon major number',
    minor Nullable(Int32) COMMENT 'beacon minor number',
    topic Nullable(String) COMMENT 'MQTT topic, or the topic field of an HTTP payload',
    transport {{LC}} COMMENT 'http or mqtt',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch',
    extra String COMMENT 'fields without a column, verbatim, as a JSON object (empty if none)'
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY (user, device, tst, desc, rid);

CREATE TABLE IF NOT EXISTS {{DB}}.cards
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    name Nullable(String) COMMENT 'display name',
    face Nullable(String) COMMENT 'base64 PNG or JPEG, 40x40 px by convention',
    topic Nullable(String) COMMENT 'MQTT topic, or the topic field of an HTTP payload',
    transport {{LC}} COMMENT 'http or mqtt',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch',
    extra String COMMENT 'fields without a column, verbatim, as a JSON object (empty if none)'
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY (user, device);

CREATE TABLE IF NOT EXISTS {{DB}}.device_events
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    event {{LC}} COMMENT 'lwt, status, cmd, or the _type of a message otstream does not model',
    tst DateTime COMMENT 'time carried by the message (UNIX seconds; 0 if none)',
    topic Nullable(String) COMMENT 'MQTT topic, or the topic field of an HTTP payload',
    transport {{LC}} COMMENT 'http or mqtt',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch',
    extra String COMMENT 'the message body (status report, command) as a JSON object'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM({{RECEIVED_DATETIME}})
ORDER BY (user, device, event, tst, cityHash64(extra));

CREATE TABLE IF NOT EXISTS {{DB}}.steps
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    tst DateTime COMMENT 'time of the report (UNIX seconds; 0 if not sent)',
    steps Nullable(Int64) COMMENT 'steps walked in the period',
    from DateTime COMMENT 'start of the period (UNIX seconds; 0 if not sent)',
    to DateTime COMMENT 'end of the period (UNIX seconds; 0 if not sent)',
    distance Nullable(Int64) COMMENT 'distance walked, metres',
    floorsup Nullable(Int64) COMMENT 'floors climbed up',
    floorsdown Nullable(Int64) COMMENT 'floors climbed down',
    topic Nullable(String) COMMENT 'MQTT topic, or the topic field of an HTTP payload',
    transport {{LC}} COMMENT 'http or mqtt',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch',
    extra String COMMENT 'fields without a column, verbatim, as a JSON object (empty if none)'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM({{RECEIVED_DATETIME}})
ORDER BY (user, device, from, to, tst);

CREATE TABLE IF NOT EXISTS {{DB}}.beacons
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    tst DateTime COMMENT 'time of the observation (UNIX seconds; 0 if not sent)',
    uuid String COMMENT 'beacon UUID (empty if not sent)',
    major Int32 COMMENT 'beacon major number (-1 if not sent)',
    minor Int32 COMMENT 'beacon minor number (-1 if not sent)',
    acc Nullable(Int32) COMMENT 'accuracy of the proximity, metres',
    rssi Nullable(Int32) COMMENT 'received signal strength, dBm',
    prox Nullable(Int32) COMMENT 'proximity: 0 unknown, 1 immediate, 2 near, 3 far',
    desc Nullable(String) COMMENT 'description of the beacon region',
    topic Nullable(String) COMMENT 'MQTT topic, or the topic field of an HTTP payload',
    transport {{LC}} COMMENT 'http or mqtt',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch',
    extra String COMMENT 'fields without a column, verbatim, as a JSON object (empty if none)'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM({{RECEIVED_DATETIME}})
ORDER BY (user, device, tst, uuid, major, minor);

CREATE TABLE IF NOT EXISTS {{DB}}.configurations
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    mode Nullable(Int32) COMMENT 'connection mode: 0 MQTT, 3 HTTP',
    host Nullable(String) COMMENT 'broker host (MQTT mode)',
    port Nullable(Int32) COMMENT 'broker port (MQTT mode)',
    url Nullable(String) COMMENT 'endpoint URL (HTTP mode), credentials removed',
    username Nullable(String) COMMENT 'user name the app authenticates with',
    device_id Nullable(String) COMMENT 'deviceId configured in the app',
    waypoints UInt32 COMMENT 'number of waypoints in the dump',
    config String COMMENT 'the whole configuration as JSON, secrets removed',
    topic Nullable(String) COMMENT 'MQTT topic, or the topic field of an HTTP payload',
    transport {{LC}} COMMENT 'http or mqtt',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM({{RECEIVED_DATETIME}})
ORDER BY (user, device, cityHash64(config));

CREATE TABLE IF NOT EXISTS {{DB}}.dead_letters
(
    user String COMMENT 'user named by the transport (empty if unknown)',
    device String COMMENT 'device named by the transport (empty if unknown)',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch',
    transport {{LC}} COMMENT 'http or mqtt',
    topic Nullable(String) COMMENT 'MQTT topic',
    remote_addr Nullable(String) COMMENT 'peer address',
    kind {{LC}} COMMENT 'error kind (invalid_json, missing_field, rejected, ...)',
    field Nullable(String) COMMENT 'the field at fault',
    message String COMMENT 'what is wrong',
    payload String COMMENT 'the payload exactly as received (bytes)'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM({{RECEIVED_DATETIME}})
ORDER BY (user, device, received_at, cityHash64(payload));

-- The latest position of every device: one row per device after merges
-- (read with FINAL, or argMax over tst).
CREATE TABLE IF NOT EXISTS {{DB}}.last_positions
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    tid Nullable(String) COMMENT 'tracker id shown by the apps',
    tst DateTime COMMENT 'time of the fix (UNIX seconds, UTC)',
    lat Float64 COMMENT 'latitude, decimal degrees',
    lon Float64 COMMENT 'longitude, decimal degrees',
    acc Nullable(Int32) COMMENT 'horizontal accuracy radius, metres',
    vel Nullable(Int32) COMMENT 'speed, km/h',
    batt Nullable(Int32) COMMENT 'battery level, percent',
    received_at {{TIME_MS}} COMMENT 'when otstream received it, milliseconds since the UNIX epoch'
)
ENGINE = ReplacingMergeTree(tst)
ORDER BY (user, device);

CREATE MATERIALIZED VIEW IF NOT EXISTS {{DB}}.last_positions_mv TO {{DB}}.last_positions
AS SELECT user, device, tid, tst, lat, lon, acc, vel, batt, received_at FROM {{DB}}.positions;
