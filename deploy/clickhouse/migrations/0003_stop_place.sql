-- A stop names the fence it lies in (a server fence or the device's own
-- region, the smallest if several), so that time spent at a place is a
-- query on stops; '' outside every fence. The comment is its own
-- statement: 18.16 ignores one given with ADD COLUMN.
ALTER TABLE {{DB}}.stops ADD COLUMN place {{LC}} DEFAULT '';
ALTER TABLE {{DB}}.stops COMMENT COLUMN place 'the fence the stop lies in (server fence or own region), the smallest if several; empty outside every fence';
