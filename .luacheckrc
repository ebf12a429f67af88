-- luacheck config: `luacheck scripts/ tests/scripts/`
--
-- scripts/ run in rapport's sandbox, so they are checked against exactly the
-- globals it provides (no io, no os.execute, no load, no package …):
-- using anything else is reported as an undefined global.

stds.rapport_sandbox = {
  read_globals = {
    "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber",
    "tostring", "type", "rawequal", "rawlen", "rawget", "rawset", "setmetatable",
    "getmetatable", "print", "require",
    "string", "table", "math", "utf8",
    os = { fields = { "time", "clock", "date" } },
    cjson = { other_fields = true },
    json = { fields = { "decode", "encode", "null", "array" } },
    read_prompt = {},   -- only while the script file loads (top level)
  },
}

max_line_length = 120

files["scripts/"] = { std = "rapport_sandbox" }
files["tests/scripts/"] = { std = "lua54" }
