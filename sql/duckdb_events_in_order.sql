-- DuckDB only. Whether the window's events, in the order the table stores them, are already in strictly
-- increasing (event_ts, event_id) order with no null event_id: returns 0 rows when they are, 1 row at
-- the first that is not. A clickstream appended in time order usually is, and then extraction writes the
-- rows as stored instead of sorting ten million of them: the same rows in the same order either way,
-- because strictly increasing (event_ts, event_id) leaves the other ORDER BY columns nothing to decide.
-- lag() OVER () streams in storage order (preserve_insertion_order); the snapshot is the COPY's own.
SELECT 1
FROM (
    SELECT event_ts, event_id,
           lag(event_ts) OVER () AS previous_ts,
           lag(event_id) OVER () AS previous_id
    FROM events
    WHERE event_ts >= :window_start AND event_ts < :window_end
)
WHERE event_id IS NULL
   OR NOT (event_ts > previous_ts OR (event_ts = previous_ts AND event_id > previous_id))
LIMIT 1
