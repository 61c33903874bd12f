-- Idempotency records (shared/idempotency.py): one row per Idempotency-Key an org used on a route, claimed in the
-- request's transaction before its work and completed with the answer in that same transaction, so a claim is
-- never visible without its answer unless a caller commits in between (then it reads as in progress).
CREATE SCHEMA IF NOT EXISTS idempotency;

CREATE TABLE idempotency.records (
    org_id          uuid        NOT NULL,
    -- The method and route template (`POST /bank-lines`), never the raw path: a path parameter is in the
    -- fingerprint instead, so one key reused on another resource is a conflict, not a replay of the first.
    route           text        NOT NULL CHECK (length(route) BETWEEN 1 AND 200),
    -- shared.idempotency.KEY_PATTERN: 1-255 visible ASCII characters.
    key             text        NOT NULL CHECK (key ~ '^[!-~]{1,255}$'),
    -- sha256 of the canonical request (shared.idempotency.fingerprint).
    fingerprint     bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    status          text        NOT NULL CHECK (status IN ('pending', 'completed')),
    response_status smallint    CHECK (response_status BETWEEN 100 AND 599),
    -- The replayed headers only (shared.idempotency.REPLAYED_HEADERS), as [[name, value], ...] in their order.
    headers         jsonb       CHECK (jsonb_typeof(headers) = 'array'),
    body            bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (org_id, route, key),
    -- A completed record has its whole answer; a pending one has none of it.
    CONSTRAINT records_answer CHECK (
        (status = 'completed') = (response_status IS NOT NULL AND headers IS NOT NULL AND body IS NOT NULL
                                  AND completed_at IS NOT NULL)
        AND (status = 'pending') = (response_status IS NULL AND headers IS NULL AND body IS NULL
                                    AND completed_at IS NULL)
    )
);

-- shared.idempotency.delete_expired walks this in small batches.
CREATE INDEX records_expires_at ON idempotency.records (expires_at);
