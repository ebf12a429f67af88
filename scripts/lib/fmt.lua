-- Formatting helpers: CRM rows -> short, clearly delimited text for prompts.
--
-- Every block function accepts missing data (nil or an empty list) and then says
-- so in words ("(no deals)"), so a prompt never shows a blank section.
-- Text taken from the CRM goes through fmt.text(), which makes it one line,
-- cuts it to length and turns < > into ‹ › so CRM text cannot close or open
-- the <crm_data> delimiters of a prompt ({{ }} are split too, so a rendered
-- prompt never shows a placeholder-like "{{").
--
-- Dates: rapport gives timestamps as "2026-11-25T21:00:00Z" (UTC) and dates as
-- "2026-11-25". "Days" are calendar days in UTC, counted from ctx.now.

local fmt = {}

---------------------------------------------------------------------------
-- Text
---------------------------------------------------------------------------

-- Speed: fmt.text runs for every field of every row of a prompt (four times
-- per activity), and each gsub walks its text byte by byte in the pattern
-- matcher. So each rewrite below first asks whether it has anything to do,
-- with a plain find() (memchr speed) or one cheap scan, and usually skips.

-- Replace invalid UTF-8 bytes with "?".
function fmt.valid_utf8(s)
  if utf8.len(s) then return s end         -- valid (the usual case): no copy
  local out, pos = {}, 1
  while pos <= #s do
    local ok, bad = utf8.len(s, pos)
    if ok then
      out[#out + 1] = s:sub(pos)
      break
    end
    out[#out + 1] = s:sub(pos, bad - 1) .. "?"
    pos = bad + 1
  end
  return table.concat(out)
end

-- s without trailing whitespace, like s:gsub("%s+$", "") but looking only at
-- its end (the pattern would be tried at every byte of the text).
local function trim_end(s)
  local e = #s
  while e > 0 and s:find("^%s", e) do e = e - 1 end
  return s:sub(1, e)
end

-- truncate() for text that is already valid UTF-8.
local function cut(s, n)
  if #s <= n or utf8.len(s) <= n then return s end   -- no more bytes than n: no more characters
  local at = utf8.offset(s, n)             -- byte where character n starts
  return trim_end(s:sub(1, at - 1)) .. "…"
end

-- Cut s to at most n characters (not bytes), ending with "…" when cut.
function fmt.truncate(s, n)
  if s == nil then return nil end
  return cut(fmt.valid_utf8(tostring(s)), n)
end

-- Whether every %s character except " " is also a %c one, as in the C locale
-- scripts run in. Then text without %c characters and without "  " has no
-- whitespace to rewrite. one_line() checks that with an anchored "^%C*$",
-- which the matcher runs as one tight loop: a few times faster than
-- find("%c") or the gsub itself.
local BLANKS_ARE_CONTROLS = true
for b = 0, 255 do
  local ch = string.char(b)
  if ch ~= " " and ch:find("%s") and not ch:find("%c") then BLANKS_ARE_CONTROLS = false end
end

-- s as one line: control characters and runs of whitespace become one space,
-- none at either end.
local function one_line(s)
  if not BLANKS_ARE_CONTROLS or not s:find("^%C*$") or s:find("  ", 1, true) then
    s = s:gsub("[%c%s]+", " ")
  end
  if s:byte(1) == 32 then s = s:sub(2) end
  if s:byte(-1) == 32 then s = s:sub(1, -2) end
  return s
end

local function split_open_braces(b) return ("{ "):rep(#b - 1) .. "{" end
local function split_close_braces(b) return ("} "):rep(#b - 1) .. "}" end

-- s with < > as ‹ › and runs of braces split ("{{" -> "{ {").
local function no_delimiters(s)
  if s:find("<", 1, true) then s = s:gsub("<", "‹") end
  if s:find(">", 1, true) then s = s:gsub(">", "›") end
  if s:find("{{", 1, true) then s = s:gsub("{{+", split_open_braces) end
  if s:find("}}", 1, true) then s = s:gsub("}}+", split_close_braces) end
  return s
end

-- CRM text as one clean line: control characters and runs of whitespace become
-- one space, < > become ‹ ›, "{{" becomes "{ {", cut to max characters
-- (default 300). nil/"" -> nil.
function fmt.text(s, max)
  if s == nil then return nil end
  s = no_delimiters(one_line(fmt.valid_utf8(tostring(s))))
  if s == "" then return nil end
  return cut(s, max or 300)
end

-- "closed_won" -> "closed won"
function fmt.words(s)
  if s == nil then return nil end
  return (tostring(s):gsub("_", " "))
end

-- A bulleted list, one "- item" per line; "(none)" when empty.
function fmt.list(items, empty)
  if items == nil or #items == 0 then return empty or "(none)" end
  local lines = {}
  for i, item in ipairs(items) do lines[i] = "- " .. item end
  return table.concat(lines, "\n")
end

---------------------------------------------------------------------------
-- Dates
---------------------------------------------------------------------------

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m > 2 and m - 3 or m + 9) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- Seconds since the epoch of "2026-11-25", "2026-11-25T21:00:00Z",
-- "2026-11-25T21:00:00.123+01:00" …; nil when s is not such a string.
function fmt.epoch(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, rest = s:match("^(%d%d%d%d)-(%d%d)-(%d%d)(.*)$")
  if not y then return nil end
  local secs = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
  if rest == "" then return secs end
  local h, mi, sec, tz = rest:match("^[T ](%d%d):(%d%d):?(%d*)[%.%d]*(.*)$")
  if not h then return nil end
  secs = secs + tonumber(h) * 3600 + tonumber(mi) * 60 + (tonumber(sec) or 0)
  if tz == "" or tz == "Z" then return secs end
  local sign, oh, om = tz:match("^([+-])(%d%d):?(%d*)$")
  if not sign then return nil end
  local offset = tonumber(oh) * 3600 + (tonumber(om) or 0) * 60
  return sign == "+" and secs - offset or secs + offset
end

-- "2026-11-25" from a date or timestamp (in UTC); nil when unknown.
function fmt.date(s)
  local t = fmt.epoch(s)
  if not t then return nil end
  return os.date("!%Y-%m-%d", t)
end

-- The day number of a date or timestamp: whole days since 1970-01-01 (UTC);
-- nil when unknown. Blocks that show many rows turn ctx.now into one of these
-- once, instead of parsing it again for every row.
function fmt.day_number(s)
  local t = fmt.epoch(s)
  return t and t // 86400
end

-- Whole calendar days (UTC) from a to b: 5 when b is five days after a,
-- negative when b is earlier, nil when either is missing.
function fmt.days_between(a, b)
  local ta, tb = fmt.epoch(a), fmt.epoch(b)
  if not ta or not tb then return nil end
  return tb // 86400 - ta // 86400
end

-- "today", "yesterday", "12 days ago", "tomorrow", "in 5 days" for a number
-- of days back; "unknown" for nil.
local function days_ago(days)
  if days == nil then return "unknown" end
  if days == 0 then return "today" end
  if days == 1 then return "yesterday" end
  if days == -1 then return "tomorrow" end
  if days > 0 then return days .. " days ago" end
  return "in " .. -days .. " days"
end

-- "today", "yesterday", "12 days ago", "tomorrow", "in 5 days".
function fmt.ago(s, now)
  return days_ago(fmt.days_between(s, now))
end

-- fmt.dated with `today` = fmt.day_number(now): parses s once, now never.
local function dated_on(s, today)
  if s == nil then return "never" end
  local t = fmt.epoch(s)
  if not t then return tostring(s) .. " (unknown)" end
  return os.date("!%Y-%m-%d", t) .. " (" .. days_ago(today and today - t // 86400) .. ")"
end

-- "2026-11-20 (5 days ago)"; "never" when s is nil.
function fmt.dated(s, now)
  return dated_on(s, fmt.day_number(now))
end

---------------------------------------------------------------------------
-- Numbers
---------------------------------------------------------------------------

local function thousands(n)
  local s = tostring(n)
  local head = #s % 3
  local parts = { head > 0 and s:sub(1, head) or nil }
  for i = head + 1, #s, 3 do parts[#parts + 1] = s:sub(i, i + 2) end
  return table.concat(parts, ",")
end

-- fmt.money(48500, "USD") -> "USD 48,500"; 1234.5 -> "1,234.50".
function fmt.money(amount, currency)
  local n = tonumber(amount)
  if n == nil then return "amount unknown" end
  local cents = math.floor(math.abs(n) * 100 + 0.5)
  local s = thousands(cents // 100)
  if cents % 100 ~= 0 then s = s .. string.format(".%02d", cents % 100) end
  if n < 0 then s = "-" .. s end
  currency = currency and tostring(currency):gsub("%s+$", "")
  if currency and currency ~= "" then s = currency .. " " .. s end
  return s
end

-- fmt.plural(1, "deal") -> "1 deal"; fmt.plural(3, "deal") -> "3 deals".
function fmt.plural(n, word, plural)
  return n .. " " .. (n == 1 and word or (plural or word .. "s"))
end

-- 40 -> "40%"
function fmt.percent(p)
  if p == nil then return "?%" end
  return string.format("%d%%", math.floor(tonumber(p) + 0.5))
end

---------------------------------------------------------------------------
-- Blocks for prompts
---------------------------------------------------------------------------

-- What {{contact.<column>}} reads when the column is NULL.
local CONTACT_DEFAULTS = {
  first_name = "the contact", last_name = "", full_name = "the contact",
  email = "no email", phone = "no phone", title = "title unknown",
  company = "company unknown", industry = "industry unknown",
  lifecycle_stage = "stage unknown", owner = "no owner assigned", notes = "no notes",
}

-- The contact's columns as prompt-safe text, for {{contact.<column>}}; a NULL
-- column reads as in CONTACT_DEFAULTS ("title unknown" …) so the placeholder
-- still renders.
function fmt.contact_fields(c)
  c = c or {}
  local out = {}
  for k, default in pairs(CONTACT_DEFAULTS) do
    out[k] = fmt.text(c[k], 200) or default
  end
  out.id = c.id and tostring(c.id) or "unknown"
  out.lifecycle_stage = fmt.words(out.lifecycle_stage)
  return out
end

-- The contact card: one "Field: value" line per known field.
function fmt.contact_card(c, now)
  if c == nil then return "(contact not found)" end
  local lines = {}
  local function add(label, value)
    if value ~= nil then lines[#lines + 1] = label .. ": " .. value end
  end
  add("Name", fmt.text(c.full_name or ((c.first_name or "") .. " " .. (c.last_name or "")), 120))
  add("Title", fmt.text(c.title, 120))
  add("Company", fmt.text(c.company, 120))
  add("Industry", fmt.text(c.industry, 80))
  add("Lifecycle stage", fmt.words(fmt.text(c.lifecycle_stage, 40)))
  add("Account owner", fmt.text(c.owner, 80))
  add("Email", fmt.text(c.email, 120))
  add("Phone", fmt.text(c.phone, 40))
  add("In CRM since", c.created_at and fmt.dated(c.created_at, now))
  add("Notes", fmt.text(c.notes, 600))
  return table.concat(lines, "\n")
end

-- One line per deal, e.g.
-- "- Enterprise plan - Acme | open, proposal | USD 48,500 | 40% | closes 2026-12-20 (in 25 days)"
function fmt.deal_line(d, now)
  local parts = { fmt.text(d.name, 120) or "(unnamed deal)" }
  local closed = d.stage == "closed_won" or d.stage == "closed_lost"
  if d.is_open ~= nil then closed = not d.is_open end
  parts[#parts + 1] = (closed and "" or "open, ") .. (fmt.words(fmt.text(d.stage, 40)) or "stage unknown")
  parts[#parts + 1] = fmt.money(d.amount, d.currency)
  if not closed then parts[#parts + 1] = fmt.percent(d.probability) .. " probability" end
  if d.close_date then
    local today, close = fmt.day_number(now), fmt.day_number(d.close_date)
    local days = today and close and close - today
    if closed then
      parts[#parts + 1] = "closed " .. fmt.date(d.close_date)
    elseif days and days < 0 then
      parts[#parts + 1] = "close date " .. fmt.date(d.close_date) .. " (OVERDUE by " .. fmt.plural(-days, "day") .. ")"
    else
      parts[#parts + 1] = "closes " .. dated_on(d.close_date, today)
    end
  end
  return "- " .. table.concat(parts, " | ")
end

-- All deals, one line each (newest first, as the query returns them).
function fmt.deal_list(deals, now, limit)
  if deals == nil or #deals == 0 then return "(no deals)" end
  local lines = {}
  for i, d in ipairs(deals) do
    if limit and i > limit then
      lines[#lines + 1] = "- … and " .. fmt.plural(#deals - limit, "older deal")
      break
    end
    lines[#lines + 1] = fmt.deal_line(d, now)
  end
  return table.concat(lines, "\n")
end

-- Pipeline totals per currency, from the deal_summary query.
function fmt.deal_totals(rows)
  if rows == nil or #rows == 0 then return "(no deals)" end
  local lines = {}
  for _, r in ipairs(rows) do
    lines[#lines + 1] = string.format(
      "- %s: %d open (%s, weighted %s; %d past close date), %d won (%s), %d lost",
      fmt.text(r.currency, 8) or "?", r.open_count or 0, fmt.money(r.open_amount),
      fmt.money(r.weighted_open_amount), r.overdue_count or 0,
      r.won_count or 0, fmt.money(r.won_amount), r.lost_count or 0)
  end
  return table.concat(lines, "\n")
end

local WHO = { inbound = " from the contact", outbound = " from us" }

-- f remembered per value, for one block: columns such as an activity's kind or
-- outcome take a handful of values, so each is cleaned once, not on every row.
-- nil stays nil.
local function per_value(f)
  local seen = {}
  return function(v)
    if v == nil then return nil end
    local r = seen[v]
    if r == nil then
      r = f(v) or false
      seen[v] = r
    end
    return r or nil
  end
end

-- One line per activity, e.g.
-- "- 2026-11-20 (5 days ago) | email from us | no reply | Following up on pricing | Hi David, …"
-- opts.limit (default 25) activities, opts.body_chars (default 200) of each body.
function fmt.timeline(activities, now, opts)
  if activities == nil or #activities == 0 then return "(no activities recorded)" end
  opts = opts or {}
  local limit, body_chars = opts.limit or 25, opts.body_chars or 200
  local today = fmt.day_number(now)
  local kind = per_value(function(k) return fmt.text(k, 20) end)
  local outcome = per_value(function(o) return fmt.words(fmt.text(o, 40)) end)
  local lines = {}
  for i, a in ipairs(activities) do
    if i > limit then
      local rest = fmt.plural(#activities - limit, "older activity", "older activities")
      lines[#lines + 1] = "- … " .. rest .. " not shown"
      break
    end
    local parts = { dated_on(a.occurred_at, today),
                    (kind(a.kind) or "activity") .. (WHO[a.direction] or "") }
    if a.outcome then parts[#parts + 1] = outcome(a.outcome) end
    if a.subject then parts[#parts + 1] = fmt.text(a.subject, 120) end
    local body = body_chars > 0 and fmt.text(a.body, body_chars)
    if body and a.body_truncated and body:sub(-#"…") ~= "…" then   -- not already cut by fmt.text
      body = body .. "…"
    end
    if body then parts[#parts + 1] = body end
    lines[#lines + 1] = "- " .. table.concat(parts, " | ")
  end
  return table.concat(lines, "\n")
end

-- The activity_stats row as a few labelled lines.
function fmt.activity_stats(s, now)
  if s == nil then return "(no statistics)" end
  if (s.activities_total or 0) == 0 then return "No activities recorded for this contact." end
  local today = fmt.day_number(now)
  local function windows(prefix)
    return string.format("30 days %d | 90 days %d | 365 days %d",
      s[prefix .. "_30d"] or 0, s[prefix .. "_90d"] or 0, s[prefix .. "_365d"] or 0)
  end
  return table.concat({
    "Touches (emails, calls, meetings): " .. windows("touches"),
    "From the contact (inbound): " .. windows("inbound"),
    "From us (outbound): " .. windows("outbound"),
    "Emails: " .. windows("emails"),
    "Calls: " .. windows("calls"),
    "Meetings held: " .. windows("meetings"),
    "Emails from us without a reply (90 days): " .. (s.unanswered_emails_90d or 0),
    "Open tasks: " .. (s.open_tasks or 0),
    "Last touch: " .. dated_on(s.last_touch_at, today),
    "Last message or call from the contact: " .. dated_on(s.last_inbound_at, today),
    "Last message or call from us: " .. dated_on(s.last_outbound_at, today),
    "Last two-way contact (their message or reply, a connected call, a meeting): "
      .. dated_on(s.last_two_way_at, today),
    "Last meeting held: " .. dated_on(s.last_meeting_at, today),
    "First activity: " .. dated_on(s.first_activity_at, today),
    "Activities in total: " .. s.activities_total,
  }, "\n")
end

return fmt
