-- Evidence: signed packs, signed audit checkpoints, the keys that sign them, monitoring snapshots and the metric
-- samples snapshots compute their request rates from. Compliance is the only writer of this schema; it never
-- writes core's.

-- Ed25519 keys that sign packs and checkpoints. One is active (signs); retired keys sign nothing more but stay
-- published in /compliance/.well-known/evidence-keys.json for good, so a pack signed years ago still verifies.
-- The private key is sealed with the master key (shared.crypto.SecretBox), associated data the kid.
CREATE TABLE compliance.evidence_keys (
    kid            text        PRIMARY KEY,
    public_jwk     jsonb       NOT NULL,
    private_sealed text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('active', 'retired')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz
);
CREATE UNIQUE INDEX evidence_keys_one_active ON compliance.evidence_keys (status) WHERE status = 'active';

-- A pack: `payload` is the canonical JSON (RFC 8785) exactly as it was signed, never re-encoded; `sha256` is the
-- lowercase hex digest of those bytes and `signature` the base64 Ed25519 signature over the 32 digest bytes by
-- `key_id`. Everything a verifier trusts (org, id, time, the audit head) is inside the payload.
CREATE TABLE compliance.evidence_packs (
    id         uuid        PRIMARY KEY,
    org_id     uuid        NOT NULL,
    created_at timestamptz NOT NULL,
    created_by text        NOT NULL,
    tag        text,
    payload    bytea       NOT NULL,
    sha256     text        NOT NULL,
    signature  text        NOT NULL,
    key_id     text        NOT NULL REFERENCES compliance.evidence_keys (kid)
);
CREATE INDEX evidence_packs_page ON compliance.evidence_packs (org_id, created_at DESC, id DESC);

-- A signed checkpoint of one org's audit chain head (seq, hash), taken on a schedule and on demand. `seq` and
-- `hash` repeat what the signed payload says, for the scheduler's "has the head moved" question only: a verifier
-- reads the head from the payload, after checking its signature.
CREATE TABLE compliance.audit_checkpoints (
    id         uuid        PRIMARY KEY,
    org_id     uuid        NOT NULL,
    created_at timestamptz NOT NULL,
    created_by text        NOT NULL,
    seq        bigint      NOT NULL CHECK (seq >= 0),
    hash       text        NOT NULL,
    payload    bytea       NOT NULL,
    sha256     text        NOT NULL,
    signature  text        NOT NULL,
    key_id     text        NOT NULL REFERENCES compliance.evidence_keys (kid),
    UNIQUE (org_id, seq)
);

-- A point-in-time monitoring snapshot of one org (its body: compliance.snapshots' model, JSON without floats).
CREATE TABLE compliance.snapshots (
    id       uuid        PRIMARY KEY,
    org_id   uuid        NOT NULL,
    taken_at timestamptz NOT NULL,
    taken_by text        NOT NULL,
    body     jsonb       NOT NULL
);
CREATE INDEX snapshots_page ON compliance.snapshots (org_id, taken_at DESC, id DESC);

-- Request counters read from each service's /metrics, so a snapshot can say what the last five minutes' rates
-- were from two readings (shared by every replica, kept a little longer than the window, then deleted).
CREATE TABLE compliance.metric_samples (
    source     text        NOT NULL,
    taken_at   timestamptz NOT NULL,
    requests   bigint      NOT NULL CHECK (requests >= 0),
    errors_5xx bigint      NOT NULL CHECK (errors_5xx >= 0),
    PRIMARY KEY (source, taken_at)
);
