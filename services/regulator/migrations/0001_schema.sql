-- The regulator service owns this schema and is its only writer.
CREATE SCHEMA IF NOT EXISTS regulator;
