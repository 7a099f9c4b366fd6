-- A stop names the fence it lies in (a server fence or the device's own
-- region, the smallest if several), so that time spent at a place is a
-- query on stops; '' outside every fence.
ALTER TABLE {{DB}}.stops ADD COLUMN place {{LC}} DEFAULT '' COMMENT 'the fence the stop lies in, the smallest if several; empty outside every fence';
