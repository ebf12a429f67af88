-- Smart Engagement Tips: the next 3-5 concrete actions with a contact - what
-- to do, why now, through which channel and when - grounded in their deals and
-- the recent conversation.
--
-- Result:
--   { tips = { { title, action, why,
--                channel = "email" | "call" | "meeting" | "linkedin" | "other",
--                timing }, … },    -- 3 to 5 tips, most valuable first
--     source = "model" | "heuristic" }
-- When the model gives fewer than 3 usable tips, rule-based tips from the data
-- (see data_tips) fill the list up to 3.
--
-- Prompts: prompts/smart_tips.system.md and .user.md.

local prompt  = require("prompt")
local fmt     = require("fmt")
local clean   = require("clean")
local signals = require("signals")

local SYSTEM = prompt.check(read_prompt("smart_tips.system.md"))
local USER   = prompt.check(read_prompt("smart_tips.user.md"))

local CHANNELS = { "email", "call", "meeting", "linkedin", "other" }
local CHANNEL_SYNONYMS = {
  phone = "call", phone_call = "call", voice = "call",
  video_call = "meeting", zoom = "meeting", in_person = "meeting", visit = "meeting",
  linked_in = "linkedin", social = "linkedin", inmail = "linkedin",
  mail = "email", e_mail = "email",
}
local MIN_TIPS, MAX_TIPS = 3, 5

local function vars(ctx)
  return {
    today          = fmt.date(ctx.now),
    contact        = fmt.contact_fields(ctx.contact),
    contact_block  = fmt.contact_card(ctx.contact, ctx.now),
    deals_block    = fmt.deal_list(ctx.deals, ctx.now, 10),
    stats_block    = fmt.activity_stats(ctx.activity_stats, ctx.now),
    activity_block = fmt.timeline(ctx.recent_activities, ctx.now, { limit = 30, body_chars = 240 }),
  }
end

local function tip(title, action, why, channel, timing)
  return { title = title, action = action, why = why, channel = channel, timing = timing }
end

-- Rule-based tips from the facts, most urgent first (fallback and padding).
local function data_tips(ctx)
  local f = signals.compute(ctx)
  local name = fmt.text(ctx.contact and ctx.contact.first_name, 60) or "the contact"
  local tips = {}
  local function add(t) tips[#tips + 1] = t end

  if f.activities_total == 0 then
    add(tip("Make a first personal introduction",
      "Send " .. name .. " a short, personal note: who you are and one question about their priorities.",
      "There is no activity recorded with " .. name .. " yet.", "email", "this week"))
  elseif f.last_touch_days == nil or f.last_touch_days > 30 then
    add(tip("Reconnect after the silence",
      "Reach out to " .. name .. " with something useful for them, not a generic check-in.",
      f.last_touch_days and ("No email, call or meeting for " .. f.last_touch_days .. " days.")
        or "No email, call or meeting on record.", "email", "this week"))
  end
  if f.unanswered_outreach >= 3 then
    add(tip("Switch channel",
      "Try a short call or a LinkedIn message instead of another email.",
      f.unanswered_outreach .. " emails or calls from us unanswered since " .. name .. " last engaged.",
      "call", "this week"))
  end
  for _, d in ipairs(ctx.deals or {}) do
    local deal = fmt.text(d.name, 60) or "the deal"
    local days = d.is_open ~= false and d.stage ~= "closed_won" and d.stage ~= "closed_lost"
      and fmt.days_between(ctx.now, d.close_date)
    if days and days < 0 then
      add(tip("Re-confirm the timeline of " .. deal,
        "Ask " .. name .. " what changed and agree a realistic close date and next step.",
        "The deal's close date (" .. fmt.date(d.close_date) .. ") passed " .. -days .. " days ago.",
        "call", "this week"))
    elseif days and days <= 30 then
      add(tip("Book the decision meeting",
        "Propose a meeting with the decision makers to close " .. deal .. ".",
        "It is planned to close on " .. fmt.date(d.close_date) .. ", in " .. days .. " days.",
        "meeting", "before " .. fmt.date(d.close_date)))
    end
  end
  if f.activities_total > 0 and (f.last_meeting_days == nil or f.last_meeting_days > 90) then
    add(tip("Schedule a check-in meeting",
      "Offer " .. name .. " a 30-minute review of their goals and how we can help.",
      f.last_meeting_days and ("The last meeting was " .. f.last_meeting_days .. " days ago.")
        or "No meeting held so far.", "meeting", "in the next two weeks"))
  end
  add(tip("Share something relevant to their industry",
    "Send a short case study or article that matters to " .. (fmt.text(ctx.contact and ctx.contact.industry, 60)
      or "their industry") .. ", with one line on why it made you think of them.",
    "Useful content keeps the relationship warm between deal steps.", "linkedin", "this month"))
  add(tip("Log what you learn",
    "After your next conversation, note priorities, decision makers and timeline in the CRM.",
    "Better notes make the next tips and health scores more precise.", "other", "after the next touch"))
  return tips
end

-- A model tip, trimmed and bounded; nil when it lacks a title or an action.
local function clean_tip(t)
  if type(t) ~= "table" then return nil end
  local title, action = clean.text(t.title, 80), clean.text(t.action, 400)
  if not title or not action then return nil end
  return tip(title, action, clean.text(t.why, 400) or "",
             clean.enum(t.channel, CHANNELS, CHANNEL_SYNONYMS) or "other",
             clean.text(t.timing, 60) or "this week")
end

-- Append tips from `from` whose title is new, until `into` has `upto` tips.
local function fill(into, from, upto)
  local seen = {}
  for _, t in ipairs(into) do seen[t.title:lower()] = true end
  for _, t in ipairs(from) do
    if #into >= upto then break end
    if t and not seen[t.title:lower()] then
      seen[t.title:lower()] = true
      into[#into + 1] = t
    end
  end
  return into
end

return {
  description = "Smart Engagement Tips: the next 3-5 concrete actions with the contact",
  ttl = 1800,
  temperature = 0.5,
  max_tokens = 800,
  queries = { "contact", "deals", "activity_stats", "recent_activities" },

  schema = {
    type = "object",
    additionalProperties = false,
    required = { "tips" },
    properties = {
      tips = {
        type = "array", minItems = MIN_TIPS, maxItems = MAX_TIPS,
        items = {
          type = "object",
          additionalProperties = false,
          required = { "title", "action", "why", "channel", "timing" },
          properties = {
            title   = { type = "string", description = "Short imperative headline, at most 8 words" },
            action  = { type = "string", description = "What exactly to do or say" },
            why     = { type = "string", description = "The fact from the data that makes it worth doing now" },
            channel = { type = "string", enum = CHANNELS },
            timing  = { type = "string", description = "When: today, this week, before <date> …" },
          },
        },
      },
    },
  },

  prompt = function(ctx)
    return prompt.messages(SYSTEM, USER, vars(ctx))
  end,

  post = function(reply, ctx)
    local data = clean.reply_object(reply)
    local tips = {}
    for _, t in ipairs(clean.array(data.tips)) do tips[#tips + 1] = clean_tip(t) end
    tips = fill({}, tips, MAX_TIPS)
    if #tips < MIN_TIPS then fill(tips, data_tips(ctx), MIN_TIPS) end
    return { tips = json.array(tips), source = "model" }
  end,

  fallback = function(ctx)
    return { tips = json.array(fill({}, data_tips(ctx), MAX_TIPS)), source = "heuristic" }
  end,
}
