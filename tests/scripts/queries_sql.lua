-- The named queries as plain SQL, for checking them against a real database.
--
--   lua5.4 tests/scripts/queries_sql.lua explain 42 | psql -X "$DATABASE_URL"
--       EXPLAIN (ANALYZE, BUFFERS) of every query for contact 42
--   lua5.4 tests/scripts/queries_sql.lua pgbench DIR
--       writes DIR/<query>.sql pgbench scripts (random contact id in 1..:maxid), e.g.
--       pgbench -n -M prepared -f DIR/contact.sql -D maxid=100000 -T 10 --log …
--
-- Covers scripts/lib/queries.lua and the `sql` tables of every scripts/*.lua.

local dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local H = require("harness")

local mode, param = arg[1], arg[2]

-- name -> sql, shared queries first, then each script's own.
local queries, names = {}, {}
local function add(name, spec)
  if queries[name] then return end
  queries[name] = type(spec) == "string" and spec or spec.sql
  names[#names + 1] = name
end
local shared = H.queries()
local shared_names = {}
for name in pairs(shared) do shared_names[#shared_names + 1] = name end
table.sort(shared_names)
for _, name in ipairs(shared_names) do add(name, shared[name]) end
for _, t in ipairs({ "relationship_health", "smart_tips", "contextual_research" }) do
  local script = H.load_script(t)
  for name, spec in pairs(script.sql or {}) do add(name, spec) end
end

if mode == "explain" then
  local id = math.tointeger(tonumber(param)) or 1
  for _, name in ipairs(names) do
    print("\\echo '== " .. name .. "'")
    print("PREPARE q_" .. name .. "(bigint) AS " .. queries[name] .. ";")
    print("EXPLAIN (ANALYZE, BUFFERS) EXECUTE q_" .. name .. "(" .. id .. ");")
  end
elseif mode == "pgbench" and param then
  for _, name in ipairs(names) do
    local f = assert(io.open(param .. "/" .. name .. ".sql", "w"))
    f:write("\\set id random(1, :maxid)\n", (queries[name]:gsub("%$1", ":id")), ";\n")
    f:close()
    print(param .. "/" .. name .. ".sql")
  end
else
  io.stderr:write("usage: queries_sql.lua explain <contact id> | pgbench <dir>\n")
  os.exit(2)
end
