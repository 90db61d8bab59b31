-- Clickstream events of one extraction window, [:window_start, :window_end).
-- Columns are listed, never *, so a warehouse that grows a column does not change the files we write.
SELECT event_id, user_id, item_id, session_id, event_type, event_ts, dwell_seconds
FROM events
WHERE event_ts >= :window_start AND event_ts < :window_end
ORDER BY event_ts, event_id
