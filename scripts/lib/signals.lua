-- Engagement facts computed from the CRM rows (no model involved).
--
-- Used three ways: shown next to the model's answer (so the UI can display the
-- numbers behind it), to fill in when a model value is unusable, and as the
-- whole answer in fallback() when the model is unavailable.
-- Needs ctx.activity_stats; ctx.recent_activities and ctx.deals when present.

local fmt = require("fmt")

local signals = {}

-- Did the contact take part? Their message or call, a reply to ours, a
-- connected call or a held meeting.
local function two_way(a)
  return a.direction == "inbound"
    or (a.kind == "meeting" and a.outcome ~= "no_show" and a.outcome ~= "rescheduled")
    or (a.kind == "call" and a.outcome == "connected")
    or (a.kind == "email" and a.outcome == "replied")
end

-- How many emails and calls from us went unanswered since the last two-way
-- contact (from the recent activities, newest first).
function signals.unanswered_outreach(activities)
  local n = 0
  for _, a in ipairs(activities or {}) do
    if two_way(a) then break end
    if a.direction == "outbound" and (a.kind == "email" or a.kind == "call") then n = n + 1 end
  end
  return n
end

-- Open, overdue (open and past the close date), won and lost deal counts.
function signals.deal_counts(deals, now)
  local c = { open = 0, overdue = 0, won = 0, lost = 0 }
  local today = fmt.day_number(now)        -- parsed once, not per deal
  for _, d in ipairs(deals or {}) do
    if d.stage == "closed_won" then
      c.won = c.won + 1
    elseif d.stage == "closed_lost" then
      c.lost = c.lost + 1
    else
      c.open = c.open + 1
      local close = fmt.day_number(d.close_date)
      if today and close and close < today then c.overdue = c.overdue + 1 end
    end
  end
  return c
end

-- All the facts, as one flat table of integers (nil = unknown / never).
function signals.compute(ctx)
  local s = ctx.activity_stats or {}
  local deals = signals.deal_counts(ctx.deals, ctx.now)
  local today = fmt.day_number(ctx.now)    -- parsed once for the five day counts
  local function days_since(ts)
    local day = fmt.day_number(ts)
    return today and day and today - day
  end
  return {
    activities_total = s.activities_total or 0,
    last_touch_days = days_since(s.last_touch_at),
    last_inbound_days = days_since(s.last_inbound_at),
    last_outbound_days = days_since(s.last_outbound_at),
    last_meeting_days = days_since(s.last_meeting_at),
    last_two_way_days = days_since(s.last_two_way_at),
    touches_30d = s.touches_30d or 0,
    touches_90d = s.touches_90d or 0,
    touches_365d = s.touches_365d or 0,
    inbound_30d = s.inbound_30d or 0,
    inbound_90d = s.inbound_90d or 0,
    outbound_30d = s.outbound_30d or 0,
    outbound_90d = s.outbound_90d or 0,
    meetings_90d = s.meetings_90d or 0,
    unanswered_emails_90d = s.unanswered_emails_90d or 0,
    unanswered_outreach = signals.unanswered_outreach(ctx.recent_activities),
    open_deals = deals.open,
    overdue_deals = deals.overdue,
    won_deals = deals.won,
    lost_deals = deals.lost,
  }
end

-- The facts a result shows, in signals.for_ui.
local UI_FACTS = { "last_touch_days", "last_inbound_days", "last_outbound_days",
                   "last_meeting_days", "last_two_way_days", "touches_30d", "touches_90d", "touches_365d",
                   "inbound_90d", "outbound_90d", "meetings_90d", "unanswered_emails_90d",
                   "unanswered_outreach", "open_deals", "overdue_deals" }

-- The facts for a result: unknown values become JSON null so the shape is stable.
function signals.for_ui(f)
  local out = {}
  for _, k in ipairs(UI_FACTS) do
    if f[k] == nil then out[k] = json.null else out[k] = f[k] end
  end
  return out
end

local function recency_points(days)          -- 0..40
  if days == nil then return 0 end
  if days <= 7 then return 40 end
  if days <= 14 then return 34 end
  if days <= 30 then return 26 end
  if days <= 60 then return 16 end
  if days <= 120 then return 8 end
  return 2
end

-- A 0-100 health score from the facts alone:
--   recency of the last two-way contact  0..40
--   touches in 90 days                    0..20  (2 points each)
--   share of them from the contact        0..25  (half or more -> 25)
--   open business 10, a won deal 5; an overdue deal -5
--   minus 4 per unanswered email/call from us beyond the first (max -20)
function signals.health_score(f)
  local directed = f.inbound_90d + f.outbound_90d
  local score = recency_points(f.last_two_way_days)
    + math.min(20, 2 * f.touches_90d)
    + (directed > 0 and math.min(25, 50 * f.inbound_90d / directed) or 0)
    + (f.open_deals > f.overdue_deals and 10 or 0)
    + (f.won_deals > 0 and 5 or 0)
    - (f.overdue_deals > 0 and 5 or 0)
    - math.min(20, 4 * math.max(0, f.unanswered_outreach - 1))
  return math.tointeger(math.max(0, math.min(100, math.floor(score + 0.5))))
end

-- improving | stable | cooling | at_risk, from the last two-way contact, the
-- unanswered streak, and the last 30 days against the monthly rate of the 60
-- days before.
function signals.health_trend(f)
  local days = f.last_two_way_days
  if days == nil or days > 90 or f.unanswered_outreach >= 5 then return "at_risk" end
  local before = (f.touches_90d - f.touches_30d) / 2
  if days > 30 or f.unanswered_outreach >= 3 or f.touches_30d < before * 0.6 then
    return "cooling"
  end
  if f.touches_30d >= 2 and f.touches_30d > before * 1.3 then return "improving" end
  return "stable"
end

-- Plain-language reasons behind the heuristic score, most telling first.
function signals.health_reasons(f)
  local r = {}
  local function add(s) r[#r + 1] = s end
  if f.activities_total == 0 then
    add("No activities recorded with this contact yet.")
  elseif f.last_touch_days == nil then
    add("Only internal notes and tasks; no email, call or meeting recorded.")
  elseif f.last_two_way_days == nil then
    add("The contact has never replied, called or met with us.")
  else
    add(string.format("Last two-way contact %s ago; last touch of any kind %s ago.",
      fmt.plural(f.last_two_way_days, "day"), fmt.plural(f.last_touch_days, "day")))
  end
  if f.activities_total > 0 then
    add(string.format("%s in the last 30 days, %d in the last 90 (%d from the contact, %d from us).",
      fmt.plural(f.touches_30d, "touch", "touches"), f.touches_90d, f.inbound_90d, f.outbound_90d))
  end
  if f.unanswered_outreach >= 2 then
    add(string.format("%s from us unanswered since the last two-way contact.",
      fmt.plural(f.unanswered_outreach, "message or call", "messages or calls")))
  end
  if f.overdue_deals > 0 then
    add(fmt.plural(f.overdue_deals, "open deal") .. " past the close date.")
  elseif f.open_deals > 0 then
    add(fmt.plural(f.open_deals, "open deal") .. " in progress.")
  end
  return r
end

return signals
