-- Events that no run's window will ever hold, in the whole table: dated before :floor (before the
-- warehouse could exist, e.g. 1970 from a zero timestamp), after :ceiling (now + 1 day: a clock years
-- off, e.g. 2999), or not dated at all. Validation never sees them (extraction reads one window), so each
-- run counts them here and the report says how many there are.
-- One range query each, so PostgreSQL's event_ts index (sql/indexes.sql) and DuckDB's per-row-group
-- min/max answer them without reading the table.
SELECT
    (SELECT count(*) FROM events WHERE event_ts < :floor) AS before_floor,
    (SELECT count(*) FROM events WHERE event_ts > :ceiling) AS after_ceiling,
    (SELECT count(*) FROM events WHERE event_ts IS NULL) AS undated
