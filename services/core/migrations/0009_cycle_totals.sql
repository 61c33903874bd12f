-- Running totals of an org's bank lines per BAS quarter (issue #12, the money rules' review): how many lines are
-- dated in the quarter starting `period_start`, and the sums of their `paygw_amount` and `gst_amount`. Every
-- writer of bank lines adds to its quarters' rows in the transaction that writes the lines (one upsert per quarter
-- touched: `services/core/store/cycles.add_to_totals`), so a cycle's required amounts are one row read instead of
-- a scan of its lines (about 125,000 a quarter in the bench's 1M-line org). Backfilled here from existing lines.
--
-- Derived from bank lines, so deleted with the org like them (store/orgs.py DELETION_ORDER); an insert into a
-- deleted org is refused by 0008's trigger like every other table of the org's.

CREATE TABLE core.cycle_totals (
    org_id        uuid          NOT NULL,
    period_start  date          NOT NULL CHECK (period_start = date_trunc('quarter', period_start)::date),
    lines         bigint        NOT NULL CHECK (lines >= 0),
    paygw         numeric(20,2) NOT NULL,
    gst           numeric(20,2) NOT NULL,
    PRIMARY KEY (org_id, period_start)
);

INSERT INTO core.cycle_totals (org_id, period_start, lines, paygw, gst)
SELECT org_id, date_trunc('quarter', date)::date, count(*), sum(paygw_amount), sum(gst_amount)
FROM core.bank_lines
GROUP BY 1, 2;

CREATE TRIGGER cycle_totals_org_deleted BEFORE INSERT ON core.cycle_totals
    FOR EACH ROW EXECUTE FUNCTION core.refuse_deleted_org();

-- A line written into a LODGED quarter raises one BAS_AMENDMENT_NEEDED alert per lodged cycle while it is open
-- (services/core/evaluation.py); however many writers race, this index keeps one.
CREATE UNIQUE INDEX alerts_one_open_amendment ON core.alerts (org_id, (detail ->> 'cycle_id'))
    WHERE type = 'BAS_AMENDMENT_NEEDED' AND resolved_at IS NULL;
