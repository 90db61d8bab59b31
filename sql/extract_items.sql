-- The item catalog, whole: validation checks events against it and prompts describe items from it.
-- For a warehouse whose catalog is a view with repeated item_ids, the latest row of an id comes first
-- (item validation keeps the first valid row of each id); the remaining columns make the order total.
SELECT item_id, title, categories, description, attributes, image_uri, updated_at
FROM items
ORDER BY item_id, updated_at DESC NULLS LAST, title, categories, description, attributes, image_uri
