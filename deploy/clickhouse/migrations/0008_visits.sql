-- Places: each stop names the place it is a visit of, the start of that
-- place's first stop (UNIX s), assigned by the geofence stage as the stop
-- is found; 0 for stops stored before this version. A place's figures
-- (visits, dwell, centre) are read from its stops.
ALTER TABLE {{DB}}.stops ADD COLUMN place_id UInt32 DEFAULT 0;
ALTER TABLE {{DB}}.stops COMMENT COLUMN place_id 'the place this stop is a visit of: the start of its first stop, UNIX s (0: stored before places)';
