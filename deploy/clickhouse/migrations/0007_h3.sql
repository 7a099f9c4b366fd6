-- The heatmap's cells: each position's H3 index at resolutions 5, 7 and 9
-- (about 250, 5 and 0.1 km² a cell), computed by the sink as it writes
-- (18.16 has no geoToH3). 0 for positions stored before this version.
ALTER TABLE {{DB}}.positions ADD COLUMN h3_5 UInt64 DEFAULT 0;
ALTER TABLE {{DB}}.positions ADD COLUMN h3_7 UInt64 DEFAULT 0;
ALTER TABLE {{DB}}.positions ADD COLUMN h3_9 UInt64 DEFAULT 0;
ALTER TABLE {{DB}}.positions COMMENT COLUMN h3_5 'H3 cell at resolution 5 (0: stored before cells were)';
ALTER TABLE {{DB}}.positions COMMENT COLUMN h3_7 'H3 cell at resolution 7';
ALTER TABLE {{DB}}.positions COMMENT COLUMN h3_9 'H3 cell at resolution 9';
