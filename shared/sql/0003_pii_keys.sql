-- Per-org data keys for PII envelope encryption (shared/pii.py). Each row is one DEK, wrapped by the KEK kek_id.
-- Destroying an org's keys (crypto-shredding) clears kek_id and wrapped and keeps the row as a tombstone, so the
-- org gets no new key afterwards. No foreign key to the orgs table: the tombstone outlives the org, and shared
-- migrations run before any service's.
CREATE SCHEMA IF NOT EXISTS pii;

CREATE TABLE pii.data_keys (
    org_id       uuid        NOT NULL,
    key_id       integer     NOT NULL CHECK (key_id > 0),
    kek_id       text,
    wrapped      bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz,
    destroyed_at timestamptz,
    PRIMARY KEY (org_id, key_id),
    CONSTRAINT data_keys_live_or_destroyed CHECK (
        (destroyed_at IS NULL AND kek_id IS NOT NULL AND wrapped IS NOT NULL)
        OR (destroyed_at IS NOT NULL AND kek_id IS NULL AND wrapped IS NULL)
    )
);

-- A KEK rotation looks for live keys not under the current KEK.
CREATE INDEX data_keys_kek_idx ON pii.data_keys (kek_id) WHERE wrapped IS NOT NULL;
