-- A pure-Lua stand-in for rapport's script host, for testing scripts/ without
-- the C server (run with lua5.4 from the repo root).
--
-- It follows the host contract (docs: the scripts section of DESIGN.md):
--   * each script or lib module loads in its own sandbox environment with the
--     globals of script_sandbox_globals (core/script_sandbox.c; the unit test
--     test_script.c holds this file to it): the base functions, string (no
--     dump), table, math, utf8, os.{time,clock,date}, print, json, require
--     (scripts/lib only), db/llm (raise outside run); reading an undefined
--     global is an error;
--   * read_prompt(name) returns prompts/<name>, only while the script file loads;
--   * query names resolve against the script's own `sql`, then scripts/lib/queries.lua;
--   * json is a shim over lua-cjson (the harness's own; scripts cannot reach
--     cjson): decode keeps integers and marks arrays,
--     json.array marks a table as an array (a metatable marker), json.null.
-- Plus what tests need: fixture contexts, replies, a strict-mode schema
-- checker, a small JSON-schema validator and a schema-guided encoder.

local cjson = require("cjson")

local H = {}

-- The repo root, from this file's path (tests/scripts/harness.lua).
local here = debug.getinfo(1, "S").source:match("^@(.*)$") or ""
H.root = here:gsub("tests/scripts/harness%.lua$", ""):gsub("/$", "")
if H.root == "" then H.root = "." end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end
H.read_file = read_file

---------------------------------------------------------------------------
-- json shim
---------------------------------------------------------------------------

local ARRAY = { __name = "json.array" }

local function is_marked_array(t) return getmetatable(t) == ARRAY end

local function normalise(v)
  if type(v) == "number" then
    local i = math.tointeger(v)
    if i and math.abs(i) <= 2 ^ 53 then return i end
    return v
  elseif type(v) == "table" then
    local n = 0
    for k, x in pairs(v) do
      v[k] = normalise(x)
      n = n + 1
    end
    if n > 0 and #v == n then setmetatable(v, ARRAY) end
    return v
  end
  return v
end

local json = {
  null = cjson.null,
  array = function(t) return setmetatable(t or {}, ARRAY) end,
  decode = function(s) return normalise(cjson.decode(s)) end,
  is_array = function(t) return type(t) == "table" and is_marked_array(t) end,
}
H.json = json

local function is_array(t, schema)
  if is_marked_array(t) then return true end
  if schema and (schema.type == "array"
                 or (type(schema.type) == "table" and schema.type[1] == "array")) then
    return true
  end
  if next(t) == nil then return false end
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then return false end
    n = n + 1
  end
  return n == #t
end

-- JSON text of v, with `schema` as a guide for empty arrays (like the host).
-- Object keys are sorted so the output is stable.
function H.encode(v, schema)
  local t = type(v)
  if v == nil or v == cjson.null then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error("cannot encode NaN/Inf") end
    if math.type(v) == "integer" then return string.format("%d", v) end
    return string.format("%.17g", v)
  end
  if t == "string" then return cjson.encode(v) end
  if t ~= "table" then error("cannot encode a " .. t) end
  local props = schema and schema.properties or {}
  if is_array(v, schema) then
    local out = {}
    for i, x in ipairs(v) do out[i] = H.encode(x, schema and schema.items) end
    return "[" .. table.concat(out, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" then error("object key is not a string: " .. tostring(k)) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local out = {}
  for i, k in ipairs(keys) do out[i] = cjson.encode(k) .. ":" .. H.encode(v[k], props[k]) end
  return "{" .. table.concat(out, ",") .. "}"
end
json.encode = H.encode

---------------------------------------------------------------------------
-- Sandbox and loading
---------------------------------------------------------------------------

-- The sandbox's globals and the fields of its library tables: the same list
-- as script_sandbox_globals in core/script_sandbox.c (tests/unit/test_script.c
-- holds the two equal, and .luacheckrc and docs/scripts.md to it).
local FIELDS = {
  string = { "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match",
             "pack", "packsize", "rep", "reverse", "sub", "unpack", "upper" },
  table = { "concat", "insert", "move", "pack", "remove", "sort", "unpack" },
  math = { "abs", "acos", "asin", "atan", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge",
           "log", "max", "maxinteger", "min", "mininteger", "modf", "pi", "rad", "random",
           "randomseed", "sin", "sqrt", "tan", "tointeger", "type", "ult" },
  utf8 = { "char", "charpattern", "codepoint", "codes", "len", "offset" },
  os = { "clock", "date", "time" },
  json = { "array", "decode", "encode", "is_array", "null" },
  db = { "query" },
  llm = { "chat" },
}
local LIBS = { string = string, table = table, math = math, utf8 = utf8, os = os, json = json }

local function pick(lib, names)
  local c = {}
  for _, k in ipairs(names) do c[k] = lib[k] end
  return c
end

local function only_in_run(what)
  return function() error(what .. " is only available inside run(ctx)", 2) end
end

-- A fresh sandbox environment. `state` is shared by a script and its modules.
local function sandbox(state)
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = pcall, xpcall = xpcall, select = select, tonumber = tonumber, tostring = tostring,
    type = type, rawequal = rawequal, rawlen = rawlen, rawget = rawget, rawset = rawset,
    setmetatable = setmetatable, getmetatable = getmetatable,
    print = function(...)
      local parts = {}
      for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
      state.log[#state.log + 1] = table.concat(parts, "\t")
    end,
    db = { query = only_in_run("db.query") },
    llm = { chat = only_in_run("llm.chat") },
  }
  for name, lib in pairs(LIBS) do env[name] = pick(lib, FIELDS[name]) end
  env._G = env
  env.require = function(name)
    if type(name) ~= "string" or not name:match("^[%w_]+[%w_%.]*$") then
      error("require: bad module name " .. tostring(name), 2)
    end
    if state.modules[name] ~= nil then return state.modules[name] end
    local rel = "scripts/lib/" .. name:gsub("%.", "/") .. ".lua"
    local src = read_file(H.root .. "/" .. rel)
    if not src then error("require: no module " .. rel, 2) end
    local chunk = assert(load(src, "@" .. rel, "t", sandbox(state, false)))
    local mod = chunk()
    if mod == nil then mod = true end
    state.modules[name] = mod
    return mod
  end
  env.read_prompt = function(name)
    do
      if not state.loading then
        error("read_prompt is only available while the script file loads", 2)
      end
      if type(name) ~= "string" or name:find("..", 1, true) or name:find("^/") then
        error("read_prompt: bad name " .. tostring(name), 2)
      end
      local text = read_file(H.root .. "/prompts/" .. name)
      if not text then error("read_prompt: no prompt file prompts/" .. name, 2) end
      state.prompts[#state.prompts + 1] = name
      return text
    end
  end
  return setmetatable(env, {
    __index = function(_, k) error("undefined global '" .. tostring(k) .. "'", 2) end,
  })
end

-- What a script sees: { name = true } for a value, { name = {fields…} } for a
-- library table (sorted). tests/unit/test_script.c compares it with the host.
function H.sandbox_globals()
  local env = sandbox({ modules = {}, log = {}, prompts = {} }, false)
  local out = {}
  for k, v in pairs(env) do
    if type(v) == "table" and k ~= "_G" then
      local f = {}
      for name in pairs(v) do f[#f + 1] = name end
      table.sort(f)
      out[k] = f
    else
      out[k] = true
    end
  end
  return out
end

-- The named queries module (scripts/lib/queries.lua), loaded like the host does.
function H.queries()
  local state = { modules = {}, log = {}, prompts = {} }
  return sandbox(state, false).require("queries")
end

-- Load scripts/<type>.lua; returns the script table and its load state
-- (prompts read, modules required, log lines).
function H.load_script(type_name)
  local rel = "scripts/" .. type_name .. ".lua"
  local src = assert(read_file(H.root .. "/" .. rel))
  local state = { loading = true, modules = {}, log = {}, prompts = {} }
  local chunk = assert(load(src, "@" .. rel, "t", sandbox(state, true)))
  local script = chunk()
  state.loading = false
  return script, state
end

-- The query specs a script asks for: name -> { sql = "...", one = bool }.
-- Errors on an unknown name, like the host's loader.
function H.resolve_queries(script)
  local shared = H.queries()
  local out = {}
  for _, name in ipairs(script.queries or {}) do
    local spec = (script.sql and script.sql[name]) or shared[name]
    if spec == nil then error("unknown query '" .. name .. "'") end
    if type(spec) == "string" then spec = { sql = spec } end
    out[name] = { sql = spec.sql, one = spec.one == true }
  end
  return out
end

-- The ctx the host would build: fixture rows under each query name, plus
-- contact_id, type and now. A list query missing from the fixture is an error.
function H.ctx(script, type_name, fixture)
  local ctx = { contact_id = fixture.contact_id, type = type_name, now = fixture.now }
  for name, spec in pairs(H.resolve_queries(script)) do
    local rows = fixture[name]
    if not spec.one and rows == nil then
      error("fixture has no rows for query '" .. name .. "'")
    end
    ctx[name] = rows
  end
  return ctx
end

-- A model reply as the host hands it to post(): text, data (decoded when the
-- content is a JSON object), finish_reason and model.
function H.reply(content, finish_reason)
  local text = type(content) == "table" and H.encode(content) or content
  local ok, data = pcall(json.decode, text)
  if not ok or type(data) ~= "table" or is_marked_array(data) then data = nil end
  return { text = text, data = data, finish_reason = finish_reason or "stop", model = "gpt-4o-mini" }
end

-- post(reply, ctx) or the host's default when a script has no post.
function H.post(script, reply, ctx)
  if script.post then return script.post(reply, ctx) end
  return reply.data or { text = reply.text }
end

---------------------------------------------------------------------------
-- Schemas
---------------------------------------------------------------------------

local STRICT_KEYWORDS = {
  type = true, properties = true, required = true, additionalProperties = true,
  items = true, enum = true, description = true, minimum = true, maximum = true,
  minItems = true, maxItems = true,
}
local JSON_TYPES = { object = true, array = true, string = true, number = true,
                     integer = true, boolean = true, null = true }

local function types_of(node)
  local t = node.type
  if type(t) == "string" then return { t } end
  if type(t) == "table" then return t end
  return {}
end

local function has_type(node, name)
  for _, t in ipairs(types_of(node)) do
    if t == name then return true end
  end
  return false
end

-- Problems with `schema` under OpenAI's strict json_schema rules (empty list
-- when it is fine): known keywords only, every object closed
-- (additionalProperties = false) with every property required, arrays with items.
function H.strict_errors(schema)
  local errs = {}
  local function bad(path, msg) errs[#errs + 1] = path .. ": " .. msg end
  local function walk(node, path)
    if type(node) ~= "table" then return bad(path, "schema node is not a table") end
    for k in pairs(node) do
      if not STRICT_KEYWORDS[k] then bad(path, "unsupported keyword '" .. tostring(k) .. "'") end
    end
    local types = types_of(node)
    if #types == 0 then bad(path, "no type") end
    for _, t in ipairs(types) do
      if not JSON_TYPES[t] then bad(path, "unknown type '" .. tostring(t) .. "'") end
    end
    if node.description ~= nil and type(node.description) ~= "string" then
      bad(path, "description is not a string")
    end
    if has_type(node, "object") then
      if node.additionalProperties ~= false then bad(path, "additionalProperties must be false") end
      local props = node.properties
      if type(props) ~= "table" or next(props) == nil then
        bad(path, "object without properties")
      else
        local required = {}
        for i, name in ipairs(node.required or {}) do
          if required[name] then bad(path, "'" .. name .. "' required twice") end
          required[name] = i
        end
        for name, sub in pairs(props) do
          if not required[name] then bad(path, "property '" .. name .. "' not in required") end
          walk(sub, path .. "." .. name)
        end
        for name in pairs(required) do
          if props[name] == nil then bad(path, "required '" .. name .. "' is not a property") end
        end
      end
    elseif node.properties or node.required or node.additionalProperties ~= nil then
      bad(path, "object keywords on a non-object")
    end
    if has_type(node, "array") then
      if node.items == nil then bad(path, "array without items") else walk(node.items, path .. "[]") end
    elseif node.items or node.minItems or node.maxItems then
      bad(path, "array keywords on a non-array")
    end
    if (node.minimum or node.maximum) and not (has_type(node, "number") or has_type(node, "integer")) then
      bad(path, "minimum/maximum on a non-number")
    end
    if node.enum ~= nil then
      if type(node.enum) ~= "table" or #node.enum == 0 then bad(path, "empty enum") end
    end
  end
  if type(schema) ~= "table" then return { "schema is not a table" } end
  if schema.type ~= "object" then bad("$", "the root must be an object") end
  walk(schema, "$")
  return errs
end

local function json_type(v)
  if v == nil or v == cjson.null then return "null" end
  local t = type(v)
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  if t == "table" then return is_array(v) and "array" or "object" end
  return t
end

-- Problems with `value` against `schema` (empty list when it is valid). An
-- empty table is accepted as an array or an object.
function H.validate(value, schema, path)
  local errs = {}
  local function bad(p, msg) errs[#errs + 1] = p .. ": " .. msg end
  local function check(v, s, p)
    local vt = json_type(v)
    if type(v) == "table" and next(v) == nil and not is_marked_array(v) then vt = "empty" end
    local ok = false
    for _, t in ipairs(types_of(s)) do
      if t == vt or (t == "number" and vt == "integer")
         or (vt == "empty" and (t == "array" or t == "object")) then
        ok = true
      end
    end
    if not ok then return bad(p, "expected " .. table.concat(types_of(s), "|") .. ", got " .. vt) end
    if s.enum then
      local found = false
      for _, e in ipairs(s.enum) do
        if e == v then found = true end
      end
      if not found then bad(p, "value " .. tostring(v) .. " not in enum") end
    end
    if type(v) == "number" then
      if s.minimum and v < s.minimum then bad(p, v .. " < minimum " .. s.minimum) end
      if s.maximum and v > s.maximum then bad(p, v .. " > maximum " .. s.maximum) end
    end
    if type(v) == "table" and (vt == "array" or (vt == "empty" and has_type(s, "array"))) then
      if s.minItems and #v < s.minItems then bad(p, #v .. " items < minItems " .. s.minItems) end
      if s.maxItems and #v > s.maxItems then bad(p, #v .. " items > maxItems " .. s.maxItems) end
      for i, x in ipairs(v) do check(x, s.items or {}, p .. "[" .. i .. "]") end
    elseif type(v) == "table" then
      local props = s.properties or {}
      for _, name in ipairs(s.required or {}) do
        if v[name] == nil then bad(p, "missing '" .. name .. "'") end
      end
      for k, x in pairs(v) do
        if props[k] then
          check(x, props[k], p .. "." .. tostring(k))
        elseif s.additionalProperties == false then
          bad(p, "unexpected '" .. tostring(k) .. "'")
        end
      end
    end
  end
  check(value, schema, path or "$")
  return errs
end

return H
