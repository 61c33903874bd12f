-- An admin's deletion of an org (services/core/admin.py, store/orgs.py), issue #12.
--
-- The tombstone records when auth's part (disabling the org's users and clients, erasing their addresses) was
-- done: core deletes first and asks auth after its commit, so a tombstone whose `auth_erased_at` is null names a
-- deletion whose auth part failed and is to be retried (the same DELETE again does only that part).
ALTER TABLE core.org_tombstones ADD COLUMN auth_erased_at timestamptz;

-- No row of a deleted org is written after its deletion, whatever a request in flight was doing. Every insert
-- into an org's tables takes the org's deletion lock shared (advisory, two-key form, class 0x4F524744 'ORGD'),
-- then looks for the tombstone; the deletion takes the same lock exclusive before its DELETEs, so it waits for
-- the writers already past their insert (and then deletes their rows), and writers after it wait for its commit
-- and then find the tombstone. Bank lines need no trigger: their writers hold the org's data key row
-- (shared.pii lock_live_key), which the deletion destroys first.
CREATE FUNCTION core.refuse_deleted_org() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1330792260, hashtext(NEW.org_id::text));
    IF EXISTS (SELECT 1 FROM core.org_tombstones WHERE org_id = NEW.org_id) THEN
        RAISE EXCEPTION 'org % was deleted', NEW.org_id USING ERRCODE = 'AP410';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER bas_cycles_org_deleted BEFORE INSERT ON core.bas_cycles
    FOR EACH ROW EXECUTE FUNCTION core.refuse_deleted_org();
CREATE TRIGGER designated_accounts_org_deleted BEFORE INSERT ON core.designated_accounts
    FOR EACH ROW EXECUTE FUNCTION core.refuse_deleted_org();
CREATE TRIGGER designated_transfers_org_deleted BEFORE INSERT ON core.designated_transfers
    FOR EACH ROW EXECUTE FUNCTION core.refuse_deleted_org();
CREATE TRIGGER designated_sources_org_deleted BEFORE INSERT ON core.designated_sources
    FOR EACH ROW EXECUTE FUNCTION core.refuse_deleted_org();
CREATE TRIGGER alerts_org_deleted BEFORE INSERT ON core.alerts
    FOR EACH ROW EXECUTE FUNCTION core.refuse_deleted_org();
CREATE TRIGGER payment_plans_org_deleted BEFORE INSERT ON core.payment_plans
    FOR EACH ROW EXECUTE FUNCTION core.refuse_deleted_org();
