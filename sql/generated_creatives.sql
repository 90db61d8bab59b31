-- The published creatives, one row per (run date, campaign, user, target item, rank): what a recommender
-- service joins against. Portable DDL (DuckDB and PostgreSQL). Written by publish (sql/upsert_generated_creatives.sql);
-- a rerun of a date replaces its rows. Columns as in the manifest (docs/manifest.md), less its lists.
CREATE TABLE IF NOT EXISTS generated_creatives (
    ds DATE NOT NULL,
    campaign_id VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL,
    creative_id VARCHAR NOT NULL,
    image_key VARCHAR NOT NULL,
    image_uri VARCHAR NOT NULL,
    segment_id VARCHAR NOT NULL,
    personalization VARCHAR NOT NULL,
    seed BIGINT NOT NULL,
    d_p DOUBLE PRECISION NOT NULL,
    d_t DOUBLE PRECISION NOT NULL,
    consistency DOUBLE PRECISION NOT NULL,
    z DOUBLE PRECISION NOT NULL,
    alpha DOUBLE PRECISION NOT NULL,
    consistency_weight DOUBLE PRECISION NOT NULL,
    headline VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    signature VARCHAR NOT NULL,
    diffusion_model VARCHAR NOT NULL,
    clip_model VARCHAR NOT NULL,
    llm_model VARCHAR NOT NULL,
    token_embeddings VARCHAR NOT NULL,
    safety VARCHAR NOT NULL,
    PRIMARY KEY (ds, campaign_id, user_id, item_id, rank)
);
-- Consumers ask "what does this user get": by user, newest date first.
CREATE INDEX IF NOT EXISTS generated_creatives_by_user ON generated_creatives (user_id, ds);
