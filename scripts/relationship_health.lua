-- Relationship Health: how healthy our relationship with a contact is (0-100),
-- which way it is heading, and why - so an account owner sees at a glance whom
-- to call this week.
--
-- Result:
--   { score   = 0..100 (integer),
--     trend   = "improving" | "stable" | "cooling" | "at_risk",
--     summary = "one or two sentences",
--     reasons = { "…", … }           -- at most 5, distinct
--     signals = { last_touch_days, touches_30d, … }  -- computed here, not by the model
--     source  = "model" | "heuristic",
--     note    = "…" }                -- fallback only: says the score is a heuristic
--
-- Prompts: prompts/relationship_health.system.md and .user.md.

local prompt  = require("prompt")
local fmt     = require("fmt")
local clean   = require("clean")
local signals = require("signals")

local SYSTEM = prompt.check(read_prompt("relationship_health.system.md"))
local USER   = prompt.check(read_prompt("relationship_health.user.md"))

local TRENDS = { "improving", "stable", "cooling", "at_risk" }

-- Words a model may use instead of the enum values.
local TREND_SYNONYMS = {
  warming = "improving", growing = "improving", improved = "improving", up = "improving",
  steady = "stable", neutral = "stable", flat = "stable", unchanged = "stable",
  declining = "cooling", cooled = "cooling", slowing = "cooling", down = "cooling",
  risk = "at_risk", at_risk_of_churn = "at_risk", critical = "at_risk", dormant = "at_risk",
}

local function vars(ctx)
  return {
    today          = fmt.date(ctx.now),
    contact        = fmt.contact_fields(ctx.contact),
    contact_block  = fmt.contact_card(ctx.contact, ctx.now),
    deals_block    = fmt.deal_list(ctx.deals, ctx.now, 10),
    stats_block    = fmt.activity_stats(ctx.activity_stats, ctx.now),
    activity_block = fmt.timeline(ctx.recent_activities, ctx.now, { limit = 30, body_chars = 160 }),
  }
end

return {
  description = "How healthy the relationship with the contact is (0-100), its trend, and why",
  ttl = 3600,            -- CRM changes evict it sooner (NOTIFY); day counts age slowly
  temperature = 0.2,
  max_tokens = 500,
  queries = { "contact", "deals", "activity_stats", "recent_activities" },

  schema = {
    type = "object",
    additionalProperties = false,
    required = { "score", "trend", "summary", "reasons" },
    properties = {
      score = { type = "integer", minimum = 0, maximum = 100,
                description = "Relationship health, 0 (lost) to 100 (strong)" },
      trend = { type = "string", enum = TRENDS,
                description = "Direction of the relationship compared with the previous months" },
      summary = { type = "string",
                  description = "One or two sentences for the account owner" },
      reasons = { type = "array", minItems = 1, maxItems = 5,
                  items = { type = "string", description = "A reason citing a fact from the data" } },
    },
  },

  prompt = function(ctx)
    return prompt.messages(SYSTEM, USER, vars(ctx))
  end,

  -- Keep the model's judgement, but within bounds, and add the facts behind it.
  post = function(reply, ctx)
    local data  = clean.reply_object(reply)
    local facts = signals.compute(ctx)
    return {
      score   = clean.integer(data.score, 0, 100) or signals.health_score(facts),
      trend   = clean.enum(data.trend, TRENDS, TREND_SYNONYMS) or signals.health_trend(facts),
      summary = clean.text(data.summary, 400) or "",
      reasons = clean.list(data.reasons, 5, 240),
      signals = signals.for_ui(facts),
      source  = "model",
    }
  end,

  -- Without the model: a score from activity counts, recency and deals.
  fallback = function(ctx)
    local facts = signals.compute(ctx)
    return {
      score   = signals.health_score(facts),
      trend   = signals.health_trend(facts),
      summary = "Estimated from activity counts, recency and deal status only.",
      reasons = json.array(signals.health_reasons(facts)),
      signals = signals.for_ui(facts),
      source  = "heuristic",
      note    = "Heuristic score: the AI analysis is unavailable right now.",
    }
  end,
}
