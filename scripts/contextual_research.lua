-- Contextual Research: a pre-call brief on a contact and their company - what
-- the CRM tells us, general context of their industry, talking points, open
-- questions and risks. The model has no web access: company facts come only
-- from the CRM data, industry knowledge is labelled as typical, and unknowns
-- are said out loud (see the system prompt).
--
-- Result:
--   { company_overview = "…", industry_context = "…",
--     talking_points = { "…" },   -- at most 6
--     open_questions = { "…" },   -- at most 6
--     risks          = { "…" },   -- at most 5, possibly empty
--     source = "model" | "heuristic" }
--
-- Prompts: prompts/contextual_research.system.md and .user.md.

local prompt  = require("prompt")
local fmt     = require("fmt")
local clean   = require("clean")
local signals = require("signals")

local SYSTEM = prompt.check(read_prompt("contextual_research.system.md"))
local USER   = prompt.check(read_prompt("contextual_research.user.md"))

-- "- Jane Doe, CFO (customer)" for each colleague.
local function colleague_list(rows)
  local items = {}
  for _, c in ipairs(rows or {}) do
    items[#items + 1] = (fmt.text(c.full_name, 80) or "?")
      .. (c.title and (", " .. fmt.text(c.title, 80)) or "")
      .. (c.lifecycle_stage and (" (" .. fmt.words(fmt.text(c.lifecycle_stage, 40)) .. ")") or "")
  end
  return fmt.list(items, "(no other contacts at this company in the CRM)")
end

local function vars(ctx)
  return {
    today             = fmt.date(ctx.now),
    contact           = fmt.contact_fields(ctx.contact),
    contact_block     = fmt.contact_card(ctx.contact, ctx.now),
    colleagues_block  = colleague_list(ctx.colleagues),
    deals_block       = fmt.deal_list(ctx.deals, ctx.now, 15),
    deal_totals_block = fmt.deal_totals(ctx.deal_summary),
    stats_block       = fmt.activity_stats(ctx.activity_stats, ctx.now),
    activity_block    = fmt.timeline(ctx.recent_activities, ctx.now, { limit = 40, body_chars = 400 }),
  }
end

-- Without the model: the CRM facts, arranged as a brief.
local function fallback(ctx)
  local c, f = ctx.contact or {}, signals.compute(ctx)
  local company, industry = fmt.text(c.company, 120), fmt.text(c.industry, 80)
  local overview = (company and (company .. (industry and (" (" .. industry .. ")") or "") .. ".")
                    or ("The CRM has no company for " .. (fmt.text(c.full_name, 80) or "this contact") .. "."))
    .. string.format(" In the CRM: %s there, %s, %d won, %d lost; %s.",
                     fmt.plural(#(ctx.colleagues or {}), "other contact"), fmt.plural(f.open_deals, "open deal"),
                     f.won_deals, f.lost_deals, fmt.plural(f.activities_total, "activity", "activities"))
    .. " Nothing else is known without the AI research."

  local talking = {}
  for _, a in ipairs(ctx.recent_activities or {}) do
    if #talking == 3 then break end
    if a.subject and (a.direction == "inbound" or a.kind == "meeting") then
      talking[#talking + 1] = "Follow up on \"" .. fmt.text(a.subject, 100) .. "\" ("
        .. (fmt.date(a.occurred_at) or "date unknown") .. ")."
    end
  end

  local questions = {}
  for _, d in ipairs(ctx.deals or {}) do
    if d.stage ~= "closed_won" and d.stage ~= "closed_lost" then
      questions[#questions + 1] = "What does the decision on " .. (fmt.text(d.name, 80) or "the open deal")
        .. " depend on, and who decides?"
    end
  end
  questions[#questions + 1] = "What are " .. (fmt.text(c.first_name, 60) or "the contact")
    .. "'s priorities for the next quarter?"

  local risks = {}
  if f.last_touch_days and f.last_touch_days > 30 then
    risks[#risks + 1] = "No email, call or meeting for " .. f.last_touch_days .. " days."
  end
  if f.unanswered_outreach >= 3 then
    risks[#risks + 1] = fmt.plural(f.unanswered_outreach, "message or call", "messages or calls")
      .. " from us without an answer."
  end
  if f.overdue_deals > 0 then
    risks[#risks + 1] = fmt.plural(f.overdue_deals, "open deal") .. " past the close date."
  end

  return {
    company_overview = overview,
    industry_context = "Not available: industry context needs the AI research, which is unavailable right now.",
    talking_points   = clean.list(talking, 6, 300),
    open_questions   = clean.list(questions, 6, 300),
    risks            = clean.list(risks, 5, 300),
    source           = "heuristic",
  }
end

return {
  description = "Contextual Research: a pre-call brief on the contact, their company and industry",
  ttl = 6 * 3600,        -- slow-moving; CRM changes evict it sooner (NOTIFY)
  temperature = 0.3,
  max_tokens = 1200,
  queries = { "contact", "colleagues", "deals", "deal_summary", "activity_stats", "recent_activities" },

  sql = {
    -- Up to 10 other contacts at the same company, most recently updated first.
    -- The company as a sub-select (not a join), so PostgreSQL reads
    -- contacts_company_updated_idx in order and stops after 10 rows.
    colleagues = { sql = [[
      SELECT c.id,
             concat_ws(' ', c.first_name, c.last_name) AS full_name,
             c.title,
             c.lifecycle_stage
        FROM contacts c
       WHERE c.company = (SELECT company FROM contacts WHERE id = $1)
         AND c.id <> $1
       ORDER BY c.updated_at DESC, c.id
       LIMIT 10
    ]] },
  },

  schema = {
    type = "object",
    additionalProperties = false,
    required = { "company_overview", "industry_context", "talking_points", "open_questions", "risks" },
    properties = {
      company_overview = { type = "string",
        description = "What the CRM tells us about the company and our relationship; say what is unknown" },
      industry_context = { type = "string",
        description = "General context for the industry, phrased as typical of it, not as company facts" },
      talking_points = { type = "array", maxItems = 6, items = { type = "string" },
        description = "Specific things to bring up, each tied to the data" },
      open_questions = { type = "array", maxItems = 6, items = { type = "string" },
        description = "Questions the account owner should get answered" },
      risks = { type = "array", maxItems = 5, items = { type = "string" },
        description = "Risks visible in the data; empty when there are none" },
    },
  },

  prompt = function(ctx)
    return prompt.messages(SYSTEM, USER, vars(ctx))
  end,

  post = function(reply)
    local data = clean.reply_object(reply)
    return {
      company_overview = clean.text(data.company_overview, 1200) or "",
      industry_context = clean.text(data.industry_context, 1200) or "",
      talking_points   = clean.list(data.talking_points, 6, 300),
      open_questions   = clean.list(data.open_questions, 6, 300),
      risks            = clean.list(data.risks, 5, 300),
      source           = "model",
    }
  end,

  fallback = fallback,
}
