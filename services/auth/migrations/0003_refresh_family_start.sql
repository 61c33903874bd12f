-- A refresh family lives at most a fixed time from its login, however often it is rotated (issue #9, finding 12):
-- every token of a family carries the family's start, the login time.
ALTER TABLE auth.refresh_tokens ADD COLUMN family_started_at timestamptz;
UPDATE auth.refresh_tokens AS r SET family_started_at = f.started
FROM (SELECT family_id, min(issued_at) AS started FROM auth.refresh_tokens GROUP BY family_id) AS f
WHERE r.family_id = f.family_id;
ALTER TABLE auth.refresh_tokens ALTER COLUMN family_started_at SET NOT NULL;
