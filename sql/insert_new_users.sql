-- Importers stage users in a temporary table import_users (the columns of users, one row per user_id)
-- and then run this: users seen for the first time are added, known users are left as they are.
INSERT INTO users (user_id, created_at, country)
SELECT s.user_id, s.created_at, s.country
FROM import_users s
WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.user_id)
