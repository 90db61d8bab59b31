-- The events `pmg evaluate preferences` learns from and tests on: every event dated within the plausible
-- span [:floor, :ceiling] (settings.validation.plausible_since, now + 1 day), with both ids. The evaluation
-- applies the validation rules' id checks itself, in Python, the same on every engine.
SELECT user_id, item_id, event_type, event_ts
FROM events
WHERE event_ts >= :floor AND event_ts <= :ceiling AND user_id IS NOT NULL AND item_id IS NOT NULL
ORDER BY event_ts, event_id, user_id, item_id
