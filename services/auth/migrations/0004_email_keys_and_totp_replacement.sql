-- Issue #9, findings 4, 5 and 8.
--
-- Users are found by `email_key`, the address normalised by services/auth/emails.py (NFKC, stripped, printable
-- ASCII, lower-cased), and an address is unique per org, not across orgs: `POST /users` must not tell an admin
-- whether an address has an account elsewhere (docs/decisions.md).
ALTER TABLE auth.users ADD COLUMN email_key text;

-- Backfill. For printable ASCII the rule is lower-casing ASCII letters, which is what lower() does under the "C"
-- collation whatever the database's locale. An address the rule refuses (non-ASCII, accepted before this
-- migration) can no longer log in: its key is a value the rule never produces (no `@`), so the row stays visible
-- to its admin in GET /users and the address can be created again in its proper form. So can the later of two
-- rows whose keys coincide in one org (possible only under a locale whose lower() differed on ASCII).
WITH keyed AS (
    SELECT id,
           CASE WHEN email ~ '^[!-~]+$' THEN lower(email COLLATE "C") END AS key,
           row_number() OVER (
               PARTITION BY org_id, CASE WHEN email ~ '^[!-~]+$' THEN lower(email COLLATE "C") END
               ORDER BY created_at, id
           ) AS rank
    FROM auth.users
)
UPDATE auth.users u
SET email_key = CASE WHEN k.key IS NOT NULL AND k.rank = 1 THEN k.key ELSE 'unusable:' || u.id::text END
FROM keyed k
WHERE k.id = u.id;

ALTER TABLE auth.users ALTER COLUMN email_key SET NOT NULL;
DROP INDEX auth.users_email_key;
CREATE UNIQUE INDEX users_org_email_key ON auth.users (org_id, email_key);
-- Login knows the address, not the org.
CREATE INDEX users_email_key_idx ON auth.users (email_key);

-- Replacing an enrolled authenticator: the new secret waits here until a code from it confirms it; until then the
-- current one keeps working for step-up.
ALTER TABLE auth.totp_credentials
    ADD COLUMN pending_secret_sealed text,
    ADD COLUMN pending_since timestamptz;
