-- rapport demo CRM schema: contacts, deals, activities.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/schema.sql
--
-- Idempotent: safe to run again on a database that already has it (IF NOT
-- EXISTS, CREATE OR REPLACE, DROP TRIGGER IF EXISTS). It never drops data.
--
-- A real CRM's schema differs; rapport only sees it through the named queries
-- in scripts/lib/queries.lua and the scripts' own `sql` tables.
--
-- Cache invalidation: every INSERT/UPDATE/DELETE on the three tables sends
--   NOTIFY rapport_contact_changed, '<contact id>'
-- (one payload per affected contact; a deal or activity moved to another
-- contact notifies both). rapport LISTENs and evicts that contact's cached
-- analyses. Notifications are delivered at COMMIT and PostgreSQL folds
-- duplicates within a transaction. TRUNCATE fires no row triggers, so a bulk
-- reload must notify itself (sql/demo.sql does).

SET client_min_messages = warning;   -- no "already exists, skipping" notices on re-runs

CREATE TABLE IF NOT EXISTS contacts (
    id              bigserial PRIMARY KEY,
    first_name      text NOT NULL,
    last_name       text NOT NULL,
    email           text,
    phone           text,
    title           text,
    company         text,
    industry        text,
    lifecycle_stage text,          -- subscriber, lead, mql, sql, opportunity, customer, evangelist, churned
    owner           text,          -- the account owner (sales rep)
    notes           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS deals (
    id          bigserial PRIMARY KEY,
    contact_id  bigint NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    name        text NOT NULL,
    stage       text NOT NULL,     -- prospecting, qualification, proposal, negotiation, closed_won, closed_lost
    amount      numeric(12,2) CHECK (amount >= 0),
    currency    char(3) NOT NULL DEFAULT 'USD',
    probability int CHECK (probability BETWEEN 0 AND 100),
    close_date  date,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS activities (
    id          bigserial PRIMARY KEY,
    contact_id  bigint NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    kind        text NOT NULL,     -- email, call, meeting, note, task
    direction   text CHECK (direction IN ('inbound', 'outbound')),  -- NULL for notes, tasks, meetings
    subject     text,
    body        text,
    outcome     text,              -- e.g. replied, no_reply, connected, voicemail, completed, no_show, open
    occurred_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS deals_contact_id_idx
    ON deals (contact_id);
CREATE INDEX IF NOT EXISTS activities_contact_occurred_idx
    ON activities (contact_id, occurred_at DESC);
-- For contextual_research's "colleagues" query (the 10 latest-updated other
-- contacts at the same company): read in index order, so it touches 10 rows
-- however large the company (at 1,000,000 contacts, ~600 per company: 0.3 ms
-- instead of 8-600 ms for a bitmap scan and a sort). It replaces an index on
-- company alone, which it covers.
DROP INDEX IF EXISTS contacts_company_idx;
CREATE INDEX IF NOT EXISTS contacts_company_updated_idx
    ON contacts (company, updated_at DESC, id);

-- updated_at follows every UPDATE unless the statement sets it itself.
CREATE OR REPLACE FUNCTION rapport_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

-- NOTIFY rapport_contact_changed with the id of every contact a row change touches.
CREATE OR REPLACE FUNCTION rapport_notify_contact() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_id bigint;
    new_id bigint;
BEGIN
    IF TG_TABLE_NAME = 'contacts' THEN
        IF TG_OP <> 'INSERT' THEN old_id := OLD.id; END IF;
        IF TG_OP <> 'DELETE' THEN new_id := NEW.id; END IF;
    ELSE
        IF TG_OP <> 'INSERT' THEN old_id := OLD.contact_id; END IF;
        IF TG_OP <> 'DELETE' THEN new_id := NEW.contact_id; END IF;
    END IF;

    IF old_id IS NOT NULL THEN
        PERFORM pg_notify('rapport_contact_changed', old_id::text);
    END IF;
    IF new_id IS NOT NULL AND new_id IS DISTINCT FROM old_id THEN
        PERFORM pg_notify('rapport_contact_changed', new_id::text);
    END IF;
    RETURN NULL;  -- AFTER trigger: the return value is ignored
END
$$;

DROP TRIGGER IF EXISTS contacts_touch_updated_at ON contacts;
CREATE TRIGGER contacts_touch_updated_at
    BEFORE UPDATE ON contacts
    FOR EACH ROW EXECUTE FUNCTION rapport_touch_updated_at();

DROP TRIGGER IF EXISTS deals_touch_updated_at ON deals;
CREATE TRIGGER deals_touch_updated_at
    BEFORE UPDATE ON deals
    FOR EACH ROW EXECUTE FUNCTION rapport_touch_updated_at();

DROP TRIGGER IF EXISTS contacts_notify_rapport ON contacts;
CREATE TRIGGER contacts_notify_rapport
    AFTER INSERT OR UPDATE OR DELETE ON contacts
    FOR EACH ROW EXECUTE FUNCTION rapport_notify_contact();

DROP TRIGGER IF EXISTS deals_notify_rapport ON deals;
CREATE TRIGGER deals_notify_rapport
    AFTER INSERT OR UPDATE OR DELETE ON deals
    FOR EACH ROW EXECUTE FUNCTION rapport_notify_contact();

DROP TRIGGER IF EXISTS activities_notify_rapport ON activities;
CREATE TRIGGER activities_notify_rapport
    AFTER INSERT OR UPDATE OR DELETE ON activities
    FOR EACH ROW EXECUTE FUNCTION rapport_notify_contact();
