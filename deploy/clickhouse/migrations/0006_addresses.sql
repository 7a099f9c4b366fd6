-- Street addresses, filled in after the fact by the addresses job
-- ([geocode.addresses]): NULL until asked, '' when the geocoder found
-- nothing. The job writes a row again with its address and a version one
-- millisecond newer (ReplacingMergeTree keeps it).
ALTER TABLE {{DB}}.stops ADD COLUMN address Nullable(String);
ALTER TABLE {{DB}}.stops COMMENT COLUMN address 'street address from the external geocoder; NULL until asked, empty if none';
ALTER TABLE {{DB}}.trips ADD COLUMN start_address Nullable(String);
ALTER TABLE {{DB}}.trips ADD COLUMN end_address Nullable(String);
ALTER TABLE {{DB}}.trips COMMENT COLUMN start_address 'street address of the start; NULL until asked, empty if none';
ALTER TABLE {{DB}}.trips COMMENT COLUMN end_address 'street address of the end; NULL until asked, empty if none';
-- The cache: one row per geohash cell ever asked.
CREATE TABLE IF NOT EXISTS {{DB}}.addresses
(
    cell String COMMENT 'geohash of the cell asked for (its centre)',
    address String COMMENT 'the answer; empty when the geocoder found nothing',
    fetched_at {{TIME_MS}} COMMENT 'when it was asked, milliseconds since the UNIX epoch'
)
ENGINE = ReplacingMergeTree(fetched_at)
ORDER BY cell;
