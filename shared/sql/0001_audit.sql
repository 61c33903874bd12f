-- The audit trail (shared/audit.py): one hash chain per org, written by every service through shared.audit.append
-- inside the caller's transaction. The hash recipe and each column's encoding are in shared/audit.py's docstring.
CREATE SCHEMA IF NOT EXISTS audit;

CREATE TABLE audit.records (
    org_id     uuid        NOT NULL,
    -- JSON's exact integer range, as shared.audit.MAX_SEQ: the seq is hashed as a JSON number.
    seq        bigint      NOT NULL CHECK (seq BETWEEN 1 AND 9007199254740991),
    at         timestamptz NOT NULL,
    actor      text        NOT NULL,
    action     text        NOT NULL,
    target     text        NOT NULL,
    request_id text,
    detail     jsonb       NOT NULL CHECK (jsonb_typeof(detail) = 'object'),
    prev_hash  text        NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash       text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    -- Gap-free and unforked: one row per seq, the next seq found from this key (shared.audit.append).
    PRIMARY KEY (org_id, seq),
    -- Only an org's first record links to the genesis hash (64 zeros, shared.audit.GENESIS_HASH).
    CONSTRAINT records_genesis CHECK ((seq = 1) = (prev_hash = repeat('0', 64)))
);

-- Append-only at the database as well: UPDATE, DELETE and TRUNCATE are refused for every role, owner included.
-- (Anyone who can disable triggers can still rewrite rows; shared.audit.verify and an Anchor catch that.)
CREATE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.records is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON audit.records
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON audit.records
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
