//! End-to-end tests of the `otstream` binary, one module per area.
#![allow(clippy::unwrap_used)] // helpers of a test binary state expectations with unwrap

// Street addresses from an external geocoder, in both stores.
mod addresses;
// The read API, the live feed and the map page: both stores, formats, access, a real browser.
mod api;
// ClickHouse: migrations, every table, rejections, README queries, outages.
mod clickhouse;
// `otstream decode` on the payload spec's examples, files and stdin.
mod decode_cli;
// Events out (webhooks, MQTT) and the position filters.
mod events;
// The attacker's tests: device text in pages, bounds at every door, access.
mod hostile;
// `otstream import`: Recorder trees, GPX, GeoJSON, Takeout; re-imports; flat memory.
mod import;
// Server-side geofences, trips and stops: store, ClickHouse, reloads, restarts.
mod geofence;
// `otstream fleet`, `replay` and `record` against serve, Mosquitto and Tansu.
mod loadgen;
// The Kafka bus against Tansu: topics, delivery reports, groups, commits.
mod kafka;
// MQTT ingress with a real broker and client: types, sessions, crashes, sharing.
mod mqtt;
// Stages as separate processes over Kafka: kills, rebalances, backpressure.
mod pipeline;
// Places and visits: stops clustered per device and per user, both stores, a crash.
mod places;
// Rules: every per-device kind through a crash and a bad reload; `rules test` agrees.
mod rules;
// Recorder's clients: /ws/last, /api/0/last as Recorder writes it, CORS, its web frontend in a browser.
mod recorder_clients;
// `otstream serve`: HTTP in, embedded store out, overload, shutdown, crashes.
mod serve;
