-- The auth service owns this schema and is its only writer.
CREATE SCHEMA IF NOT EXISTS auth;
