-- Publish stages one date's manifest rows in a temporary table staged_creatives (the columns of
-- generated_creatives) and runs this in one transaction: a known key is replaced, a new one inserted, and
-- rows of that date the new manifests no longer hold (a dropped campaign, fewer variants) are deleted, so a
-- rerun replaces rather than duplicates.
INSERT INTO generated_creatives (
    ds, campaign_id, user_id, item_id, rank, creative_id, image_key, image_uri, segment_id, personalization, seed,
    d_p, d_t, consistency, z, alpha, consistency_weight, headline, prompt, signature, diffusion_model, clip_model,
    llm_model, token_embeddings, safety
)
SELECT
    ds, campaign_id, user_id, item_id, rank, creative_id, image_key, image_uri, segment_id, personalization, seed,
    d_p, d_t, consistency, z, alpha, consistency_weight, headline, prompt, signature, diffusion_model, clip_model,
    llm_model, token_embeddings, safety
FROM staged_creatives
ON CONFLICT (ds, campaign_id, user_id, item_id, rank) DO UPDATE SET
    creative_id = excluded.creative_id,
    image_key = excluded.image_key,
    image_uri = excluded.image_uri,
    segment_id = excluded.segment_id,
    personalization = excluded.personalization,
    seed = excluded.seed,
    d_p = excluded.d_p,
    d_t = excluded.d_t,
    consistency = excluded.consistency,
    z = excluded.z,
    alpha = excluded.alpha,
    consistency_weight = excluded.consistency_weight,
    headline = excluded.headline,
    prompt = excluded.prompt,
    signature = excluded.signature,
    diffusion_model = excluded.diffusion_model,
    clip_model = excluded.clip_model,
    llm_model = excluded.llm_model,
    token_embeddings = excluded.token_embeddings,
    safety = excluded.safety;

DELETE FROM generated_creatives
WHERE ds = CAST(:ds AS DATE)
  AND NOT EXISTS (
    SELECT 1 FROM staged_creatives s
    WHERE s.ds = generated_creatives.ds AND s.campaign_id = generated_creatives.campaign_id
      AND s.user_id = generated_creatives.user_id AND s.item_id = generated_creatives.item_id
      AND s.rank = generated_creatives.rank
  );
