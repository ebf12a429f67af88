-- luacheck config: `luacheck scripts/ tests/scripts/`
--
-- scripts/ run in rapport's sandbox, so they are checked against exactly the
-- globals it provides (no io, no os.execute, no load, no package, no cjson …):
-- using anything else is reported as an undefined global. The list is the one
-- in core/script_sandbox.c (script_sandbox_globals), which also builds the
-- sandbox and the globals `rapport check` lints with; tests/unit/test_script.c
-- fails when this file says otherwise.

stds.rapport_sandbox = {
  read_globals = {
    "_G", "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print",
    "rawequal", "rawget", "rawlen", "rawset", "read_prompt", "require", "select",
    "setmetatable", "tonumber", "tostring", "type", "xpcall",
    db = { fields = { "query" } },
    json = { fields = { "array", "decode", "encode", "is_array", "null" } },
    llm = { fields = { "chat" } },
    math = { fields = { "abs", "acos", "asin", "atan", "ceil", "cos", "deg", "exp", "floor",
                        "fmod", "huge", "log", "max", "maxinteger", "min", "mininteger", "modf",
                        "pi", "rad", "random", "randomseed", "sin", "sqrt", "tan", "tointeger",
                        "type", "ult" } },
    os = { fields = { "clock", "date", "time" } },
    string = { fields = { "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower",
                          "match", "pack", "packsize", "rep", "reverse", "sub", "unpack",
                          "upper" } },
    table = { fields = { "concat", "insert", "move", "pack", "remove", "sort", "unpack" } },
    utf8 = { fields = { "char", "charpattern", "codepoint", "codes", "len", "offset" } },
  },
}

max_line_length = 120

files["scripts/"] = { std = "rapport_sandbox" }
files["tests/scripts/"] = { std = "lua54" }
