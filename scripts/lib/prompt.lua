-- Prompt templates: the texts in prompts/ with {{placeholders}}.
--
--   prompt.render("Today is {{today}}; hello {{contact.first_name}}", vars)
--
-- {{name}} takes vars.name, {{a.b}} takes vars.a.b. Values are strings or
-- numbers. A placeholder with no value is an error that names it, so a typo in
-- a prompt file fails loudly instead of reaching the model. Substitution is one
-- pass: "{{…}}" inside a value (CRM text) is left as it is, never expanded.

local prompt = {}

local NAME = "[%a_][%w_]*"
local PLACEHOLDER = "{{%s*([%w_%.]+)%s*}}"

local function valid_path(path)
  for part in (path .. "."):gmatch("([^.]*)%.") do
    if not part:match("^" .. NAME .. "$") then return false end
  end
  return true
end

-- The template cut at its placeholders: literal text at odd indexes, the
-- placeholder paths between them ("a {{b}} c" -> { "a ", "b", " c" }).
-- Errors on a malformed placeholder ("{{ contact block }}", "{{today}" …).
local function split(template)
  local parts, pos = {}, 1
  while true do
    local open = template:find("{{", pos, true)
    if not open then break end
    local close = template:find("}}", open + 2, true)
    local path = close and template:sub(open, close + 1):match("^" .. PLACEHOLDER .. "$")
    if not path or not valid_path(path) then
      local shown = template:sub(open, close and close + 1 or open + 30):gsub("\n.*", "")
      error("malformed placeholder " .. shown, 0)
    end
    parts[#parts + 1] = template:sub(pos, open - 1)
    parts[#parts + 1] = path
    pos = close + 2
  end
  parts[#parts + 1] = template:sub(pos)
  return parts
end

-- The placeholder names of a template, in order of first use. Errors on a
-- malformed one ("{{ contact block }}", "{{today}" …).
function prompt.placeholders(template)
  local names, seen = {}, {}
  local parts = split(template)
  for i = 2, #parts, 2 do
    local path = parts[i]
    if not seen[path] then
      seen[path] = true
      names[#names + 1] = path
    end
  end
  return names
end

-- Templates split once, when prompt.check() sees them at load time: rendering
-- a checked template then joins its parts instead of scanning the whole
-- prompt text (a few KB) with patterns on every request.
local checked = {}

-- The template back, after checking its placeholders are well formed; for use
-- at load time: local SYSTEM = prompt.check(read_prompt("x.system.md"))
function prompt.check(template)
  assert(type(template) == "string", "prompt template must be a string")
  checked[template] = split(template)
  return template
end

local function lookup(vars, path)
  local v = vars
  for part in path:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

-- The template with every {{placeholder}} replaced by its value in vars.
-- `where` (optional) names the template in error messages.
function prompt.render(template, vars, where)
  local suffix = where and (" in " .. where) or ""
  local parts = checked[template] or split(template)
  local out = {}
  for i, part in ipairs(parts) do
    if i % 2 == 1 then
      out[i] = part
    else
      local v = lookup(vars, part)
      if v == nil then
        error("unknown placeholder {{" .. part .. "}}" .. suffix, 0)
      elseif type(v) == "number" then
        v = math.tointeger(v) and string.format("%d", v) or tostring(v)
      elseif type(v) ~= "string" then
        error("placeholder {{" .. part .. "}}" .. suffix .. " is a " .. type(v) .. ", not text", 0)
      end
      out[i] = v
    end
  end
  return table.concat(out)
end

-- The usual two messages: a system prompt and a user prompt, both rendered
-- with the same vars.
function prompt.messages(system_template, user_template, vars)
  return {
    { role = "system", content = prompt.render(system_template, vars, "the system prompt") },
    { role = "user",   content = prompt.render(user_template, vars, "the user prompt") },
  }
end

return prompt
