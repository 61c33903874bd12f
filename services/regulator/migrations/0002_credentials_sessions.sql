-- Regulator credentials and sessions. The regulator service is the only writer of this schema.

-- One credential per regulator (a person or a team at a regulator), never one shared code: `name` is its handle
-- in the audit chain (`regulator:<name>`, so no PII: letters, digits, '.', '_', '-'), `org_ids` the orgs it may
-- view. The access code is `rgc.<lookup>.<secret>`: `lookup` finds the row without a scan, `code_hash` is the
-- argon2id hash of the whole code, so the code is checked in constant time against exactly one hash (a dummy one
-- when no row matches, which costs the same). The code itself is shown once, at creation, and never stored.
CREATE TABLE regulator.credentials (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    lookup     text        NOT NULL UNIQUE,
    code_hash  text        NOT NULL,
    org_ids    uuid[]      NOT NULL CHECK (cardinality(org_ids) >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text        NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);

-- A session: one credential, one org, a fixed lifetime from login. The bearer token (an opaque random value; also
-- the portal's cookie) is stored as its SHA-256 only. A session is valid while it has not ended or expired, its
-- credential is neither revoked nor expired, and its org is still among the credential's: every request checks all
-- of that in one indexed query, so logout and revocation take effect at once on every replica.
CREATE TABLE regulator.sessions (
    id            uuid        PRIMARY KEY,
    credential_id uuid        NOT NULL REFERENCES regulator.credentials (id),
    org_id        uuid        NOT NULL,
    token_hash    bytea       NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX sessions_live_by_credential ON regulator.sessions (credential_id) WHERE ended_at IS NULL;
