-- Cleaning model output in post(): the schema shapes the reply, but a script
-- still clamps numbers, maps words onto its enums, trims text and bounds lists
-- before anything reaches the UI.

local clean = {}

-- reply.data when the model answered with a JSON object; otherwise an error
-- (the host then reports a failed generation, which is never cached).
function clean.reply_object(reply)
  if type(reply) == "table" and type(reply.data) == "table" then return reply.data end
  if type(reply) == "table" and reply.finish_reason == "length" then
    error("model reply was cut off (finish_reason=length): raise max_tokens", 0)
  end
  error("model reply is not a JSON object", 0)
end

-- Trimmed one-line text of at most max characters; nil when empty or not text.
function clean.text(v, max)
  if type(v) ~= "string" and type(v) ~= "number" then return nil end
  local s = tostring(v):gsub("%s+", " ")
  -- At most one space at either end now: drop it by its byte, where a " $"
  -- pattern would walk the whole text.
  if s:byte(1) == 32 then s = s:sub(2) end
  if s:byte(-1) == 32 then s = s:sub(1, -2) end
  if s == "" then return nil end
  local len = utf8.len(s)                  -- nil for invalid UTF-8: left as it is
  if len and len > max then
    s = s:sub(1, utf8.offset(s, max) - 1)
    if s:byte(-1) == 32 then s = s:sub(1, -2) end
    s = s .. "…"
  end
  return s
end

-- An integer clamped to lo..hi (rounding floats, reading numeric strings such
-- as "72" or "72%"); nil when v is not a number at all.
function clean.integer(v, lo, hi)
  if type(v) == "string" then v = tonumber((v:match("^%s*(-?[%d%.]+)"))) end
  if type(v) ~= "number" or v ~= v then return nil end
  v = math.floor(v + 0.5)
  if v < lo then v = lo elseif v > hi then v = hi end
  return math.tointeger(v)
end

-- The canonical spelling of v within `allowed` (a list), trying the
-- `synonyms` map ("at risk" -> "at_risk") on a normalised form: lower case,
-- spaces and hyphens as underscores. nil when nothing matches.
function clean.enum(v, allowed, synonyms)
  if type(v) ~= "string" then return nil end
  local key = v:lower():gsub("^%s+", ""):gsub("%s+$", ""):gsub("[%s%-]+", "_")
  key = (synonyms and synonyms[key]) or key
  for _, a in ipairs(allowed) do
    if a == key then return a end
  end
  return nil
end

-- A list of at most max_items distinct texts (compared case-insensitively),
-- each cut to max_chars; non-text entries are dropped. Marked as a JSON array.
function clean.list(v, max_items, max_chars)
  local out, seen = {}, {}
  if type(v) == "table" then
    for _, item in ipairs(v) do
      local s = clean.text(item, max_chars)
      local key = s and s:lower()
      if s and not seen[key] then
        seen[key] = true
        out[#out + 1] = s
        if #out == max_items then break end
      end
    end
  end
  return json.array(out)
end

-- v when it is a list (array table), else an empty list.
function clean.array(v)
  if type(v) == "table" then return v end
  return {}
end

return clean
