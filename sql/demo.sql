-- rapport demo data: a deterministic, set-based CRM generator.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v contacts=100000 -f sql/demo.sql
--
-- Variables (both optional):
--   contacts  number of contacts, ids 1..N                      (default 1000)
--   anchor    the "today" the data is built around, YYYY-MM-DD  (default current_date, UTC)
--
-- It (re)creates the schema (sql/schema.sql, idempotent), then in ONE transaction
-- truncates contacts/deals/activities (RESTART IDENTITY CASCADE) and regenerates
-- them: same N and anchor -> identical rows. All randomness comes from keyed
-- hashes (pg_temp.u(key, salt) over hashint8extended, which hash partitioning
-- relies on being stable) rather than random(), so it does not depend on the
-- order the planner evaluates rows in; setseed() is still called so any later
-- random() use stays reproducible.
--
-- Shape of the data, per contact:
--   * name, title, company (about 1,600 companies, so colleagues exist), industry
--     (per company), lifecycle stage, owner (one of 8 reps), notes for ~60%;
--   * 0-5 deals depending on the stage: open ones close around the anchor
--     (some already overdue), older ones closed_won/closed_lost; amounts 2k-200k,
--     currency per company (mostly USD, EUR, GBP);
--   * 10-60 activities (email, call, meeting, note, task) over the past two years,
--     following one of four engagement patterns: warming (dense recently),
--     steady, cooling (fading, last touch 5-17 weeks ago, recent outreach mostly
--     unanswered) and dormant (nothing for 5-13 months) - so every health trend
--     shows up in the demo.
--
-- Row triggers are disabled during the load (it would queue millions of
-- NOTIFYs); instead every contact id, old and new, is notified once at COMMIT so
-- a running rapport drops its cache. Ends with ANALYZE.
-- 100,000 contacts (~150 k deals, ~3.5 M activities, ~1.1 GB) take about 65 s
-- on 2 cores with PostgreSQL 15's default settings.

\set ON_ERROR_STOP on
\if :{?contacts}
\else
  \set contacts 1000
\endif
\if :{?anchor}
\else
  SELECT (now() AT TIME ZONE 'UTC')::date AS anchor \gset
\endif

-- :anchor_ts is the anchor day at 00:00 UTC, as a timestamptz literal.
SELECT format('%L::timestamptz', (:'anchor'::date)::text || ' 00:00:00+00') AS anchor_ts \gset

\ir schema.sql

BEGIN;
SET LOCAL max_parallel_workers_per_gather = 0;
SET LOCAL jit = off;                 -- compiling these expressions costs more than it saves
SET LOCAL client_min_messages = warning;
SELECT setseed(0.4242) \g /dev/null

SELECT coalesce(max(id), 0) AS old_max_id FROM contacts \gset

ALTER TABLE contacts   DISABLE TRIGGER contacts_notify_rapport;
ALTER TABLE deals      DISABLE TRIGGER deals_notify_rapport;
ALTER TABLE activities DISABLE TRIGGER activities_notify_rapport;

TRUNCATE activities, deals, contacts RESTART IDENTITY CASCADE;

-- u(key, salt): a uniform number in [0, 1) determined by (key, salt).
CREATE FUNCTION pg_temp.u(k bigint, salt int) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8extended(k, salt) & 2147483647)::float8 / 2147483648.0 $$;

-- pick(array, u): the element at fraction u of the array.
CREATE FUNCTION pg_temp.pick(arr text[], u float8) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT arr[1 + floor(u * cardinality(arr))::int] $$;

-- The vocabulary. Texts are format() templates:
--   %1$s first name  %2$s company  %3$s product  %4$s owner's first name
--   %5$s industry    %6$s topic
CREATE TEMP TABLE demo_words ON COMMIT DROP AS SELECT
  ARRAY['James','Mary','Robert','Patricia','John','Jennifer','Michael','Linda','David','Elizabeth',
        'William','Barbara','Richard','Susan','Joseph','Jessica','Thomas','Sarah','Carlos','Karen',
        'Daniel','Lisa','Matthew','Nancy','Anthony','Sandra','Mark','Ashley','Hiroshi','Emily',
        'Andrew','Michelle','Joshua','Amanda','Kenji','Melissa','Kevin','Stephanie','Brian','Rebecca',
        'Ahmed','Laura','Omar','Priya','Raj','Ananya','Wei','Mei','Lukas','Anna',
        'José','Zoë','Søren','Łukasz','Ingrid','Chloé','Mateo','Fatima','Oluwaseun','Aisha']
    AS first_names,
  ARRAY['Smith','Johnson','Williams','Brown','Jones','Garcia','Miller','Davis','Rodriguez','Martinez',
        'Hernandez','Lopez','Wilson','Anderson','Thomas','Taylor','Moore','Jackson','Martin','Lee',
        'Thompson','White','Harris','Clark','Lewis','Robinson','Walker','Young','Allen','King',
        'Wright','Scott','Nguyen','Hill','Green','Adams','Baker','Nelson','Mitchell','Campbell',
        'Müller','Schmidt','Fischer','Dubois','Rossi','Kowalski','Jensen','Nakamura','Sato','Kim',
        'Patel','Shah','Gupta','Chen','Wang','Okoye','Mensah','O''Brien','Silva','Andersson']
    AS last_names,
  ARRAY['Blue','North','Silver','Iron','Bright','Red','Green','Clear','Stone','Swift',
        'Pine','Oak','Summit','River','Lake','Harbor','Nova','Prime','Apex','True',
        'Open','Quantum','Atlas','Cedar','Falcon','Golden','Maple','Polar','Sun','Vista',
        'Metro','Urban','Peak','Delta','Echo','Terra','Orbit','Core','Vector','Zen']
    AS company_heads,
  ARRAY['field','stone','wave','bridge','gate','line','works','point','path','light',
        'forge','base','scale','shift','logic','stack','cloud','spark','grid','leaf',
        'ridge','port','mark','way','view','dale','star','craft','flow','sight',
        'hub','cast','tech','labs','mind','data','link','ware','sync','bay']
    AS company_tails,
  ARRAY['Inc','Ltd','GmbH','LLC','Group','Corp','AG','BV','Solutions','Systems']
    AS company_forms,
  ARRAY['com','io','com','co.uk','de','com','net','com']
    AS tlds,
  ARRAY['Software','Logistics','Manufacturing','Healthcare','Financial Services','Retail',
        'Education','Energy','Telecommunications','Media','Construction','Hospitality',
        'Insurance','Real Estate','Biotech','Professional Services']
    AS industries,
  ARRAY['CEO','CFO','COO','CTO','VP Sales','VP Operations','VP Engineering','VP Marketing',
        'Head of IT','Head of Procurement','Director of Operations','Director of Finance',
        'Director of Customer Success','IT Manager','Operations Manager','Procurement Manager',
        'Product Manager','Engineering Manager','Marketing Manager','Sales Operations Lead',
        'Business Analyst','Data Analyst','Solutions Architect','Office Manager',
        'Chief Revenue Officer','Head of Data','Finance Manager','Project Manager']
    AS titles,
  ARRAY['Maya Chen','Lukas Weber','Priya Raman','Tom Becker','Sofia Alvarez','James O''Neil',
        'Aiko Tanaka','Daniel Okafor']
    AS owners,
  ARRAY['Platform license','Analytics add-on','Enterprise plan','Premium support',
        'Implementation services','Additional seats','Data connector pack','Training package']
    AS products,
  ARRAY['pricing','the security review','SSO integration','the onboarding plan','renewal terms',
        'the product roadmap','data migration','user training','API rate limits','contract redlines',
        'the pilot results','budget approval','the procurement process','reporting dashboards']
    AS topics,
  ARRAY['Prefers email over calls; replies within a day or two.',
        'Decision maker for %6$s; signs off anything under 50k.',
        'Met at a trade show; interested in %3$s.',
        'Champion internally, but needs help convincing finance.',
        'Reports to the CFO. Budget cycle starts in Q4.',
        'Very technical; wants details on %6$s before any commercial talk.',
        'Asked us not to call before 10am their time.',
        'Previously used a competitor; unhappy with their support.',
        'Introduced by a partner. Warm relationship with %4$s.',
        'Busy; keep emails short and to the point.']
    AS contact_notes,
  -- Subjects and bodies of the same kind are paired by position (one pick for both).
  ARRAY['Following up on %6$s','Summary: %6$s','Case study: %3$s in %5$s','Checking in',
        'Proposal for %2$s','Quick question about %6$s']
    AS email_out_subjects,
  ARRAY['Hi %1$s, following up on our conversation about %6$s. I attached the updated %3$s overview for %2$s. Would Thursday or Friday work for a 30-minute call?',
        'Hi %1$s, as promised here is the summary of %6$s and the timeline we discussed. Let me know if anything is missing before you take it to your team.',
        'Hi %1$s, I wanted to share a short case study from another %5$s company that rolled out %3$s last quarter. Happy to walk you through it.',
        'Hi %1$s, just checking in. Is %6$s still a priority for %2$s this quarter, or should we revisit in a few weeks?',
        'Hi %1$s, attached is the proposal for %3$s. Pricing is valid until the end of the month. Best, %4$s',
        'Hi %1$s, a quick question on %6$s: who else at %2$s should be involved in the next conversation?']
    AS email_out_bodies,
  ARRAY['Re: %6$s','Pricing for additional seats','Re: %3$s','Re: Proposal for %2$s',
        'Re: Checking in','Documentation for %6$s?']
    AS email_in_subjects,
  ARRAY['Thanks %4$s, the team reviewed %6$s and has a few questions before we move forward. Can we set up a call next week?',
        'Hi %4$s, could you send pricing for 50 additional seats? We are planning next year''s budget.',
        'We are still interested in %3$s, but %6$s is on hold until our reorg is done. I will get back to you.',
        'Looks good overall. Legal will need to review the contract; I have forwarded it to them.',
        'Sorry for the slow reply, it has been a busy month here at %2$s. Let us pick this up after the quarter closes.',
        'Great session yesterday. Our CTO would like a deeper look at %6$s - can you send the documentation?']
    AS email_in_bodies,
  ARRAY['Discovery call','Budget call','Follow-up call about %6$s','Check-in call','Pricing discussion']
    AS call_subjects,
  ARRAY['Spoke with %1$s about %6$s. %2$s is evaluating options for next quarter; the main concern is implementation effort.',
        'Good call. %1$s confirmed budget for %3$s and wants a proposal by the end of the month.',
        '%1$s raised concerns about %6$s. Promised to send our documentation and a reference customer in %5$s.',
        'Short call; %1$s is waiting for internal approval. Agreed to reconnect in two weeks.',
        'Walked %1$s through pricing options for %3$s. Leaning towards the annual plan.']
    AS call_connected_bodies,
  ARRAY['Left a voicemail about %6$s; will try again next week.',
        'Left a voicemail asking for 15 minutes to discuss %3$s.']
    AS call_voicemail_bodies,
  ARRAY['No answer. Sent a short follow-up email instead.',
        'Tried to reach %1$s, no answer and no voicemail box.']
    AS call_no_answer_bodies,
  ARRAY['Demo of %3$s','Quarterly business review','Planning session: next six months',
        'Technical deep dive: %6$s']
    AS meeting_subjects,
  ARRAY['Walked the team at %2$s through %3$s and how it would fit their current process: intake, approvals, reporting and the hand-off to finance. Questions were mostly about %6$s and the rollout timeline; they want to start with one region and expand once the first team is live. %1$s shared their current tooling costs, which we can use for the business case.',
        'Reviewed the last quarter: usage is up, two open support tickets, and the team is happy with response times. %1$s wants to expand to another department but needs a clearer picture of the admin effort. We also went through the renewal timeline and the list of feature requests they raised in the spring; two of them shipped, the third is on the roadmap.',
        'Discussed goals for the next six months. %2$s wants to consolidate tools and reduce manual reporting; %3$s covers most of it.',
        'Deep dive on %6$s with their IT lead. Open items: data residency, audit logs and the SSO setup. Their security team will send a questionnaire; %4$s to loop in our solutions engineer and share the latest penetration test summary.']
    AS meeting_notes_a,
  ARRAY['%1$s was engaged and asked good questions; the finance lead joined for the last 15 minutes.',
        'Some hesitation about the price compared to what they pay today. We agreed to look at a phased rollout.',
        'They mentioned a competing offer but said our integration story is stronger for %5$s.',
        'Procurement needs a security questionnaire and two references before the contract can move.',
        '']
    AS meeting_notes_b,
  ARRAY['Next steps: %4$s sends the recap and an updated quote by Friday; %1$s books a follow-up with their CTO.',
        'Next steps: trial workspace for three users, check-in call in two weeks.',
        'Next steps: %1$s to confirm budget owner; we prepare the rollout plan for %6$s.',
        'Next steps: none agreed yet - %1$s will come back after their planning cycle.']
    AS meeting_notes_c,
  ARRAY['Org change','Competitor mention','Budget note','Champion note','Availability','Personal note']
    AS note_subjects,
  ARRAY['%1$s mentioned that %2$s is reorganising the operations team; a new VP starts next month.',
        'Heard from %1$s that %2$s is also talking to a competitor about %6$s.',
        'Budget for %3$s is approved for next quarter but not yet released.',
        '%1$s is our strongest champion at %2$s and wants to present the results internally.',
        '%1$s will be on parental leave for three weeks; cover is the deputy lead.',
        '%1$s ran a marathon last weekend - worth congratulating next time.']
    AS note_bodies,
  ARRAY['Send %3$s pricing to %1$s','Prepare QBR deck for %2$s','Follow up on %6$s',
        'Book renewal meeting','Share a case study with %1$s','Update the deal forecast']
    AS task_subjects,
  ARRAY['Due this week.','Owner: %4$s.','Needs input from the solutions team.','Reminder set by %4$s after the last call.']
    AS task_bodies;

-- One profile row per contact: who they are and how engaged they are.
CREATE TEMP TABLE demo_profile ON COMMIT DROP AS
WITH base AS (
  SELECT g AS id,
         floor(pg_temp.u(g, 1) * 1600)::int AS company_no,
         pg_temp.u(g, 2) AS u_stage,
         pg_temp.u(g, 3) AS u_pattern
  FROM generate_series(1, :contacts) g
), staged AS (
  SELECT b.*,
         CASE WHEN u_stage < 0.05 THEN 'subscriber'
              WHEN u_stage < 0.27 THEN 'lead'
              WHEN u_stage < 0.41 THEN 'mql'
              WHEN u_stage < 0.51 THEN 'sql'
              WHEN u_stage < 0.65 THEN 'opportunity'
              WHEN u_stage < 0.93 THEN 'customer'
              WHEN u_stage < 0.96 THEN 'evangelist'
              ELSE 'churned' END AS stage
  FROM base b
), patterned AS (
  SELECT s.*,
         CASE WHEN s.stage = 'churned' THEN
                CASE WHEN u_pattern < 0.30 THEN 'cooling' ELSE 'dormant' END
              WHEN s.stage IN ('customer', 'evangelist') THEN
                CASE WHEN u_pattern < 0.20 THEN 'warming' WHEN u_pattern < 0.70 THEN 'steady'
                     WHEN u_pattern < 0.92 THEN 'cooling' ELSE 'dormant' END
              WHEN s.stage IN ('opportunity', 'sql') THEN
                CASE WHEN u_pattern < 0.40 THEN 'warming' WHEN u_pattern < 0.75 THEN 'steady'
                     WHEN u_pattern < 0.95 THEN 'cooling' ELSE 'dormant' END
              ELSE
                CASE WHEN u_pattern < 0.20 THEN 'warming' WHEN u_pattern < 0.50 THEN 'steady'
                     WHEN u_pattern < 0.80 THEN 'cooling' ELSE 'dormant' END
         END AS pattern
  FROM staged s
), timed AS (
  SELECT p.*,
         -- days between the anchor and the newest activity
         CASE p.pattern WHEN 'warming' THEN floor(pg_temp.u(id, 4) * 5)
                        WHEN 'steady'  THEN 1 + floor(pg_temp.u(id, 4) * 20)
                        WHEN 'cooling' THEN 35 + floor(pg_temp.u(id, 4) * 85)
                        ELSE 150 + floor(pg_temp.u(id, 4) * 250) END::int AS gap_days
  FROM patterned p
)
SELECT t.id, t.company_no, t.stage, t.pattern, t.gap_days,
       -- days the activity history spans, ending gap_days ago, within the past two years
       least(728 - t.gap_days, 60 + floor(pg_temp.u(t.id, 5) * 670))::int AS span_days,
       (10 + floor(pg_temp.u(t.id, 6) * 51))::int AS n_acts,
       CASE t.stage
         WHEN 'subscriber'  THEN 0
         WHEN 'lead'        THEN (pg_temp.u(t.id, 7) < 0.2)::int
         WHEN 'mql'         THEN (pg_temp.u(t.id, 7) < 0.4)::int
         WHEN 'sql'         THEN floor(pg_temp.u(t.id, 7) * 3)::int
         WHEN 'opportunity' THEN 1 + floor(pg_temp.u(t.id, 7) * 3)::int
         WHEN 'churned'     THEN 1 + floor(pg_temp.u(t.id, 7) * 3)::int
         ELSE 1 + floor(pg_temp.u(t.id, 7) * 5)::int
       END AS n_deals,
       floor(pg_temp.u(t.id, 8) * 8)::int AS product_no,
       floor(pg_temp.u(t.id, 9) * 14)::int AS topic_no
FROM timed t;

-- Contacts, ids 1..N.
INSERT INTO contacts (id, first_name, last_name, email, phone, title, company, industry,
                      lifecycle_stage, owner, notes, created_at, updated_at)
SELECT p.id, n.first_name, n.last_name,
       translate(lower(n.first_name || '.' || n.last_name), 'áéíóúüöäøłçñë''', 'aeiouuoaolcne')
         || '@' || lower(co.head || co.tail) || '.' || w.tlds[1 + p.company_no % cardinality(w.tlds)],
       CASE WHEN pg_temp.u(p.id, 12) < 0.1 THEN NULL
            ELSE '+1 ' || (201 + floor(pg_temp.u(p.id, 13) * 798))::int || ' 555 '
                 || lpad(floor(pg_temp.u(p.id, 14) * 10000)::int::text, 4, '0') END,
       pg_temp.pick(w.titles, pg_temp.u(p.id, 15)),
       co.head || co.tail || ' ' || w.company_forms[1 + p.company_no % cardinality(w.company_forms)],
       w.industries[1 + (p.company_no * 7) % cardinality(w.industries)],
       p.stage,
       n.owner,
       CASE WHEN pg_temp.u(p.id, 17) < 0.4 THEN NULL
            ELSE format(pg_temp.pick(w.contact_notes, pg_temp.u(p.id, 18)),
                        n.first_name, '', w.products[1 + p.product_no], split_part(n.owner, ' ', 1),
                        '', w.topics[1 + p.topic_no]) END,
       :anchor_ts - make_interval(days => p.gap_days + p.span_days + 1 + floor(pg_temp.u(p.id, 19) * 30)::int),
       :anchor_ts - make_interval(days => p.gap_days)
FROM demo_profile p
CROSS JOIN demo_words w
CROSS JOIN LATERAL (SELECT pg_temp.pick(w.first_names, pg_temp.u(p.id, 10)) AS first_name,
                           pg_temp.pick(w.last_names,  pg_temp.u(p.id, 11)) AS last_name,
                           -- one account owner per company
                           pg_temp.pick(w.owners, pg_temp.u(p.company_no, 16)) AS owner) n
CROSS JOIN LATERAL (SELECT w.company_heads[1 + p.company_no / 40] AS head,
                           w.company_tails[1 + p.company_no % 40] AS tail) co
ORDER BY p.id;

SELECT setval('contacts_id_seq', greatest(:contacts, 1), :contacts > 0) \g /dev/null

-- Deals: n = 1 is the newest. Stages follow the contact's lifecycle stage.
INSERT INTO deals (contact_id, name, stage, amount, currency, probability, close_date,
                   created_at, updated_at)
SELECT d.contact_id, d.name, d.stage, d.amount, d.currency,
       CASE d.stage WHEN 'prospecting'   THEN 10
                    WHEN 'qualification' THEN 20 + 5 * floor(pg_temp.u(d.k, 27) * 3)::int
                    WHEN 'proposal'      THEN 40 + 5 * floor(pg_temp.u(d.k, 27) * 4)::int
                    WHEN 'negotiation'   THEN 60 + 5 * floor(pg_temp.u(d.k, 27) * 5)::int
                    WHEN 'closed_won'    THEN 100
                    ELSE 0 END,
       d.close_date, d.created_at,
       least(d.created_at + make_interval(days => 3 + floor(pg_temp.u(d.k, 28) * 40)::int), :anchor_ts)
FROM (
  SELECT s.contact_id, s.k, s.created_at,
         pg_temp.pick(w.products, pg_temp.u(s.k, 21)) || ' - ' || c.company AS name,
         s.stage,
         round(2000 * power(100, pg_temp.u(s.k, 22))::numeric, -2) AS amount,
         CASE WHEN pg_temp.u(s.company_no, 23) < 0.60 THEN 'USD'
              WHEN pg_temp.u(s.company_no, 23) < 0.85 THEN 'EUR'
              WHEN pg_temp.u(s.company_no, 23) < 0.97 THEN 'GBP'
              ELSE 'CAD' END AS currency,
         CASE WHEN s.stage LIKE 'closed%'
              THEN least((s.created_at + make_interval(days => 20 + floor(pg_temp.u(s.k, 24) * 100)::int))::date,
                         :'anchor'::date - 1)
              -- open: due between 3 weeks ago (overdue) and 5 months ahead
              ELSE :'anchor'::date - 21 + floor(pg_temp.u(s.k, 24) * 170)::int END AS close_date
  FROM (
    SELECT p.id AS contact_id, p.company_no, p.id * 10 + g.n AS k,
           :anchor_ts - make_interval(days => least(p.span_days + p.gap_days,
                                                    10 + (g.n - 1) * 140 + floor(pg_temp.u(p.id * 10 + g.n, 25) * 90)::int)) AS created_at,
           CASE
             WHEN g.n = 1 AND p.stage IN ('subscriber', 'lead', 'mql') THEN
               CASE WHEN pg_temp.u(p.id, 26) < 0.6 THEN 'prospecting' ELSE 'qualification' END
             WHEN g.n = 1 AND p.stage IN ('sql', 'opportunity') THEN
               (ARRAY['qualification','proposal','proposal','negotiation','negotiation','closed_lost'])
                 [1 + floor(pg_temp.u(p.id, 26) * 6)::int]
             WHEN g.n = 1 AND p.stage IN ('customer', 'evangelist') THEN
               (ARRAY['proposal','negotiation','closed_won','closed_won'])[1 + floor(pg_temp.u(p.id, 26) * 4)::int]
             WHEN g.n = 1 AND p.stage = 'churned' THEN
               CASE WHEN pg_temp.u(p.id, 26) < 0.7 THEN 'closed_lost' ELSE 'closed_won' END
             WHEN pg_temp.u(p.id * 10 + g.n, 26) < 0.65 THEN 'closed_won'
             ELSE 'closed_lost'
           END AS stage
    FROM demo_profile p
    CROSS JOIN LATERAL generate_series(p.n_deals, 1, -1) g(n)
  ) s
  JOIN contacts c ON c.id = s.contact_id
  CROSS JOIN demo_words w
) d
ORDER BY d.contact_id, d.created_at;

-- Activities: n = 1 is the newest (exactly gap_days + 1 days before the anchor);
-- the others spread over span_days with a density that follows the pattern.
INSERT INTO activities (contact_id, kind, direction, subject, body, outcome, occurred_at)
WITH a AS (
  SELECT p.id AS contact_id, p.pattern, p.gap_days, p.span_days, p.product_no, p.topic_no,
         p.company_no, p.id * 100 + g.n AS k, g.n,
         CASE WHEN g.n = 1 THEN 0.0
              ELSE CASE p.pattern WHEN 'warming' THEN power(pg_temp.u(p.id * 100 + g.n, 31), 2.2)
                                  WHEN 'steady'  THEN pg_temp.u(p.id * 100 + g.n, 31)
                                  WHEN 'cooling' THEN power(pg_temp.u(p.id * 100 + g.n, 31), 0.55)
                                  ELSE power(pg_temp.u(p.id * 100 + g.n, 31), 0.8) END
         END AS pos,                                   -- 0 = newest end of the span, 1 = oldest
         pg_temp.u(p.id * 100 + g.n, 32) AS u_kind
  FROM demo_profile p
  CROSS JOIN LATERAL generate_series(p.n_acts, 1, -1) g(n)
), b AS (
  SELECT a.*,
         CASE WHEN u_kind < 0.46 THEN 'email' WHEN u_kind < 0.66 THEN 'call'
              WHEN u_kind < 0.78 THEN 'meeting' WHEN u_kind < 0.90 THEN 'note'
              ELSE 'task' END AS kind,
         -- how likely the contact is to write/call us (and to answer us)
         CASE WHEN a.pattern = 'warming' THEN 0.50
              WHEN a.pattern = 'steady'  THEN 0.40
              WHEN a.pattern = 'cooling' AND a.pos < 0.3 THEN 0.10
              WHEN a.pattern = 'dormant' AND a.pos < 0.3 THEN 0.05
              ELSE 0.35 END AS p_inbound,
         1 + a.gap_days + floor(a.pos * a.span_days)::int AS age_days,
         pg_temp.u(a.k, 33) AS u_dir,
         pg_temp.u(a.k, 34) AS u_out,
         pg_temp.u(a.k, 35) AS u_text
  FROM a
), c AS (
  SELECT b.*,
         CASE WHEN b.kind IN ('email', 'call')
              THEN CASE WHEN b.u_dir < b.p_inbound THEN 'inbound' ELSE 'outbound' END END AS direction
  FROM b
), d AS (
  SELECT c.*,
         CASE
           WHEN c.kind = 'email' AND c.direction = 'inbound' THEN 'received'
           WHEN c.kind = 'email' THEN CASE WHEN c.u_out < c.p_inbound THEN 'replied'
                                           WHEN c.u_out < c.p_inbound + 0.3 THEN 'opened'
                                           ELSE 'no_reply' END
           WHEN c.kind = 'call' AND c.direction = 'inbound' THEN 'connected'
           WHEN c.kind = 'call' THEN CASE WHEN c.u_out < 0.25 + c.p_inbound THEN 'connected'
                                          WHEN c.u_out < 0.80 THEN 'voicemail'
                                          ELSE 'no_answer' END
           WHEN c.kind = 'meeting' THEN CASE WHEN c.u_out < 0.85 THEN 'completed'
                                             WHEN c.u_out < 0.93 THEN 'rescheduled'
                                             ELSE 'no_show' END
           WHEN c.kind = 'task' THEN CASE WHEN c.age_days <= 10 THEN 'open'
                                          WHEN c.u_out < 0.9 THEN 'completed'
                                          ELSE 'overdue' END
         END AS outcome
  FROM c
)
SELECT d.contact_id, d.kind, d.direction,
       format(CASE d.kind
                WHEN 'email'   THEN CASE d.direction WHEN 'inbound' THEN pg_temp.pick(w.email_in_subjects, d.u_text)
                                                     ELSE pg_temp.pick(w.email_out_subjects, d.u_text) END
                WHEN 'call'    THEN pg_temp.pick(w.call_subjects, d.u_text)
                WHEN 'meeting' THEN pg_temp.pick(w.meeting_subjects, d.u_text)
                WHEN 'note'    THEN pg_temp.pick(w.note_subjects, d.u_text)
                ELSE pg_temp.pick(w.task_subjects, d.u_text) END,
              ct.first_name, ct.company, w.products[1 + (d.product_no + d.n / 9) % 8],
              split_part(ct.owner, ' ', 1), ct.industry,
              w.topics[1 + (d.topic_no + d.n / 5) % 14]),
       format(CASE d.kind
                WHEN 'email'   THEN CASE d.direction WHEN 'inbound' THEN pg_temp.pick(w.email_in_bodies, d.u_text)
                                                     ELSE pg_temp.pick(w.email_out_bodies, d.u_text) END
                WHEN 'call'    THEN CASE d.outcome WHEN 'connected' THEN pg_temp.pick(w.call_connected_bodies, d.u_text)
                                                   WHEN 'voicemail' THEN pg_temp.pick(w.call_voicemail_bodies, pg_temp.u(d.k, 36))
                                                   ELSE pg_temp.pick(w.call_no_answer_bodies, pg_temp.u(d.k, 36)) END
                WHEN 'meeting' THEN 'Attendees: %1$s, %4$s. '
                                    || pg_temp.pick(w.meeting_notes_a, d.u_text) || ' '
                                    || pg_temp.pick(w.meeting_notes_b, pg_temp.u(d.k, 37)) || ' '
                                    || pg_temp.pick(w.meeting_notes_c, pg_temp.u(d.k, 38))
                WHEN 'note'    THEN pg_temp.pick(w.note_bodies, d.u_text)
                ELSE pg_temp.pick(w.task_bodies, pg_temp.u(d.k, 36)) END,
              ct.first_name, ct.company, w.products[1 + (d.product_no + d.n / 9) % 8],
              split_part(ct.owner, ' ', 1), ct.industry,
              w.topics[1 + (d.topic_no + d.n / 5) % 14]),
       d.outcome,
       -- during business hours (08:00-18:00 UTC) of the day age_days before the anchor
       :anchor_ts - make_interval(days => d.age_days)
                  + make_interval(secs => 8 * 3600 + floor(pg_temp.u(d.k, 39) * 10 * 3600))
FROM d
JOIN contacts ct ON ct.id = d.contact_id
CROSS JOIN demo_words w;

ALTER TABLE contacts   ENABLE TRIGGER contacts_notify_rapport;
ALTER TABLE deals      ENABLE TRIGGER deals_notify_rapport;
ALTER TABLE activities ENABLE TRIGGER activities_notify_rapport;

-- Tell a running rapport that every contact, old or new, changed (sent at COMMIT).
SELECT count(pg_notify('rapport_contact_changed', g::text)) AS notified
FROM generate_series(1, greatest(:old_max_id, :contacts)) g \g /dev/null

COMMIT;

ANALYZE contacts;
ANALYZE deals;
ANALYZE activities;

SELECT (SELECT count(*) FROM contacts)   AS contacts,
       (SELECT count(*) FROM deals)      AS deals,
       (SELECT count(*) FROM activities) AS activities,
       :'anchor'::date                   AS anchor;
