-- Indexes for server databases (PostgreSQL). Not applied to DuckDB, whose per-row-group min/max already
-- serve a window on event_ts and where an index would only slow every insert.
-- event_ts: the extraction window. event_id: the importers' "is this event already here?".
CREATE INDEX IF NOT EXISTS events_event_ts ON events (event_ts);
CREATE INDEX IF NOT EXISTS events_event_id ON events (event_id);
