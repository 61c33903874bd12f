-- What the product exists for (issue #12): BAS cycles, one-way designated accounts, alerts and payment plans,
-- and the tombstone an org leaves when an admin deletes it.
--
-- Rows that "exist without anyone creating them" (an org's current BAS cycle, its two designated accounts) have
-- ids derived from the org (uuid5, services/core), so a GET can name them without writing, and the first write
-- that needs one inserts it with ON CONFLICT DO NOTHING.
--
-- Money rows are append-only or immutable once final, enforced here as well as in the code: a designated
-- transfer is never changed or removed, a lodged cycle never changes. The one exception is an admin's deletion
-- of the whole org, which sets `apgms.deleting_org` to that org's id for its transaction (SET LOCAL).

CREATE FUNCTION core.deleting_org(org uuid) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('apgms.deleting_org', true), '') = org::text
$$;

-- BAS cycles: Australian quarters. `status` is what the last money write found (OPEN until one has looked);
-- reads compute the live figures without writing. The figures are frozen into the row when it is lodged.
CREATE TABLE core.bas_cycles (
    id              uuid          PRIMARY KEY,
    org_id          uuid          NOT NULL,
    period_start    date          NOT NULL,
    period_end      date          NOT NULL,
    due_date        date          NOT NULL,
    status          text          NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'READY', 'BLOCKED', 'LODGED')),
    paygw_required  numeric(20,2),
    gst_required    numeric(20,2),
    paygw_secured   numeric(20,2),
    gst_secured     numeric(20,2),
    lodged_at       timestamptz,
    lodged_by       text,
    created_at      timestamptz   NOT NULL DEFAULT now(),
    UNIQUE (org_id, period_start),
    CHECK (period_start <= period_end AND period_end < due_date),
    CHECK ((status = 'LODGED') = (lodged_at IS NOT NULL AND lodged_by IS NOT NULL)),
    CHECK (status <> 'LODGED' OR (paygw_required IS NOT NULL AND gst_required IS NOT NULL
                                  AND paygw_secured IS NOT NULL AND gst_secured IS NOT NULL))
);

CREATE FUNCTION core.refuse_lodged_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF core.deleting_org(OLD.org_id) THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'BAS cycles are never deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status = 'LODGED' THEN
        RAISE EXCEPTION 'a lodged BAS cycle is immutable' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER bas_cycles_lodged_immutable BEFORE UPDATE OR DELETE ON core.bas_cycles
    FOR EACH ROW EXECUTE FUNCTION core.refuse_lodged_change();

-- Designated accounts: one PAYGW and one GST per org. Balances are the sums of their transfers.
CREATE TABLE core.designated_accounts (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL,
    tax         text        NOT NULL CHECK (tax IN ('PAYGW', 'GST')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, tax)
);

-- Money only comes in: a transfer is a positive deposit from a whitelisted source, never changed or removed.
CREATE TABLE core.designated_transfers (
    id          uuid          PRIMARY KEY,
    org_id      uuid          NOT NULL,
    account_id  uuid          NOT NULL REFERENCES core.designated_accounts (id),
    amount      numeric(14,2) NOT NULL CHECK (amount > 0),
    source      text          NOT NULL,
    reference   text          NOT NULL,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    created_by  text          NOT NULL
);
CREATE INDEX designated_transfers_account_idx ON core.designated_transfers (account_id, created_at DESC, id DESC);

CREATE FUNCTION core.refuse_transfer_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND core.deleting_org(OLD.org_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'designated transfers are append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER designated_transfers_append_only BEFORE UPDATE OR DELETE ON core.designated_transfers
    FOR EACH ROW EXECUTE FUNCTION core.refuse_transfer_change();

-- The sources each account accepts deposits from (an admin with step-up changes the list).
CREATE TABLE core.designated_sources (
    account_id  uuid        NOT NULL REFERENCES core.designated_accounts (id),
    org_id      uuid        NOT NULL,
    source      text        NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    added_by    text        NOT NULL,
    PRIMARY KEY (account_id, source)
);

-- Alerts, raised by writes only. At most one open SUSPICIOUS_TAX_GAP per org, however many writers race.
CREATE TABLE core.alerts (
    id               uuid        PRIMARY KEY,
    org_id           uuid        NOT NULL,
    type             text        NOT NULL,
    severity         text        NOT NULL CHECK (severity IN ('LOW', 'MEDIUM', 'HIGH')),
    message          text        NOT NULL,
    detail           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text        NOT NULL,
    resolved_at      timestamptz,
    resolved_by      text,
    resolution_note  text,
    CHECK ((resolved_at IS NULL) = (resolved_by IS NULL))
);
CREATE INDEX alerts_page_idx ON core.alerts (org_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX alerts_one_open_tax_gap ON core.alerts (org_id)
    WHERE type = 'SUSPICIOUS_TAX_GAP' AND resolved_at IS NULL;

-- Payment plans for a BLOCKED cycle: SUBMITTED, then APPROVED or REJECTED by an admin. One open plan a cycle.
CREATE TABLE core.payment_plans (
    id             uuid          PRIMARY KEY,
    org_id         uuid          NOT NULL,
    cycle_id       uuid          NOT NULL REFERENCES core.bas_cycles (id),
    reason         text          NOT NULL,
    weekly_amount  numeric(14,2) NOT NULL CHECK (weekly_amount > 0),
    start_date     date          NOT NULL,
    notes          text,
    status         text          NOT NULL DEFAULT 'SUBMITTED' CHECK (status IN ('SUBMITTED', 'APPROVED', 'REJECTED')),
    requested_at   timestamptz   NOT NULL DEFAULT now(),
    requested_by   text          NOT NULL,
    decided_at     timestamptz,
    decided_by     text,
    decision_note  text,
    CHECK ((status = 'SUBMITTED') = (decided_at IS NULL))
);
CREATE UNIQUE INDEX payment_plans_one_open ON core.payment_plans (cycle_id) WHERE status IN ('SUBMITTED', 'APPROVED');
CREATE INDEX payment_plans_org_idx ON core.payment_plans (org_id, requested_at DESC, id DESC);

-- What a deleted org leaves: who deleted it, when, and how many rows went; no plaintext PII.
CREATE TABLE core.org_tombstones (
    org_id      uuid        PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    deleted_by  text        NOT NULL,
    counts      jsonb       NOT NULL
);
