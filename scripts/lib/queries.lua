-- Named SQL queries shared by the analysis scripts.
--
-- A script lists the names it needs in `queries = { ... }`; rapport runs them
-- all at once and puts the rows in ctx.<name>. $1 is the contact id (the only
-- parameter). With `one = true` ctx.<name> is a single row table or nil;
-- otherwise it is an array of row tables (possibly empty).
--
-- Values arrive typed: integers as Lua integers, numeric as floats, booleans,
-- timestamptz as "2026-11-25T21:00:00Z" (UTC), date as "2026-11-25", NULL as nil.
--
-- The `contact` query is what makes a contact exist: no row -> 404, no model call.
-- Every query here is an index lookup on the contact id (demo schema: sql/schema.sql);
-- adapting rapport to another CRM means editing this file, not C.

return {
  -- The contact card.
  contact = { one = true, sql = [[
    SELECT c.id,
           c.first_name,
           c.last_name,
           concat_ws(' ', c.first_name, c.last_name) AS full_name,
           c.email,
           c.phone,
           c.title,
           c.company,
           c.industry,
           c.lifecycle_stage,
           c.owner,
           c.notes,
           c.created_at,
           c.updated_at
      FROM contacts c
     WHERE c.id = $1
  ]] },

  -- All deals, newest first (at most 50).
  deals = { sql = [[
    SELECT d.id,
           d.name,
           d.stage,
           d.stage NOT IN ('closed_won', 'closed_lost') AS is_open,
           d.amount,
           d.currency,
           d.probability,
           d.close_date,
           d.created_at,
           d.updated_at
      FROM deals d
     WHERE d.contact_id = $1
     ORDER BY d.created_at DESC, d.id DESC
     LIMIT 50
  ]] },

  -- Pipeline totals per currency (amounts are never added across currencies).
  deal_summary = { sql = [[
    SELECT d.currency,
           count(*) FILTER (WHERE d.open)                                 AS open_count,
           coalesce(sum(d.amount) FILTER (WHERE d.open), 0)               AS open_amount,
           coalesce(round(sum(d.amount * coalesce(d.probability, 0) / 100.0)
                          FILTER (WHERE d.open), 2), 0)                   AS weighted_open_amount,
           count(*) FILTER (WHERE d.open AND d.close_date < current_date) AS overdue_count,
           min(d.close_date) FILTER (WHERE d.open AND d.close_date >= current_date)
                                                                          AS next_close_date,
           count(*) FILTER (WHERE d.stage = 'closed_won')                 AS won_count,
           coalesce(sum(d.amount) FILTER (WHERE d.stage = 'closed_won'), 0) AS won_amount,
           count(*) FILTER (WHERE d.stage = 'closed_lost')                AS lost_count
      FROM (SELECT deals.*, deals.stage NOT IN ('closed_won', 'closed_lost') AS open
              FROM deals
             WHERE deals.contact_id = $1) d
     GROUP BY d.currency
     ORDER BY open_amount DESC, d.currency
  ]] },

  -- The 50 latest activities, newest first; bodies cut to 500 characters.
  recent_activities = { sql = [[
    SELECT a.id,
           a.kind,
           a.direction,
           a.subject,
           left(a.body, 500)        AS body,
           length(a.body) > 500     AS body_truncated,
           a.outcome,
           a.occurred_at
      FROM activities a
     WHERE a.contact_id = $1
     ORDER BY a.occurred_at DESC, a.id DESC
     LIMIT 50
  ]] },

  -- One row of engagement numbers. A "touch" is an email, call or meeting (notes
  -- and tasks are internal). Windows end now: 30, 90 and 365 days. Meetings count
  -- only when held (not no_show / rescheduled). "Two-way" is a message or call
  -- from the contact, a reply to ours, a connected call or a held meeting (as
  -- in signals.lua). Always one row: zeros and nils when there are no activities.
  activity_stats = { one = true, sql = [[
    WITH a AS (
      SELECT a.kind,
             a.direction,
             a.outcome,
             a.occurred_at,
             a.kind IN ('email', 'call', 'meeting')       AS touch,
             a.kind = 'meeting'
               AND coalesce(a.outcome, 'completed') NOT IN ('no_show', 'rescheduled')
                                                          AS meeting_held,
             a.occurred_at >= now() - interval '30 days'  AS d30,
             a.occurred_at >= now() - interval '90 days'  AS d90,
             a.occurred_at >= now() - interval '365 days' AS d365
        FROM activities a
       WHERE a.contact_id = $1
    )
    SELECT count(*)                                                       AS activities_total,
           count(*) FILTER (WHERE touch)                                  AS touches_total,
           count(*) FILTER (WHERE touch AND d30)                          AS touches_30d,
           count(*) FILTER (WHERE touch AND d90)                          AS touches_90d,
           count(*) FILTER (WHERE touch AND d365)                         AS touches_365d,
           count(*) FILTER (WHERE direction = 'inbound'  AND d30)         AS inbound_30d,
           count(*) FILTER (WHERE direction = 'inbound'  AND d90)         AS inbound_90d,
           count(*) FILTER (WHERE direction = 'inbound'  AND d365)        AS inbound_365d,
           count(*) FILTER (WHERE direction = 'outbound' AND d30)         AS outbound_30d,
           count(*) FILTER (WHERE direction = 'outbound' AND d90)         AS outbound_90d,
           count(*) FILTER (WHERE direction = 'outbound' AND d365)        AS outbound_365d,
           count(*) FILTER (WHERE kind = 'email' AND d30)                 AS emails_30d,
           count(*) FILTER (WHERE kind = 'email' AND d90)                 AS emails_90d,
           count(*) FILTER (WHERE kind = 'email' AND d365)                AS emails_365d,
           count(*) FILTER (WHERE kind = 'call' AND d30)                  AS calls_30d,
           count(*) FILTER (WHERE kind = 'call' AND d90)                  AS calls_90d,
           count(*) FILTER (WHERE kind = 'call' AND d365)                 AS calls_365d,
           count(*) FILTER (WHERE meeting_held AND d30)                   AS meetings_30d,
           count(*) FILTER (WHERE meeting_held AND d90)                   AS meetings_90d,
           count(*) FILTER (WHERE meeting_held AND d365)                  AS meetings_365d,
           count(*) FILTER (WHERE kind = 'email' AND direction = 'outbound'
                                  AND outcome = 'no_reply' AND d90)       AS unanswered_emails_90d,
           count(*) FILTER (WHERE kind = 'task' AND outcome IN ('open', 'overdue'))
                                                                          AS open_tasks,
           max(occurred_at) FILTER (WHERE touch)                          AS last_touch_at,
           max(occurred_at) FILTER (WHERE direction = 'inbound')          AS last_inbound_at,
           max(occurred_at) FILTER (WHERE direction = 'outbound')         AS last_outbound_at,
           max(occurred_at) FILTER (WHERE meeting_held)                   AS last_meeting_at,
           max(occurred_at) FILTER (WHERE direction = 'inbound' OR meeting_held
                                       OR (kind = 'call' AND outcome = 'connected')
                                       OR (kind = 'email' AND outcome = 'replied'))
                                                                          AS last_two_way_at,
           max(occurred_at)                                               AS last_activity_at,
           min(occurred_at)                                               AS first_activity_at
      FROM a
  ]] },

  -- Not a contact query: the server's own, for warm jobs' {"top": N}
  -- (POST /v1/warm, RAPPORT_WARM_TOP, `rapport warm --top N`). $1 is N; the
  -- first column is a contact id, best candidates first. By default the
  -- contacts with the most recent activity (then the rest, newest first).
  -- Change what "top" means here: e.g. open deals, an owner's book.
  warm_candidates = { sql = [[
    SELECT c.id
      FROM contacts c
      LEFT JOIN LATERAL (SELECT max(a.occurred_at) AS last_at
                           FROM activities a
                          WHERE a.contact_id = c.id) l ON true
     ORDER BY l.last_at DESC NULLS LAST, c.id DESC
     LIMIT $1
  ]] },

  -- Not an analysis query: the panel's contact search (GET /v1/contacts?q=&limit=),
  -- run by the server itself. $1 is the search text (may be empty: the first
  -- contacts by name), $2 the limit (1-100). Matches the id exactly, or a part of
  -- the name, the email or the company, case-insensitively; the text's own % and _
  -- are literal. A CRM with many contacts would back this with a trigram index
  -- (pg_trgm) on the same expressions.
  contact_search = { sql = [[
    WITH q AS (
      SELECT lower(btrim($1::text)) AS text,
             '%' || replace(replace(replace(lower(btrim($1::text)),
                                            '\', '\\'), '%', '\%'), '_', '\_') || '%' AS pattern
    )
    SELECT c.id,
           concat_ws(' ', c.first_name, c.last_name) AS full_name,
           c.email,
           c.phone,
           c.title,
           c.company,
           c.industry,
           c.lifecycle_stage,
           c.owner,
           c.updated_at
      FROM contacts c, q
     WHERE q.text = ''
        OR c.id::text = q.text
        OR lower(concat_ws(' ', c.first_name, c.last_name)) LIKE q.pattern
        OR lower(c.email) LIKE q.pattern
        OR lower(c.company) LIKE q.pattern
     ORDER BY (c.id::text = q.text) DESC,
              (lower(c.email) = q.text) DESC,
              c.last_name, c.first_name, c.id
     LIMIT $2::int
  ]] },
}
