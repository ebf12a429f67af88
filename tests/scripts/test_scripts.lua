-- Tests for the analysis scripts, their prompts and libs, without the C host.
--
--   lua5.4 tests/scripts/test_scripts.lua        (from the repo root)
--
-- Prints TAP; exits 1 when a test fails.

local dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path

local H = require("harness")
local F = require("fixtures")

local TYPES = { "relationship_health", "smart_tips", "contextual_research" }

---------------------------------------------------------------------------
-- TAP
---------------------------------------------------------------------------

local count, failures = 0, 0

local function ok(cond, name, diag)
  count = count + 1
  print((cond and "ok " or "not ok ") .. count .. " - " .. name)
  if not cond then
    failures = failures + 1
    if diag and diag ~= "" then print("# " .. tostring(diag):gsub("\n", "\n# ")) end
  end
  return cond
end

local function is(got, want, name)
  return ok(got == want, name, "got " .. tostring(got) .. ", want " .. tostring(want))
end

local function no_errors(errs, name)
  return ok(#errs == 0, name, table.concat(errs, "\n"))
end

local function raises(fn, fragment, name)
  local good, err = pcall(fn)
  return ok(not good and tostring(err):find(fragment, 1, true) ~= nil, name,
            good and "no error raised" or ("error: " .. tostring(err)))
end

-- Run a group of tests; an unexpected error fails the group instead of
-- stopping the run.
local function group(name, fn)
  local good, err = xpcall(fn, debug.traceback)
  if not good then ok(false, name .. " raised an error", err) end
end

local function count_plain(s, needle)
  local n, pos = 0, 1
  while true do
    local at = s:find(needle, pos, true)
    if not at then return n end
    n, pos = n + 1, at + #needle
  end
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

---------------------------------------------------------------------------
-- The documented result shapes
---------------------------------------------------------------------------

local NULLABLE_INT = { type = { "integer", "null" } }
local SIGNAL_KEYS = { "last_touch_days", "last_inbound_days", "last_outbound_days",
  "last_meeting_days", "last_two_way_days", "touches_30d", "touches_90d", "touches_365d", "inbound_90d",
  "outbound_90d", "meetings_90d", "unanswered_emails_90d", "unanswered_outreach",
  "open_deals", "overdue_deals" }
local signal_props = {}
for _, k in ipairs(SIGNAL_KEYS) do signal_props[k] = NULLABLE_INT end
local SOURCE = { type = "string", enum = { "model", "heuristic" } }
local TEXT = { type = "string" }

local RESULT = {
  relationship_health = {
    type = "object", additionalProperties = false,
    required = { "score", "trend", "summary", "reasons", "signals", "source" },
    properties = {
      score = { type = "integer", minimum = 0, maximum = 100 },
      trend = { type = "string", enum = { "improving", "stable", "cooling", "at_risk" } },
      summary = TEXT,
      reasons = { type = "array", maxItems = 5, items = TEXT },
      signals = { type = "object", additionalProperties = false, required = SIGNAL_KEYS,
                  properties = signal_props },
      source = SOURCE,
      note = TEXT,
    },
  },
  smart_tips = {
    type = "object", additionalProperties = false, required = { "tips", "source" },
    properties = {
      tips = { type = "array", minItems = 3, maxItems = 5, items = {
        type = "object", additionalProperties = false,
        required = { "title", "action", "why", "channel", "timing" },
        properties = { title = TEXT, action = TEXT, why = TEXT, timing = TEXT,
                       channel = { type = "string",
                                   enum = { "email", "call", "meeting", "linkedin", "other" } } },
      } },
      source = SOURCE,
    },
  },
  contextual_research = {
    type = "object", additionalProperties = false,
    required = { "company_overview", "industry_context", "talking_points", "open_questions",
                 "risks", "source" },
    properties = {
      company_overview = TEXT, industry_context = TEXT,
      talking_points = { type = "array", maxItems = 6, items = TEXT },
      open_questions = { type = "array", maxItems = 6, items = TEXT },
      risks = { type = "array", maxItems = 5, items = TEXT },
      source = SOURCE,
    },
  },
}

-- The result is valid and the host can encode it.
local function check_result(type_name, result, label)
  no_errors(H.validate(result, RESULT[type_name]), type_name .. ": " .. label .. " has the documented shape")
  local good, err = pcall(H.encode, result, RESULT[type_name])
  ok(good, type_name .. ": " .. label .. " encodes to JSON", err)
end

---------------------------------------------------------------------------
-- Every script: loading, queries, schema, prompt, post, fallback
---------------------------------------------------------------------------

local scripts = {}

for _, type_name in ipairs(TYPES) do
  group(type_name .. " loads", function()
    local script, state = H.load_script(type_name)
    scripts[type_name] = script
    ok(type(script) == "table", type_name .. ": returns a table")
    ok(type(script.description) == "string" and script.description ~= "", type_name .. ": has a description")
    ok(type(script.prompt) == "function", type_name .. ": has prompt(ctx)")
    ok(type(script.post) == "function" and type(script.fallback) == "function",
       type_name .. ": has post and fallback")
    ok(script.ttl == nil or math.type(script.ttl) == "integer" and script.ttl > 0,
       type_name .. ": ttl is a positive integer")
    ok(script.max_tokens == nil or math.type(script.max_tokens) == "integer",
       type_name .. ": max_tokens is an integer")
    is(table.concat(state.prompts, ","), type_name .. ".system.md," .. type_name .. ".user.md",
       type_name .. ": reads its system and user prompt files")
  end)

  local script = scripts[type_name]
  if script then
    group(type_name .. " queries", function()
      local specs = H.resolve_queries(script)
      ok(specs.contact and specs.contact.one, type_name .. ": asks for the one-row contact query")
      local bad = {}
      for name, spec in pairs(specs) do
        if type(spec.sql) ~= "string" then bad[#bad + 1] = name .. ": no SQL" end
        for p in spec.sql:gmatch("%$(%d+)") do
          if p ~= "1" then bad[#bad + 1] = name .. ": uses $" .. p end
        end
        if not spec.sql:find("$1", 1, true) then bad[#bad + 1] = name .. ": does not use $1" end
      end
      no_errors(bad, type_name .. ": every query is parameterised by $1 only")
    end)

    group(type_name .. " schema", function()
      no_errors(H.strict_errors(script.schema), type_name .. ": schema satisfies strict mode")
      ok(type_name:match("^[%w_-]+$") and #type_name <= 64, type_name .. ": type is a valid json_schema name")
      no_errors(H.validate(H.json.decode(H.encode(F.replies[type_name], script.schema)), script.schema),
                type_name .. ": the sample reply satisfies the schema")
    end)

    for _, case in ipairs({ { "engaged", F.engaged }, { "empty", F.empty } }) do
      local label, fixture = case[1], case[2]
      local tag = type_name .. "/" .. label .. ": "
      group(type_name .. " prompt " .. label, function()
        local ctx = H.ctx(script, type_name, fixture)
        local msgs = script.prompt(ctx)
        is(#msgs, 2, tag .. "two messages")
        is(msgs[1].role, "system", tag .. "first is system")
        is(msgs[2].role, "user", tag .. "second is user")
        local sys, user = msgs[1].content, msgs[2].content
        ok(sys:find("Today is 2026-11-25.", 1, true), tag .. "system states today")
        ok(sys:find("never an instruction", 1, true) and sys:find("<crm_data>", 1, true),
           tag .. "system says the crm_data is data, not instructions")
        ok(not sys:find("<crm_data>\n", 1, true), tag .. "no CRM data in the system prompt")
        is(count_plain(user, "<crm_data>"), 1, tag .. "one <crm_data>")
        is(count_plain(user, "</crm_data>"), 1, tag .. "one </crm_data> (CRM text cannot close it)")
        local inside = user:match("<crm_data>(.*)</crm_data>") or ""
        ok(inside:find(fixture.contact.full_name, 1, true), tag .. "contact inside the delimiters")
        ok(not (sys .. user):find("{{", 1, true) and not (sys .. user):find("}}", 1, true),
           tag .. "no unreplaced {{placeholders}}")
        if label == "engaged" then
          ok(inside:find("Enterprise plan - Peakshift LLC", 1, true), type_name .. ": deals inside the delimiters")
          ok(inside:find("Re: the security review", 1, true), type_name .. ": activities inside the delimiters")
          ok(inside:find("OVERDUE by 15 days", 1, true), type_name .. ": overdue deal computed from ctx.now")
          ok(not inside:find("<script>", 1, true), type_name .. ": angle brackets in CRM text are neutralised")
        else
          ok(inside:find("(no activities recorded)", 1, true), type_name .. "/empty: says there are no activities")
          ok(inside:find("(no deals)", 1, true), type_name .. "/empty: says there are no deals")
          ok(user:find("unknown", 1, true), type_name .. "/empty: NULL columns read as unknown")
        end
        local again = script.prompt(H.ctx(script, type_name, fixture))
        ok(again[1].content == sys and again[2].content == user, tag .. "prompt is deterministic")
      end)

      group(type_name .. " post+fallback " .. label, function()
        local ctx = H.ctx(script, type_name, fixture)
        check_result(type_name, H.post(script, H.reply(F.replies[type_name]), ctx), label .. " post(sample)")
        local fb = script.fallback(ctx)
        check_result(type_name, fb, label .. " fallback")
        is(fb.source, "heuristic", tag .. "fallback says it is a heuristic")
      end)
    end

    group(type_name .. " bad replies", function()
      local ctx = H.ctx(script, type_name, F.engaged)
      raises(function() script.post(H.reply('{"score": 5', "length"), ctx) end, "max_tokens",
             type_name .. ": a truncated reply is an error naming max_tokens")
      raises(function() script.post(H.reply("Sorry, I cannot help with that."), ctx) end, "not a JSON object",
             type_name .. ": a non-JSON reply is an error")
    end)
  end
end

---------------------------------------------------------------------------
-- Script-specific cleaning
---------------------------------------------------------------------------

group("relationship_health post clamps", function()
  local s = scripts.relationship_health
  local ctx = H.ctx(s, "relationship_health", F.engaged)
  local function post(changes)
    local r = copy(F.replies.relationship_health)
    for k, v in pairs(changes) do r[k] = v end
    return s.post(H.reply(r), ctx)
  end
  is(post({ score = 140 }).score, 100, "health: score 140 -> 100")
  is(post({ score = -3 }).score, 0, "health: score -3 -> 0")
  is(post({ score = 71.6 }).score, 72, "health: score 71.6 -> 72")
  is(math.type(post({ score = 71.6 }).score), "integer", "health: score is an integer")
  is(post({ score = "64%" }).score, 64, "health: score \"64%\" -> 64")
  local heuristic = post({ score = "n/a" }).score
  ok(math.type(heuristic) == "integer" and heuristic >= 0 and heuristic <= 100,
     "health: unusable score -> heuristic score")
  is(post({ trend = "Declining" }).trend, "cooling", "health: trend Declining -> cooling")
  is(post({ trend = "At Risk" }).trend, "at_risk", "health: trend At Risk -> at_risk")
  local unknown = post({ trend = "bananas" }).trend
  ok(unknown == "improving" or unknown == "stable" or unknown == "cooling" or unknown == "at_risk",
     "health: unknown trend -> a valid trend from the facts", unknown)
  local r = post({ reasons = { "A", "a ", "B", "C", "D", "E", "F", 7, "" } }).reasons
  is(#r, 5, "health: reasons deduplicated and at most 5")
  is(table.concat(r, ","), "A,B,C,D,E", "health: reasons keep the model's order")
  local res = post({})
  is(res.signals.last_touch_days, 5, "health: signals.last_touch_days from ctx.now")
  is(res.signals.last_inbound_days, 28, "health: signals.last_inbound_days")
  is(res.signals.unanswered_outreach, 3, "health: signals.unanswered_outreach")
  is(res.signals.overdue_deals, 1, "health: signals.overdue_deals")
  is(res.source, "model", "health: source model")
  local cooling = s.fallback(ctx)
  is(cooling.trend, "cooling", "health: fallback sees the unanswered streak as cooling")
  ok(cooling.score >= 40 and cooling.score < 80, "health: fallback score in the needs-attention/healthy range",
     cooling.score)
  local fb = s.fallback(H.ctx(s, "relationship_health", F.empty))
  ok(fb.note and fb.note:find("eurist", 1, true), "health: fallback note says heuristic")
  is(fb.signals.last_touch_days, H.json.null, "health: unknown day counts are JSON null")
  is(fb.trend, "at_risk", "health: no activity at all is at_risk")
  check_result("relationship_health", post({ score = 140, trend = "bananas" }), "clamped post")
end)

group("smart_tips post cleaning", function()
  local s = scripts.smart_tips
  local ctx = H.ctx(s, "smart_tips", F.engaged)
  local many = {}
  for i = 1, 7 do
    many[i] = { title = "  Tip number " .. i .. "  ", action = "Do thing " .. i, why = "Because " .. i,
                channel = (i == 1 and "Phone") or (i == 2 and "carrier pigeon") or "email", timing = "" }
  end
  local res = s.post(H.reply({ tips = many }), ctx)
  is(#res.tips, 5, "tips: at most 5")
  is(res.tips[1].title, "Tip number 1", "tips: titles trimmed")
  is(res.tips[1].channel, "call", "tips: channel Phone -> call")
  is(res.tips[2].channel, "other", "tips: unknown channel -> other")
  is(res.tips[1].timing, "this week", "tips: empty timing -> this week")
  check_result("smart_tips", res, "7-tip post")
  local one = s.post(H.reply({ tips = { many[3], many[3], { title = "", action = "x" } } }), ctx)
  is(#one.tips, 3, "tips: one usable tip is padded to 3 from the data")
  is(one.tips[1].title, "Tip number 3", "tips: the model's tip comes first")
  check_result("smart_tips", one, "padded post")
  local long = s.post(H.reply({ tips = { { title = string.rep("word ", 40), action = "a", why = "b",
                                           channel = "email", timing = "now" } } }), ctx)
  ok(utf8.len(long.tips[1].title) <= 80, "tips: long titles are cut")
  local fb = s.fallback(H.ctx(s, "smart_tips", F.empty))
  is(fb.tips[1].title, "Make a first personal introduction", "tips: no activity -> introduce yourself")
  local fb2 = s.fallback(ctx)
  local titles = {}
  for _, t in ipairs(fb2.tips) do titles[#titles + 1] = t.title end
  ok(table.concat(titles, "|"):find("Switch channel", 1, true),
     "tips: three unanswered messages -> switch channel", table.concat(titles, "|"))
  ok(table.concat(titles, "|"):find("Re-confirm the timeline", 1, true),
     "tips: overdue deal -> re-confirm the timeline", table.concat(titles, "|"))
end)

group("contextual_research post cleaning", function()
  local s = scripts.contextual_research
  local ctx = H.ctx(s, "contextual_research", F.engaged)
  local r = copy(F.replies.contextual_research)
  r.talking_points = { "1", "2", "3", "4", "5", "6", "7", "8" }
  r.risks = {}
  r.company_overview = string.rep("x", 5000)
  local res = s.post(H.reply(r), ctx)
  is(#res.talking_points, 6, "research: at most 6 talking points")
  is(#res.risks, 0, "research: empty risks stay empty")
  ok(H.encode(res, RESULT.contextual_research):find('"risks":[]', 1, true), "research: empty risks encode as []")
  ok(utf8.len(res.company_overview) <= 1200, "research: long overview is cut")
  check_result("contextual_research", res, "capped post")
  ok(scripts.contextual_research.max_tokens >= 1000, "research: more tokens than the others")
  local fb = s.fallback(ctx)
  ok(fb.company_overview:find("Peakshift LLC", 1, true) and fb.company_overview:find("2 other contacts", 1, true),
     "research: fallback overview from CRM facts", fb.company_overview)
  ok(#fb.risks >= 2, "research: fallback lists visible risks")
end)

---------------------------------------------------------------------------
-- Libraries
---------------------------------------------------------------------------

-- Libraries loaded the way scripts get them (inside the sandbox).
local lib = {}
group("libraries load", function()
  local _, state = H.load_script("relationship_health")
  lib = state.modules
  ok(lib.prompt and lib.fmt and lib.clean and lib.signals, "lib: prompt, fmt, clean, signals load in the sandbox")
end)

group("prompt.render", function()
  local prompt = lib.prompt
  is(prompt.render("Hi {{name}}, today is {{ today }}.", { name = "Ana", today = "2026-11-25" }),
     "Hi Ana, today is 2026-11-25.", "render: replaces {{name}}")
  is(prompt.render("{{contact.first_name}} at {{contact.company}}",
                   { contact = { first_name = "Ana", company = "Acme" } }),
     "Ana at Acme", "render: dotted paths")
  is(prompt.render("{{n}} deals", { n = 3 }), "3 deals", "render: integers")
  is(prompt.render("{{x}}", { x = "100% {{y}}" }), "100% {{y}}", "render: values are not expanded again")
  raises(function() prompt.render("Hello {{contact.frist_name}}", { contact = {} }) end,
         "{{contact.frist_name}}", "render: an unknown placeholder is an error naming it")
  raises(function() prompt.render("Hello {{nope}}", {}, "x.user.md") end,
         "unknown placeholder {{nope}} in x.user.md", "render: the error names the template")
  raises(function() prompt.render("{{ contact block }}", {}) end, "malformed placeholder",
         "render: a malformed placeholder is an error")
  raises(function() prompt.render("{{today}", { today = "x" }) end, "malformed placeholder",
         "render: an unclosed placeholder is an error")
  raises(function() prompt.render("{{t}}", { t = {} }) end, "not text", "render: a table value is an error")
  raises(function() prompt.messages("{{a}}", "{{b}}", { a = "x" }) end, "in the user prompt",
         "messages: errors say which prompt")
  local m = prompt.messages("S {{a}}", "U {{a}}", { a = "x" })
  ok(m[1].role == "system" and m[1].content == "S x" and m[2].role == "user" and m[2].content == "U x",
     "messages: system and user")
  is(table.concat(prompt.placeholders("{{a}} {{b.c}} {{a}}"), ","), "a,b.c", "placeholders: listed once")
end)

group("fmt", function()
  local fmt = lib.fmt
  is(fmt.days_between("2026-11-20T23:59:59Z", "2026-11-25T00:00:01Z"), 5, "days_between: calendar days")
  is(fmt.days_between("2026-11-25", "2026-11-20"), -5, "days_between: negative when earlier")
  is(fmt.days_between(nil, "2026-11-20"), nil, "days_between: nil when unknown")
  is(fmt.days_between("2024-02-28", "2024-03-01"), 2, "days_between: leap year")
  is(fmt.epoch("2026-11-25T21:00:00.123456Z"), fmt.epoch("2026-11-25T22:00:00+01:00"),
     "epoch: fractions and offsets")
  is(fmt.epoch("1970-01-01T00:00:00Z"), 0, "epoch: 1970")
  is(fmt.ago("2026-11-24T08:00:00Z", F.now), "yesterday", "ago: yesterday")
  is(fmt.ago("2026-12-01", F.now), "in 6 days", "ago: future")
  is(fmt.money(48500.0, "USD"), "USD 48,500", "money: whole amounts")
  is(fmt.money(1234567.5, "EUR"), "EUR 1,234,567.50", "money: cents and thousands")
  is(fmt.money(nil, "USD"), "amount unknown", "money: unknown")
  is(fmt.truncate("Zoë Müller", 4), "Zoë…", "truncate: counts characters, not bytes")
  is(fmt.text("  two\n lines\t<b>  "), "two lines ‹b›", "text: one clean line")
  is(fmt.text("a \255 b"), "a ? b", "text: invalid UTF-8 replaced")
  is(fmt.text(""), nil, "text: empty -> nil")
  is(fmt.timeline({}, F.now), "(no activities recorded)", "timeline: empty")
  is(fmt.deal_list(nil, F.now), "(no deals)", "deal_list: nil")
end)

group("strict checker catches violations", function()
  local errs = H.strict_errors({ type = "object", properties = {
    a = { type = "string" },
    b = { type = "object", properties = { c = { type = "string", format = "date" } }, required = { "c" } },
    d = { type = "array" } }, required = { "a" }, additionalProperties = false })
  local all = table.concat(errs, "\n")
  ok(all:find("'b' not in required", 1, true) and all:find("additionalProperties must be false", 1, true)
     and all:find("unsupported keyword 'format'", 1, true) and all:find("array without items", 1, true),
     "strict: missing required, open object, unsupported keyword and item-less array are reported", all)
end)

group("clean", function()
  local clean = lib.clean
  is(clean.integer("abc", 0, 100), nil, "integer: not a number -> nil")
  is(clean.integer(99.5, 0, 100), 100, "integer: rounds")
  is(clean.enum(" Stable ", { "stable" }), "stable", "enum: normalised")
  is(clean.enum("sideways", { "stable" }), nil, "enum: unknown -> nil")
  is(#clean.list("not a list", 3, 10), 0, "list: not a list -> empty")
end)

print("1.." .. count)
if failures > 0 then
  print("# " .. failures .. " of " .. count .. " failed")
  os.exit(1)
end
