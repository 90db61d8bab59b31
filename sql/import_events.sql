-- Importers stage rows in a temporary table import_events (the columns of events) and then run this:
-- an event whose event_id is already in the warehouse is skipped, so importing a file twice adds nothing.
-- Copies of one event_id inside the same file all go in: they are the feed's duplicates, and validation
-- quarantines all but the first, with a reason.
INSERT INTO events (event_id, user_id, item_id, session_id, event_type, event_ts, dwell_seconds)
SELECT s.event_id, s.user_id, s.item_id, s.session_id, s.event_type, s.event_ts, s.dwell_seconds
FROM import_events s
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = s.event_id)
