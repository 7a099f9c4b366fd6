-- Where each device was on each UTC day: the geocoded place and country
-- of its fixes taken, kept by the server as positions are inserted (a
-- materialized view), so that a year's countries and cities never scan a
-- year's positions. A set: ReplacingMergeTree on every column, so a batch
-- inserted twice (a redelivery, the buffer's resend) adds nothing once
-- merged, and reads collapse it (DISTINCT). The day is UNIX s / 86400,
-- free of the server's time zone.
CREATE TABLE IF NOT EXISTS {{DB}}.presence
(
    user {{LC}} COMMENT 'user part of the device identity',
    device {{LC}} COMMENT 'device part of the device identity',
    day UInt32 COMMENT 'UTC day: UNIX seconds / 86400',
    cc {{LC}} COMMENT 'ISO 3166-1 alpha-2 country code of the place',
    place String COMMENT 'nearest populated place, "name, region"'
)
ENGINE = ReplacingMergeTree
ORDER BY (user, device, day, cc, place);
CREATE MATERIALIZED VIEW IF NOT EXISTS {{DB}}.presence_mv TO {{DB}}.presence
AS SELECT user, device, intDiv(toUInt32(tst), 86400) AS day, cc, place
FROM {{DB}}.positions WHERE cc != '' AND filtered = '';
-- The positions stored before this version.
INSERT INTO {{DB}}.presence SELECT DISTINCT user, device, intDiv(toUInt32(tst), 86400) AS day, cc, place
FROM {{DB}}.positions FINAL WHERE cc != '' AND filtered = '';
