-- Clickstream events of one extraction window, [:window_start, :window_end).
-- Columns are listed, never *, so a warehouse that grows a column does not change the files we write.
-- The order is total (every column breaks ties), so a rerun writes the same rows in the same order on
-- any engine; validation relies on the file being ordered by (event_ts, event_id) and checks that it is.
-- PostgreSQL: sql/indexes.sql gives event_ts an index for the window.
SELECT event_id, user_id, item_id, session_id, event_type, event_ts, dwell_seconds
FROM events
WHERE event_ts >= :window_start AND event_ts < :window_end
ORDER BY event_ts, event_id, user_id, item_id, session_id, event_type, dwell_seconds
