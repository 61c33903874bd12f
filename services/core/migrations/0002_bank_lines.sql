-- Bank lines: one row per line of an org's bank feed. Amounts are numeric(14,2) (12 integer digits, as
-- shared.money allows); gst_amount and paygw_amount are the line's GST component and PAYG withheld, which the
-- obligation rules sum. Payee and description are PII, stored only as shared.pii ciphertext bound to
-- (org, 'bank_lines', column, id): the ids are made by the writer before it seals them.
--
-- No foreign key to auth.orgs: core owns this schema alone and reads nothing of auth's tables (SPEC section 1).

CREATE TABLE core.bank_lines (
    id           uuid          PRIMARY KEY,
    org_id       uuid          NOT NULL,
    date         date          NOT NULL,
    amount       numeric(14,2) NOT NULL,
    gst_amount   numeric(14,2) NOT NULL DEFAULT 0,
    paygw_amount numeric(14,2) NOT NULL DEFAULT 0,
    payee        bytea         NOT NULL,
    description  bytea         NOT NULL,
    created_at   timestamptz   NOT NULL DEFAULT now(),
    created_by   text          NOT NULL
);

-- The newest-first keyset page of one org: `WHERE org_id = $1 AND (date, id) < ($cursor) ORDER BY date DESC,
-- id DESC LIMIT n` is a range scan of this index whatever the depth; `from`/`to` narrow the same range, and the
-- included amount lets `min_amount`/`max_amount` be checked in the index before any heap row is read.
CREATE INDEX bank_lines_page_idx ON core.bank_lines (org_id, date DESC, id DESC) INCLUDE (amount);
