-- Orgs, users, refresh tokens, MFA, signing keys and OAuth clients. Secrets are stored hashed (passwords,
-- refresh tokens, recovery codes, client secrets) or sealed with the master key (TOTP secrets, private keys).

CREATE TABLE auth.orgs (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth.users (
    id            uuid        PRIMARY KEY,
    org_id        uuid        NOT NULL REFERENCES auth.orgs (id) ON DELETE CASCADE,
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('admin', 'finance', 'analyst', 'auditor')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);
-- One account per email across all orgs: login is by email alone.
CREATE UNIQUE INDEX users_email_key ON auth.users (lower(email));
CREATE INDEX users_org_idx ON auth.users (org_id, created_at, id);

CREATE TABLE auth.refresh_tokens (
    id          uuid        PRIMARY KEY,
    family_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    token_hash  bytea       NOT NULL UNIQUE,
    amr         text[]      NOT NULL,
    auth_time   bigint      NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON auth.refresh_tokens (family_id);

CREATE TABLE auth.totp_credentials (
    user_id       uuid        PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    secret_sealed text        NOT NULL,
    confirmed_at  timestamptz,
    -- The last accepted 30-second step: a code is accepted once, and never an older one.
    last_step     bigint,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth.recovery_codes (
    id        uuid        PRIMARY KEY,
    user_id   uuid        NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    salt      bytea       NOT NULL,
    code_hash bytea       NOT NULL,
    used_at   timestamptz
);
CREATE INDEX recovery_codes_user_idx ON auth.recovery_codes (user_id);

CREATE TABLE auth.signing_keys (
    kid            text        PRIMARY KEY,
    alg            text        NOT NULL,
    public_jwk     jsonb       NOT NULL,
    private_sealed text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('active', 'retiring', 'retired')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- A new key is published in the JWKS first and signs only from `signs_from`, once every verifier can have
    -- fetched it; until then the retiring key keeps signing.
    signs_from     timestamptz NOT NULL DEFAULT now(),
    -- A retiring key verifies until every token it signed has expired.
    retire_after   timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active ON auth.signing_keys (status) WHERE status = 'active';

CREATE TABLE auth.oauth_clients (
    client_id   text        PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES auth.orgs (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    secret_hash text        NOT NULL,
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
