-- Places from the offline geocoder (GeoNames cities of 1,000 people or
-- more): the nearest one's "name, region" and ISO country code; '' when
-- none is within geocode.max_km. A stop's `place` is its fence, so its
-- nearest place is `locality`. Each comment is its own statement: 18.16
-- ignores one given with ADD COLUMN.
ALTER TABLE {{DB}}.positions ADD COLUMN place String DEFAULT '';
ALTER TABLE {{DB}}.positions ADD COLUMN cc {{LC}} DEFAULT '';
ALTER TABLE {{DB}}.positions COMMENT COLUMN place 'nearest populated place, "name, region"; empty if none within geocode.max_km';
ALTER TABLE {{DB}}.positions COMMENT COLUMN cc 'ISO 3166-1 alpha-2 country code of that place';
ALTER TABLE {{DB}}.trips ADD COLUMN start_place String DEFAULT '';
ALTER TABLE {{DB}}.trips ADD COLUMN start_cc {{LC}} DEFAULT '';
ALTER TABLE {{DB}}.trips ADD COLUMN end_place String DEFAULT '';
ALTER TABLE {{DB}}.trips ADD COLUMN end_cc {{LC}} DEFAULT '';
ALTER TABLE {{DB}}.trips COMMENT COLUMN start_place 'nearest populated place to the start, "name, region"';
ALTER TABLE {{DB}}.trips COMMENT COLUMN start_cc 'ISO country code of start_place';
ALTER TABLE {{DB}}.trips COMMENT COLUMN end_place 'nearest populated place to the end, "name, region"';
ALTER TABLE {{DB}}.trips COMMENT COLUMN end_cc 'ISO country code of end_place';
ALTER TABLE {{DB}}.stops ADD COLUMN locality String DEFAULT '';
ALTER TABLE {{DB}}.stops ADD COLUMN cc {{LC}} DEFAULT '';
ALTER TABLE {{DB}}.stops COMMENT COLUMN locality 'nearest populated place, "name, region" (place is the fence)';
ALTER TABLE {{DB}}.stops COMMENT COLUMN cc 'ISO country code of locality';
