-- Warehouse tables pmg reads. Portable between DuckDB and PostgreSQL: plain types only.
-- Lists (categories) are '|'-separated text and attributes are JSON text, so both engines store them alike.
CREATE TABLE IF NOT EXISTS items (
    item_id      VARCHAR PRIMARY KEY,
    title        VARCHAR NOT NULL,
    categories   VARCHAR,          -- 'Action|Comedy'
    description  VARCHAR,
    attributes   VARCHAR,          -- JSON object: {"era": "1990s", "mood": "dark", ...}
    image_uri    VARCHAR,
    updated_at   TIMESTAMP
);

CREATE TABLE IF NOT EXISTS users (
    user_id      VARCHAR PRIMARY KEY,
    created_at   TIMESTAMP,
    country      VARCHAR
);

CREATE TABLE IF NOT EXISTS events (
    event_id       VARCHAR,
    user_id        VARCHAR,
    item_id        VARCHAR,
    session_id     VARCHAR,
    event_type     VARCHAR,        -- view | click | add_to_cart | purchase
    event_ts       TIMESTAMP,      -- UTC, no time zone
    dwell_seconds  DOUBLE PRECISION
);
