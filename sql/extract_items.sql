-- The item catalog, whole: validation checks events against it and prompts describe items from it.
SELECT item_id, title, categories, description, attributes, image_uri, updated_at
FROM items
ORDER BY item_id
