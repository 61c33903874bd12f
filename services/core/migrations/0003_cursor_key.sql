-- The key that signs GET /bank-lines page cursors (services/core/cursor.py): one row, made here from
-- gen_random_uuid(), which draws from PostgreSQL's strong random source (two UUIDs: 244 random bits). It lives in
-- the database so that every replica and every restart accepts the others' cursors without a setting to provision.
-- It guards no secret (a cursor holds a date and an id its user has seen); it makes a cursor valid only for the org
-- and filters it was made for. Replace the row to invalidate every cursor handed out.
CREATE TABLE core.cursor_key (
    one        boolean     PRIMARY KEY DEFAULT true CHECK (one),
    key        bytea       NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO core.cursor_key (key) VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
