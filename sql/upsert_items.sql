-- Importers stage catalog rows in a temporary table import_items (the columns of items, one row per
-- item_id) and then run this: a new item is inserted, a known one is replaced, so a re-import is a no-op.
INSERT INTO items (item_id, title, categories, description, attributes, image_uri, updated_at)
SELECT item_id, title, categories, description, attributes, image_uri, updated_at
FROM import_items
ON CONFLICT (item_id) DO UPDATE SET
    title = excluded.title,
    categories = excluded.categories,
    description = excluded.description,
    attributes = excluded.attributes,
    image_uri = excluded.image_uri,
    updated_at = excluded.updated_at
