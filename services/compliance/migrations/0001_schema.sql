-- The compliance service owns this schema and is its only writer.
CREATE SCHEMA IF NOT EXISTS compliance;
