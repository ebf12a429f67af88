"""Live editing of analysis scripts and the Lua sandbox, over real HTTP.

The real binary runs on a scripts folder made for each test (small scripts
written below, or a copy of the repo's scripts/ and prompts/), against the
throwaway PostgreSQL cluster and the fake upstream. Each test names the
behaviour it pins down:

- hot reload: new, edited, broken, fixed and deleted files, SIGHUP, prompt
  and lib-module edits and what they do to versions and the cache;
- the sandbox: every escape attempt fails with a clear error, the server
  serves on, and the upstream API key is never visible;
- limits: the instruction budget and the memory cap end runaway scripts
  without stopping the server.

Nothing here is skipped or expected to fail: a behaviour the host does not
have yet is a failing test.
"""

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

# How long a saved file may take to go live (DESIGN: "a saved file is live
# within a second"); polls give up after POLL_DEADLINE.
LIVE_WITHIN = 1.0
POLL_DEADLINE = 3.0

SECRET = "sk-test-SECRET123"


# ---- helpers -----------------------------------------------------------------

def analysis(srv, contact, type_, headers=None, timeout=30.0):
    return srv.get("/v1/contacts/%s/analyses/%s" % (contact, type_), headers=headers,
                   timeout=timeout)


def types_of(srv):
    r = srv.get("/v1/analysis-types")
    assert r.status == 200, r.body
    return {t["name"]: t for t in r.json()["types"]}


def calls(fake):
    return fake.stats()["chat_calls"]


def poll(fn, deadline=POLL_DEADLINE, interval=0.02):
    """Calls fn() until it returns a true value or `deadline` seconds pass.
    Returns (last value, seconds waited)."""
    t0 = time.monotonic()
    while True:
        value = fn()
        waited = time.monotonic() - t0
        if value or waited >= deadline:
            return value, waited
        time.sleep(interval)


def wait_version_change(srv, type_, old, deadline=POLL_DEADLINE):
    """Waits until type_'s listed version differs from `old`; returns the
    listing entry (or None when it never changed) and the time waited."""
    def changed():
        t = types_of(srv).get(type_)
        return t if t and t.get("version") != old else None
    return poll(changed, deadline)


def script_errors(srv, type_=None):
    """Log lines of failed script calls (pcall errors), optionally of one type."""
    return [l for l in srv.log_lines()
            if l.get("msg") == "script error" and (type_ is None or l.get("script") == type_)]


def analysis_or_stuck(srv, contact, type_, timeout=15.0):
    """The analysis, or a test failure when the server does not answer within
    `timeout` s (its event loop is stuck in Lua or C): the server is then
    killed, since it cannot answer SIGTERM either."""
    t0 = time.monotonic()
    try:
        return analysis(srv, contact, type_, timeout=timeout)
    except OSError as e:
        took = time.monotonic() - t0
        alive = srv.is_running()
        srv.kill()
        pytest.fail("%s for contact %s: no answer after %.0f s (%r); the server was %s and "
                    "got SIGKILL" % (type_, contact, took, e,
                                     "still running (event loop stuck)" if alive else "gone"))


def assert_script_error(r, name, pattern):
    """A 500 script_error whose message names the script and matches pattern."""
    assert r.status == 500, r.body
    err = r.json()["error"]
    assert err["code"] == "script_error", err
    assert name in err["message"], "the message does not name the script: %r" % err["message"]
    assert re.search(pattern, err["message"]), \
        "message %r does not match %r" % (err["message"], pattern)
    return err["message"]


# ---- a small scripts folder ------------------------------------------------------

QUERIES_LUA = r'''
return {
  contact = { one = true, sql = [[
    SELECT id, first_name, last_name, company FROM contacts WHERE id = $1 ]] },
  deals = { sql = [[
    SELECT id, name, amount FROM deals WHERE contact_id = $1 ORDER BY id ]] },
}
'''

GREET_LUA = r'''
-- A lib module: alpha requires it, beta does not.
local greet = {}
greet.WORD = "@WORD@"
function greet.line(name) return greet.WORD .. " " .. (name or "?") end
return greet
'''

# A type using a lib module, a prompt file and a named query.
ALPHA_LUA = r'''
local greet = require("greet")
local SYSTEM = read_prompt("alpha.system.md")
return {
  description = "alpha: uses a lib module, a prompt and a query",
  queries = { "contact" },
  prompt = function(ctx)
    return { { role = "system", content = SYSTEM },
             { role = "user", content = greet.line(ctx.contact.first_name) } }
  end,
  post = function(reply, ctx)
    return { marker = "@MARKER@", greeting = greet.line(ctx.contact.first_name),
             system = SYSTEM }
  end,
}
'''

# A type with no query and no lib module: answers for any contact id.
BETA_LUA = r'''
local SYSTEM = read_prompt("beta.system.md")
return {
  description = "beta: no queries, no lib modules",
  prompt = function(ctx)
    return { { role = "system", content = SYSTEM },
             { role = "user", content = "contact " .. ctx.contact_id } }
  end,
  post = function(reply, ctx)
    return { marker = "@MARKER@", contact_id = ctx.contact_id }
  end,
}
'''

# The shape of a script whose prompt() tries something (@BODY@).
PROBE_LUA = r'''
return {
  description = "probe @NAME@",
  prompt = function(ctx)
    @BODY@
    return { { role = "user", content = "still here" } }
  end,
}
'''


def alpha_lua(marker="alpha-v1"):
    return ALPHA_LUA.replace("@MARKER@", marker)


def beta_lua(marker="beta-v1"):
    return BETA_LUA.replace("@MARKER@", marker)


def probe_lua(name, body):
    return PROBE_LUA.replace("@NAME@", name).replace("@BODY@", body)


class Folder:
    """A scripts folder and a prompts folder under one root."""

    def __init__(self, root):
        self.root = Path(root)
        self.scripts = self.root / "scripts"
        self.lib = self.scripts / "lib"
        self.prompts = self.root / "prompts"
        self.lib.mkdir(parents=True, exist_ok=True)
        self.prompts.mkdir(parents=True, exist_ok=True)
        self.write_lib("queries", QUERIES_LUA)
        self.write_lib("greet", GREET_LUA.replace("@WORD@", "hello"))
        self.write_prompt("alpha.system.md", "You are alpha.\n")
        self.write_prompt("beta.system.md", "You are beta.\n")
        self.write_script("alpha", alpha_lua())
        self.write_script("beta", beta_lua())

    @property
    def env(self):
        return {"RAPPORT_SCRIPTS": str(self.scripts), "RAPPORT_PROMPTS": str(self.prompts)}

    def write_script(self, name, text):
        p = self.scripts / (name + ".lua")
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    def write_lib(self, name, text):
        p = self.lib / (name + ".lua")
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    def write_prompt(self, name, text):
        p = self.prompts / name
        p.write_text(text)
        return p


@pytest.fixture
def folder(tmp_path):
    return Folder(tmp_path / "live")


@pytest.fixture
def live(make_server, folder):
    """start(**env) -> a server on `folder` (its scripts can be added before)."""
    def start(**env):
        return make_server(**folder.env, **env)
    return start


# ---- hot reload ---------------------------------------------------------------------

def test_a_new_script_file_is_listed_and_answers_within_a_second(live, folder, fake):
    srv = live()
    assert "gamma" not in types_of(srv)
    assert analysis(srv, 1, "gamma").status == 404

    folder.write_script("gamma", beta_lua("gamma-v1").replace("beta:", "gamma:"))
    t0 = time.monotonic()

    def answers():
        r = analysis(srv, 1, "gamma")
        return r if r.status == 200 else None
    r, _ = poll(answers, POLL_DEADLINE)
    delay = time.monotonic() - t0
    print("\nobserved reload delay: a new script answered %.0f ms after it was written"
          % (delay * 1000))
    assert r is not None, "the new script did not answer within %.0f s" % POLL_DEADLINE
    assert r.json()["result"]["marker"] == "gamma-v1"
    assert delay <= LIVE_WITHIN, "the new script took %.2f s to go live" % delay
    t = types_of(srv)["gamma"]
    assert t["loaded"] is True and t["error"] is None
    assert t["description"].startswith("gamma:")
    srv.wait_for_log(lambda l: l.get("msg") == "script loaded" and l.get("type") == "gamma")


def test_editing_a_script_changes_its_version_and_the_new_code_serves(live, folder, fake):
    srv = live()
    first = analysis(srv, 1, "alpha")
    assert first.status == 200, first.body
    assert first.json()["result"]["marker"] == "alpha-v1"
    v1 = types_of(srv)["alpha"]["version"]
    beta_v1 = types_of(srv)["beta"]["version"]
    assert first.json()["script_version"] == v1

    folder.write_script("alpha", alpha_lua("alpha-v2"))
    t, waited = wait_version_change(srv, "alpha", v1)
    assert t is not None, "the edit did not change the version within %.0f s" % POLL_DEADLINE
    print("\nobserved reload delay: an edited script's version changed after %.0f ms"
          % (waited * 1000))
    assert t["error"] is None and t["loaded"] is True
    r = analysis(srv, 1, "alpha")
    assert r.status == 200, r.body
    assert r.headers["X-Cache"] == "MISS", "a new version is a new cache key"
    assert r.json()["result"]["marker"] == "alpha-v2"
    assert r.json()["script_version"] == t["version"]
    assert types_of(srv)["beta"]["version"] == beta_v1, "only the edited type changes"


def test_saving_the_same_bytes_again_keeps_the_version_and_the_cache(live, folder, fake):
    srv = live()
    v1 = types_of(srv)["alpha"]["version"]
    assert analysis(srv, 1, "alpha").headers["X-Cache"] == "MISS"
    folder.write_script("alpha", alpha_lua())           # touched, not changed
    srv.wait_for_log(lambda l: l.get("msg") == "scripts reloaded"
                     and l.get("types") == 2, timeout=POLL_DEADLINE)
    assert types_of(srv)["alpha"]["version"] == v1
    assert analysis(srv, 1, "alpha").headers["X-Cache"] == "HIT"


BROKEN_EDITS = {
    # name: (file text, pattern the error must match)
    "syntax_error": ("return {\n  description = 'x',\n  prompt = function(ctx\nend }\n",
                     r"alpha\.lua:4: "),
    "runtime_error_at_top_level": ("local x = nil\nlocal y = x.field\nreturn {}\n",
                                   r"alpha\.lua:2: attempt to index a nil value"),
    "no_prompt_function": ("return { description = 'no prompt' }\n",
                           r"alpha\.lua.*'prompt' must be a function"),
    "returns_no_table": ("return 42\n", r"alpha\.lua.*must return a table"),
    "unknown_query": ("return { description = 'q', queries = { 'nope' },\n"
                      "  prompt = function(ctx) return {} end }\n",
                      r"alpha\.lua.*query 'nope' is not defined"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_EDITS))
def test_a_broken_edit_keeps_the_previous_version_serving_and_reports_file_line(
        live, folder, fake, kind):
    text, pattern = BROKEN_EDITS[kind]
    srv = live()
    assert analysis(srv, 2, "alpha").status == 200
    v1 = types_of(srv)["alpha"]["version"]

    folder.write_script("alpha", text)
    t, _ = poll(lambda: (types_of(srv)["alpha"]["error"] and types_of(srv)["alpha"]),
                POLL_DEADLINE)
    assert t, "the broken edit was not reported in /v1/analysis-types"
    assert re.search(pattern, t["error"]), "error %r does not match %r" % (t["error"], pattern)
    assert t["loaded"] is True and t["version"] == v1, "the previous version must keep serving"

    r = analysis(srv, 2, "alpha")
    assert r.status == 200, r.body
    assert r.json()["script_version"] == v1
    assert r.json()["result"]["marker"] == "alpha-v1"
    r = analysis(srv, 3, "alpha")              # a new key too, not only the cache
    assert r.status == 200 and r.json()["script_version"] == v1, r.body
    assert analysis(srv, 3, "beta").status == 200

    line = srv.wait_for_log(lambda l: l.get("msg") == "script failed to load"
                            and l.get("type") == "alpha")
    assert re.search(pattern, line["error"]), line
    assert line.get("serving", "").startswith(v1), line

    # Fixing it makes the new version live and clears the error.
    folder.write_script("alpha", alpha_lua("alpha-fixed"))
    t, _ = wait_version_change(srv, "alpha", v1)
    assert t is not None, "the fix did not go live"
    assert t["error"] is None and t["loaded"] is True
    r = analysis(srv, 2, "alpha")
    assert r.status == 200 and r.json()["result"]["marker"] == "alpha-fixed", r.body
    assert r.json()["script_version"] == t["version"]


def test_a_new_file_that_is_broken_from_the_start_is_listed_with_its_error(live, folder, fake):
    srv = live()
    folder.write_script("delta", "return {\n  description = 'delta',\n  prompt = 42,\n}\n")
    t, _ = poll(lambda: types_of(srv).get("delta"))
    assert t, "the new broken file is not listed"
    assert t["loaded"] is False and "version" not in t
    assert re.search(r"delta\.lua.*'prompt' must be a function", t["error"]), t
    r = analysis(srv, 1, "delta")
    assert r.status == 404 and r.json()["error"]["code"] == "unknown_analysis_type", r.body
    assert analysis(srv, 1, "beta").status == 200


def test_deleting_a_script_file_retires_its_type(live, folder, fake):
    srv = live()
    assert analysis(srv, 4, "beta").status == 200
    assert analysis(srv, 4, "beta").headers["X-Cache"] == "HIT"
    (folder.scripts / "beta.lua").unlink()
    gone, waited = poll(lambda: "beta" not in types_of(srv))
    assert gone, "a deleted script is still listed after %.0f s" % POLL_DEADLINE
    r = analysis(srv, 4, "beta")
    assert r.status == 404, "a deleted type must not serve, not even from cache: %r" % r
    assert r.json()["error"]["code"] == "unknown_analysis_type"
    srv.wait_for_log(lambda l: l.get("msg") == "script removed" and l.get("type") == "beta")
    assert analysis(srv, 4, "alpha").status == 200


def test_renaming_a_script_file_moves_the_type(live, folder, fake):
    srv = live()
    os.rename(folder.scripts / "beta.lua", folder.scripts / "beta2.lua")
    t, _ = poll(lambda: "beta" not in types_of(srv) and types_of(srv).get("beta2"))
    assert t and t["loaded"], "the renamed file is not the type beta2"
    assert analysis(srv, 1, "beta").status == 404
    assert analysis(srv, 1, "beta2").status == 200


def test_editor_swap_and_backup_files_are_not_types(live, folder, fake):
    srv = live()
    (folder.scripts / ".alpha.lua.swp").write_text("garbage (")
    (folder.scripts / "alpha.lua~").write_text("garbage (")
    (folder.scripts / "notes.txt").write_text("not a script")
    folder.write_script("epsilon", beta_lua("epsilon"))      # a real change, to sync on
    assert poll(lambda: "epsilon" in types_of(srv))[0]
    assert set(types_of(srv)) == {"alpha", "beta", "epsilon"}
    assert all(t["error"] is None for t in types_of(srv).values())


def test_sighup_reloads_a_change_the_watcher_did_not_see(live, folder, fake):
    srv = live()
    v1 = types_of(srv)["beta"]["version"]
    # Rewritten in place through a descriptor kept open: no close-after-write
    # event, so only SIGHUP can make the server read it.
    new = beta_lua("beta-hup")
    old = (folder.scripts / "beta.lua").read_text()
    with open(folder.scripts / "beta.lua", "r+") as f:
        f.write(new + " " * max(0, len(old) - len(new)))
        f.flush()
        os.fsync(f.fileno())
        time.sleep(0.5)
        assert types_of(srv)["beta"]["version"] == v1, \
            "precondition: the watcher reloaded on a write without close (this test needs a " \
            "change the watcher does not see)"
        srv.signal(signal.SIGHUP)
        t, waited = wait_version_change(srv, "beta", v1)
    assert t is not None, "SIGHUP did not reload"
    print("\nSIGHUP reload took %.0f ms" % (waited * 1000))
    r = analysis(srv, 1, "beta")
    assert r.status == 200 and r.json()["result"]["marker"] == "beta-hup", r.body
    srv.wait_for_log(lambda l: l.get("msg") == "scripts reloaded")


def test_sighup_with_nothing_changed_keeps_every_version_and_the_cache(live, folder, fake):
    srv = live()
    before = {n: t["version"] for n, t in types_of(srv).items()}
    assert analysis(srv, 5, "alpha").headers["X-Cache"] == "MISS"
    n_reloads = sum(1 for l in srv.log_lines() if l.get("msg") == "scripts reloaded")
    srv.signal(signal.SIGHUP)
    srv.wait_for_log(lambda l: sum(1 for x in srv.log_lines()
                                   if x.get("msg") == "scripts reloaded") > n_reloads)
    assert {n: t["version"] for n, t in types_of(srv).items()} == before
    assert analysis(srv, 5, "alpha").headers["X-Cache"] == "HIT"
    assert srv.is_running()


def test_editing_a_prompt_retires_only_that_types_cache(make_server, scripts_copy, fake):
    """On the real scripts: smart_tips' prompt changes, relationship_health's
    cached result stays a HIT."""
    srv = make_server(**scripts_copy.env)
    for type_ in ("smart_tips", "relationship_health"):
        assert analysis(srv, 21, type_).headers["X-Cache"] == "MISS"
        assert analysis(srv, 21, type_).headers["X-Cache"] == "HIT"
    before = types_of(srv)
    assert calls(fake) == 2

    p = scripts_copy.prompts / "smart_tips.user.md"
    p.write_text(p.read_text() + "\nKeep each tip under 40 words.\n")
    t, waited = wait_version_change(srv, "smart_tips", before["smart_tips"]["version"])
    assert t is not None, "editing the prompt did not change smart_tips' version"
    after = types_of(srv)
    for other in ("relationship_health", "contextual_research"):
        assert after[other]["version"] == before[other]["version"], other

    assert analysis(srv, 21, "relationship_health").headers["X-Cache"] == "HIT"
    r = analysis(srv, 21, "smart_tips")
    assert r.status == 200 and r.headers["X-Cache"] == "MISS", r
    assert r.json()["script_version"] == t["version"]
    assert calls(fake) == 3
    sent = fake.stats()["last_request"]["messages"]
    assert any("Keep each tip under 40 words." in m["content"] for m in sent), \
        "the new prompt text did not reach the model"


def test_editing_a_lib_module_changes_the_version_of_the_types_that_require_it(
        live, folder, fake):
    srv = live()
    before = types_of(srv)
    assert analysis(srv, 6, "alpha").json()["result"]["greeting"].startswith("hello ")
    assert analysis(srv, 6, "beta").status == 200

    folder.write_lib("greet", GREET_LUA.replace("@WORD@", "bonjour"))
    t, _ = wait_version_change(srv, "alpha", before["alpha"]["version"])
    assert t is not None, "editing scripts/lib/greet.lua did not change alpha's version"
    assert types_of(srv)["beta"]["version"] == before["beta"]["version"], \
        "beta does not require greet: its version must not change"
    r = analysis(srv, 6, "alpha")
    assert r.headers["X-Cache"] == "MISS"
    assert r.json()["result"]["greeting"].startswith("bonjour "), r.body
    assert analysis(srv, 6, "beta").headers["X-Cache"] == "HIT"


def test_editing_the_sql_of_a_named_query_changes_the_version(live, folder, fake):
    srv = live()
    v1 = types_of(srv)["alpha"]["version"]
    folder.write_lib("queries", QUERIES_LUA.replace("company FROM", "company, email FROM"))
    t, _ = wait_version_change(srv, "alpha", v1)
    assert t is not None, "the query's SQL changed but alpha's version did not"


def test_a_broken_lib_module_keeps_the_types_that_require_it_on_their_previous_version(
        live, folder, fake):
    srv = live()
    before = types_of(srv)
    folder.write_lib("greet", "local greet = {\nreturn greet\n")
    t, _ = poll(lambda: types_of(srv)["alpha"]["error"] and types_of(srv)["alpha"])
    assert t, "a broken lib module was not reported on the type that requires it"
    assert re.search(r"lib/greet\.lua:\d+:", t["error"]), t["error"]
    assert t["version"] == before["alpha"]["version"] and t["loaded"] is True
    assert types_of(srv)["beta"]["error"] is None
    r = analysis(srv, 7, "alpha")
    assert r.status == 200 and r.json()["script_version"] == before["alpha"]["version"], r.body


def test_a_request_in_flight_finishes_on_the_version_it_started_with(live, folder, fake):
    srv = live()
    v1 = types_of(srv)["alpha"]["version"]
    fake.config(latency_ms=1500)
    out = {}

    def slow():
        out["r"] = analysis(srv, 8, "alpha")
    th = threading.Thread(target=slow)
    th.start()
    in_flight, _ = poll(lambda: fake.stats()["in_flight"] >= 1)
    assert in_flight, "the request never reached the model"
    folder.write_script("alpha", alpha_lua("alpha-v2"))
    t, _ = wait_version_change(srv, "alpha", v1)
    assert t is not None
    th.join(10)
    r = out["r"]
    assert r.status == 200, r.body
    assert r.json()["script_version"] == v1
    assert r.json()["result"]["marker"] == "alpha-v1", "post() ran on the new version"
    fake.config(latency_ms=0)
    r = analysis(srv, 8, "alpha")
    assert r.json()["script_version"] == t["version"]
    assert r.json()["result"]["marker"] == "alpha-v2"


# ---- the sandbox: escape attempts in prompt() ------------------------------------

# name: (Lua run inside prompt(ctx), pattern the error message must match)
ESCAPES = {
    "io_open": ('local f = io.open("/etc/passwd")', r"undefined global 'io'"),
    "io_popen": ('local p = io.popen("id")', r"undefined global 'io'"),
    "os_execute": ('os.execute("touch /tmp/rapport-sandbox-pwned")',
                   r"field 'execute'"),
    "os_getenv": ('local k = os.getenv("OPENAI_API_KEY")', r"field 'getenv'"),
    "os_exit": ("os.exit(3)", r"field 'exit'"),
    "os_remove": ('os.remove("/tmp/whatever")', r"field 'remove'"),
    "load_binary_chunk": ('local f = load("\\27Lua\\84\\0")', r"undefined global 'load'"),
    "string_dump": ("local b = string.dump(function() end)", r"field 'dump'"),
    "string_metatable_dump": ('local b = getmetatable("").__index.dump(print)',
                              r"field 'dump'"),
    "dofile": ('dofile("/etc/passwd")', r"undefined global 'dofile'"),
    "loadfile": ('local f = loadfile("/etc/passwd")', r"undefined global 'loadfile'"),
    "loadstring": ('local f = loadstring("return 1")', r"undefined global 'loadstring'"),
    "require_path": ('require("../../etc/passwd")', r"bad module name"),
    "require_os": ('local os2 = require("os")', r"require"),
    "debug_getinfo": ("local i = debug.getinfo(1)", r"undefined global 'debug'"),
    "package_loadlib": ('local f = package.loadlib("libc.so.6", "system")',
                        r"undefined global 'package'"),
    "package_loaded": ("local io2 = package.loaded.io", r"undefined global 'package'"),
    "collectgarbage": ('collectgarbage("stop")', r"undefined global 'collectgarbage'"),
    "coroutine": ("local co = coroutine.create(print)", r"undefined global 'coroutine'"),
    "setmetatable_g_nil": ("setmetatable(_G, nil); local x = io",
                           r"cannot change a protected metatable"),
    "getmetatable_g_patch": ("local mt = getmetatable(_G); mt.__index = function() end",
                             r"attempt to index a string value"),
    "rawget_g_io": ('local lib = rawget(_G, "io"); lib.open("/etc/passwd")',
                    r"attempt to index a nil value"),
    "undefined_global_typo": ("local s = ctx.contact_id .. cotnact_name",
                              r"probe_undefined_global_typo\.lua:\d+: undefined global "
                              r"'cotnact_name'"),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_an_escape_attempt_in_prompt_fails_clearly_and_the_server_serves_on(
        live, folder, fake, case):
    body, pattern = ESCAPES[case]
    name = "probe_" + case
    folder.write_script(name, probe_lua(name, body))
    srv = live()
    assert types_of(srv)[name]["loaded"] is True, types_of(srv)[name]

    r = analysis(srv, 1, name)
    msg = assert_script_error(r, name, pattern)
    assert "prompt" in msg
    assert calls(fake) == 0, "no model call after a failed prompt()"
    lines = script_errors(srv, name)
    assert lines and re.search(pattern, lines[-1]["error"]), lines
    assert "traceback" in lines[-1]

    assert srv.is_running()
    assert analysis(srv, 1, "beta").status == 200, "other types keep serving"
    assert analysis(srv, 1, name).status == 500, "and the probe fails the same way again"
    assert not os.path.exists("/tmp/rapport-sandbox-pwned")


def test_the_sandbox_exposes_only_the_allowed_globals(live, folder, fake):
    """A script lists what it can see: globals, os, string, and what
    getmetatable hands out."""
    folder.write_script("env_probe", r'''
return {
  description = "lists what a script can reach",
  prompt = function(ctx) return { { role = "user", content = "probe" } } end,
  post = function(reply, ctx)
    local function keys(t)
      local out = {}
      for k in pairs(t) do out[#out + 1] = tostring(k) end
      table.sort(out)
      return json.array(out)
    end
    return {
      globals = keys(_G),
      os = keys(os),
      string_has_dump = string.dump ~= nil,
      G_metatable = tostring(getmetatable(_G)),
      string_index_is_string = getmetatable("").__index == string,
      rawget_load = rawget(_G, "load") ~= nil,
      json = keys(json),
    }
  end,
}
''')
    srv = live()
    r = analysis(srv, 1, "env_probe")
    assert r.status == 200, r.body
    res = r.json()["result"]
    allowed = {
        "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select",
        "tonumber", "tostring", "type", "rawequal", "rawlen", "rawget", "rawset",
        "setmetatable", "getmetatable", "print", "require", "read_prompt",
        "string", "table", "math", "utf8", "os", "json", "cjson", "_G",
        "db", "llm",             # run(ctx)'s steps; raise anywhere else
    }
    forbidden = {"io", "debug", "package", "load", "loadfile", "dofile", "loadstring",
                 "collectgarbage", "coroutine", "module", "_ENV", "getfenv", "setfenv",
                 "newproxy", "unpack", "gcinfo"}
    assert set(res["globals"]) <= allowed, "unexpected globals: %s" % (
        sorted(set(res["globals"]) - allowed))
    assert not set(res["globals"]) & forbidden
    assert set(res["os"]) == {"clock", "date", "time"}
    assert res["string_has_dump"] is False
    assert res["G_metatable"] == "sandbox", "getmetatable(_G) must not hand out the metatable"
    assert res["rawget_load"] is False
    assert {"encode", "decode", "array", "null"} <= set(res["json"])


# name: (file text of the script, pattern its load error must match)
LOAD_TIME_ESCAPES = {
    "require_parent_path": ('local m = require("../../etc/passwd")\nreturn {}\n',
                            r"bad module name"),
    "require_absolute": ('local m = require("/etc/passwd")\nreturn {}\n',
                         r"bad module name"),
    "require_os": ('local m = require("os")\nreturn {}\n',
                   r"module 'os' not found in scripts/lib"),
    "require_io": ('local m = require("io")\nreturn {}\n',
                   r"module 'io' not found in scripts/lib"),
    "require_binary_module": ('local m = require("evil")\nreturn {}\n',
                              r"binary chunk"),
    "read_prompt_parent": ('local t = read_prompt("../scripts/beta.lua")\nreturn {}\n',
                           r"bad prompt name"),
    "read_prompt_absolute": ('local t = read_prompt("/etc/passwd")\nreturn {}\n',
                             r"bad prompt name"),
    "io_at_top_level": ('local f = io.open("/etc/passwd")\nreturn {}\n',
                        r"undefined global 'io'"),
    "os_exit_at_top_level": ("os.exit(3)\nreturn {}\n", r"field 'exit'"),
    "setmetatable_g_at_top_level": ("setmetatable(_G, nil)\nreturn {}\n",
                                    r"cannot change a protected metatable"),
}


@pytest.mark.parametrize("case", sorted(LOAD_TIME_ESCAPES))
def test_an_escape_attempt_at_load_time_fails_the_load_with_file_line(
        live, folder, fake, case):
    text, pattern = LOAD_TIME_ESCAPES[case]
    name = "load_" + case
    folder.write_script(name, text)
    # A "module" that is a precompiled chunk: only text may be loaded.
    folder.write_lib("evil", b"\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08xV\x00\x00")
    srv = live()
    t = types_of(srv)[name]
    assert t["loaded"] is False, t
    assert re.search(pattern, t["error"]), "error %r does not match %r" % (t["error"], pattern)
    assert re.search(r"%s\.lua:\d+:" % name, t["error"]), \
        "the load error does not give the script's file:line: %r" % t["error"]
    assert analysis(srv, 1, name).status == 404
    assert analysis(srv, 1, "beta").status == 200
    assert srv.is_running()


def test_a_script_file_that_is_a_binary_chunk_is_refused_with_its_file_name(
        live, folder, fake):
    folder.write_script("precompiled", b"\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08xV\x00")
    srv = live()
    t = types_of(srv)["precompiled"]
    assert t["loaded"] is False
    assert "binary chunk" in t["error"], t
    assert "precompiled.lua" in t["error"], "the error does not name the file: %r" % t["error"]
    assert analysis(srv, 1, "beta").status == 200


def test_read_prompt_and_require_are_load_time_only(live, folder, fake):
    folder.write_script("late_prompt", probe_lua("late_prompt",
                                                 'local t = read_prompt("beta.system.md")'))
    folder.write_script("late_require", probe_lua("late_require", 'local g = require("greet")'))
    srv = live()
    assert_script_error(analysis(srv, 1, "late_prompt"), "late_prompt",
                        r"read_prompt is only available while the script loads")
    assert_script_error(analysis(srv, 1, "late_require"), "late_require",
                        r"require is only available while the script loads")


def test_globals_set_during_a_request_do_not_leak_into_the_next_request(live, folder, fake):
    """One contact's data left in a global by one request must not reach
    another contact's request (redis#1725): writing a global at run time is
    either refused or does not outlive the request."""
    folder.write_script("leaky", r'''
return {
  description = "remembers the previous contact in a global",
  prompt = function(ctx) return { { role = "user", content = "hi" } } end,
  post = function(reply, ctx)
    local previous = rawget(_G, "PREVIOUS_CONTACT")
    PREVIOUS_CONTACT = "contact " .. ctx.contact_id
    return { previous = tostring(previous) }
  end,
}
''')
    srv = live()
    r1 = analysis(srv, 1, "leaky")
    r2 = analysis(srv, 2, "leaky")
    if r1.status == 500:
        assert_script_error(r1, "leaky", r"global")
    else:
        assert r1.status == 200, r1.body
        assert r2.status == 200, r2.body
        assert r2.json()["result"]["previous"] == "nil", \
            "contact 1's data reached contact 2's request: %r" % r2.json()["result"]


def test_the_api_key_is_never_visible_to_scripts_responses_or_logs(live, folder, fake):
    """OPENAI_API_KEY is set (the fake accepts any key). A script walks
    everything it can reach looking for it; every response body and every
    log line is searched for it."""
    folder.write_script("snoop", r'''
local SECRET_TAIL = "SECRET123"
local function walk(v, seen, found, depth)
  if depth > 12 then return end
  local t = type(v)
  if t == "string" then
    if v:find(SECRET_TAIL, 1, true) then found[#found + 1] = v end
    return
  end
  if t ~= "table" or seen[v] then return end
  seen[v] = true
  for k, x in pairs(v) do
    walk(k, seen, found, depth + 1)
    walk(x, seen, found, depth + 1)
  end
  local mt = getmetatable(v)
  if mt ~= nil then walk(mt, seen, found, depth + 1) end
end
local function search(ctx)
  local found = {}
  walk(_G, {}, found, 0)
  walk(getmetatable(""), {}, found, 0)
  walk(ctx, {}, found, 0)
  for _, name in ipairs({ "getenv", "environ" }) do
    local ok, v = pcall(function() return os[name]("OPENAI_API_KEY") end)
    if ok and v then found[#found + 1] = tostring(v) end
  end
  return found
end
return {
  description = "looks for the API key everywhere a script can look",
  prompt = function(ctx)
    local found = search(ctx)
    print("snoop prompt found " .. #found)
    return { { role = "user", content = "found " .. #found .. ": " .. table.concat(found, ",") } }
  end,
  post = function(reply, ctx)
    local found = search(ctx)
    walk(reply, {}, found, 0)
    return { found = json.array(found), text = reply.text }
  end,
}
''')
    srv = live(OPENAI_API_KEY=SECRET)
    bodies = []

    def keep(r):
        bodies.append(r.body)
        return r

    r = keep(analysis(srv, 1, "snoop"))
    assert r.status == 200, r.body
    assert r.json()["result"]["found"] == [], "a script found the key: %r" % r.json()["result"]
    assert fake.stats()["last_authorization_present"], "precondition: the key is sent upstream"
    for path in ("/v1/analysis-types", "/healthz", "/readyz", "/metrics",
                 "/v1/contacts/1/analyses/alpha", "/v1/contacts/1/analyses/nope",
                 "/v1/contacts/x/analyses/alpha", "/v2/nothing"):
        keep(srv.get(path))
    resp, _ = srv.sse("/v1/contacts/2/analyses/beta")
    keep(resp)
    # Upstream errors whose messages carry the key, as a real provider's may.
    fake.fail({"status": 401, "message": "Incorrect API key provided: %s" % SECRET,
               "count": 5})
    r = keep(analysis(srv, 3, "beta"))
    assert r.status in (401, 502), r.body
    fake.fail({"status": 500, "message": "server error for key %s" % SECRET, "count": 10})
    keep(analysis(srv, 4, "beta"))
    fake.reset()
    # A script error, and a reload.
    folder.write_script("snoop_err", probe_lua("snoop_err", "error(os.getenv)"))
    poll(lambda: "snoop_err" in types_of(srv))
    keep(analysis(srv, 1, "snoop_err"))
    srv.signal(signal.SIGHUP)
    time.sleep(0.3)

    for b in bodies:
        assert b"SECRET123" not in b, b[:500]
    leaked = [l for l in srv.stderr_text().splitlines() if "SECRET123" in l]
    assert not leaked, "the API key appears in the log:\n" + "\n".join(leaked[:5])
    out = srv.stdout_path.read_text("utf-8", "replace") if srv.stdout_path.exists() else ""
    assert "SECRET123" not in out
    assert srv.wait_for_log(lambda l: l.get("msg") == "script print"
                            and l.get("script") == "snoop")


# ---- the sandbox: run(ctx), db.query and llm.chat ---------------------------------

RUN_SCRIPT = r"""
return {
  description = "run probe @NAME@",
  run = function(ctx)
    @BODY@
  end,
}
"""


def run_lua(name, body):
    return RUN_SCRIPT.replace("@NAME@", name).replace("@BODY@", body)


def test_db_query_in_run_cannot_change_the_crm(live, folder, fake, pg):
    """run(ctx) may send its own SQL; the CRM's data must stay read-only to
    scripts (a script is an insight, not a migration)."""
    pg.sql("INSERT INTO contacts (id, first_name, last_name, notes) "
           "VALUES (900101, 'Read', 'Only', 'original') "
           "ON CONFLICT (id) DO UPDATE SET notes = 'original'; "
           "INSERT INTO activities (contact_id, kind, subject) "
           "SELECT 900101, 'note', 'keep me' WHERE NOT EXISTS "
           "(SELECT 1 FROM activities WHERE contact_id = 900101)")
    folder.write_script("writer", run_lua("writer", r"""
    local d, derr = db.query("DELETE FROM activities WHERE contact_id = $1 RETURNING id",
                             { ctx.contact_id })
    local u, uerr = db.query("UPDATE contacts SET notes = 'changed by a script' WHERE id = $1 RETURNING id",
                             { ctx.contact_id })
    return { deleted = d and #d or 0, delete_error = derr or "none",
             updated = u and #u or 0, update_error = uerr or "none" }
"""))
    srv = live()
    r = analysis(srv, 900101, "writer")
    notes = pg.scalar("SELECT notes FROM contacts WHERE id = 900101")
    kept = int(pg.scalar("SELECT count(*) FROM activities WHERE contact_id = 900101"))
    assert notes == "original" and kept >= 1, \
        "a script changed the CRM (notes now %r, %d activities left): %s" % (notes, kept, r.body)
    if r.status == 200:
        res = r.json()["result"]
        assert res["deleted"] == 0 and res["updated"] == 0
        assert res["delete_error"] != "none" and res["update_error"] != "none", res
    else:
        assert r.json()["error"]["code"] == "script_error", r.body


def test_db_query_in_run_cannot_run_a_program_on_the_database_server(live, folder, fake):
    """COPY … TO PROGRAM is os.execute by another door."""
    marker = "/tmp/rapport-pg-pwned-%d-%d" % (os.getpid(), int(time.time() * 1000))
    folder.write_script("copier", run_lua("copier", r"""
    local r, err = db.query("COPY (SELECT 1) TO PROGRAM 'touch @MARKER@'")
    return { ran = r ~= nil, err = err or "none" }
""".replace("@MARKER@", marker)))
    srv = live()
    try:
        r = analysis(srv, 1, "copier")
        assert not os.path.exists(marker), \
            "a script ran a program through the database: %s exists (%s)" % (marker, r.body)
        assert r.status in (200, 500), r.body
        if r.status == 200:
            assert r.json()["result"]["ran"] is False, r.body
    finally:
        if os.path.exists(marker):
            os.unlink(marker)


@pytest.mark.parametrize("step", ["db_query", "llm_chat"])
def test_a_run_that_loops_over_its_steps_forever_is_stopped(live, folder, fake, step):
    """Each step (a query, a model call) gets a fresh instruction budget, so
    the budget alone never ends `while true do db.query(...) end`; a run
    needs a bound on its steps or its time, or it hammers the database (or
    pays the model provider) for ever."""
    body = {
        "db_query": 'while true do db.query("SELECT 1 AS x") end',
        "llm_chat": 'while true do llm.chat({ { role = "user", content = "again" } }) end',
    }[step]
    folder.write_script("forever", run_lua("forever", body))
    srv = live()
    t0 = time.monotonic()
    try:
        r = analysis(srv, 1, "forever", timeout=30)
    except OSError:
        r = None
    took = time.monotonic() - t0
    steps = calls(fake) if step == "llm_chat" else None
    assert srv.get("/healthz").status == 200 and analysis(srv, 1, "beta").status == 200
    assert r is not None, ("run(ctx) looping over %s was not stopped within %.0f s%s"
                           % (step, took, "" if steps is None else
                              " (%d model calls made)" % steps))
    assert r.status == 500 and r.json()["error"]["code"] == "script_error", r.body


# ---- limits: the instruction budget and the memory cap ----------------------------

def spin_script(name, body, where="prompt"):
    if where == "prompt":
        return probe_lua(name, body)
    return body + "\nreturn { description = 'x', prompt = function() return {} end }\n"


BUDGET_BOMBS = {
    "while_true": "while true do end",
    "pcall_cannot_swallow_the_budget": "while true do pcall(function() while true do end end) end",
    "xpcall_with_a_spinning_handler": (
        "while true do xpcall(function() while true do end end, "
        "function() while true do end end) end"),
    "recursion_through_pcall": (
        "local function f() pcall(f); pcall(f) end while true do f() end"),
    "error_with_spinning_tostring": (
        "error(setmetatable({}, { __tostring = function() while true do end end }))"),
    "string_gsub_callback": (
        'while true do string.rep("x", 1000):gsub(".", function(c) return c end) end'),
    "gc_finalizer": (
        "setmetatable({}, { __gc = function() while true do end end }) "
        "local t for i = 1, 2000000 do t = { i } end"),
    "table_sort_comparator": (
        "local t = {} for i = 1, 100 do t[i] = i end "
        "while true do table.sort(t, function(a, b) return a > b end) end"),
}


# Cases the host stops before they can run away, with their own message.
STOPPED = {
    "gc_finalizer": r"__gc metamethods are not allowed",
    "error_with_spinning_tostring": r"instruction budget|time limit|error object is not a string",
}


@pytest.mark.parametrize("case", sorted(BUDGET_BOMBS))
def test_a_runaway_prompt_is_stopped_by_the_instruction_budget(live, folder, fake, case):
    name = "spin_" + case
    folder.write_script(name, spin_script(name, BUDGET_BOMBS[case]))
    srv = live()
    t0 = time.monotonic()
    r = analysis_or_stuck(srv, 1, name)
    took = time.monotonic() - t0
    print("\n%s stopped after %.0f ms: %s" % (case, took * 1000, r.body[:300]))
    assert_script_error(r, name, STOPPED.get(case, r"instruction budget|time limit"))
    assert took < 5.0, "the budget took %.1f s to stop %s" % (took, case)
    assert calls(fake) == 0
    assert analysis(srv, 1, "beta").status == 200
    r = analysis(srv, 2, name, timeout=60)
    assert_script_error(r, name, STOPPED.get(case, r"instruction budget|time limit"))  # still usable


def test_other_types_keep_answering_during_and_after_a_runaway_script(live, folder, fake):
    folder.write_script("spin", probe_lua("spin", "while true do end"))
    srv = live()
    assert analysis(srv, 1, "beta").status == 200      # warm: HITs below are cheap
    results, spin_result = [], {}

    def spin():
        spin_result["r"] = analysis(srv, 1, "spin", timeout=60)
    th = threading.Thread(target=spin)
    th.start()
    contact = 2
    while th.is_alive() or len(results) < 3:
        results.append(analysis(srv, contact, "beta", timeout=30))
        contact += 1
    th.join()
    assert_script_error(spin_result["r"], "spin", r"instruction budget")
    assert all(r.status == 200 for r in results), [r.status for r in results]
    for _ in range(3):                                   # spin again, then serve
        assert analysis(srv, 1, "spin").status == 500
        assert analysis(srv, contact, "beta").status == 200
        contact += 1


def test_a_heavy_but_finite_prompt_is_not_stopped(live, folder, fake):
    folder.write_script("busy", probe_lua("busy",
        "local s = 0 for i = 1, 1000000 do s = s + i % 7 end assert(s > 0)"))
    srv = live()
    r = analysis(srv, 1, "busy")
    assert r.status == 200, r.body


def test_an_infinite_loop_at_the_top_level_fails_the_load_and_others_serve(
        live, folder, fake):
    folder.write_script("spin_load", spin_script("spin_load", "while true do end", "top"))
    t0 = time.monotonic()
    srv = live()
    print("\nstart with a spinning script took %.0f ms" % ((time.monotonic() - t0) * 1000))
    t = types_of(srv)["spin_load"]
    assert t["loaded"] is False
    assert "instruction budget" in t["error"] and "spin_load.lua" in t["error"], t
    assert analysis(srv, 1, "beta").status == 200


def test_an_infinite_loop_added_while_serving_keeps_the_previous_version(live, folder, fake):
    srv = live()
    v1 = types_of(srv)["beta"]["version"]
    folder.write_script("beta", "while true do end\n" + beta_lua("never"))
    t, _ = poll(lambda: types_of(srv)["beta"]["error"] and types_of(srv)["beta"], 10)
    assert t and "instruction budget" in t["error"], t
    assert t["version"] == v1
    r = analysis(srv, 1, "beta")
    assert r.status == 200 and r.json()["result"]["marker"] == "beta-v1", r.body


MEMORY_BOMBS = {
    "string_doubling": 'local s = "x" while true do s = s .. s end',
    "table_of_megabyte_strings": (
        'local t = {} while true do t[#t + 1] = string.rep("x", 1 << 20) .. #t end'),
    "string_rep_huge": 'local s = string.rep("x", 1 << 30)',
    "table_concat_huge": (
        'local t = {} for i = 1, 64 do t[i] = string.rep("y", 1 << 22) end '
        'local s = table.concat(t) local u = s .. s'),
    "global_table_kept_between_calls": (
        'local h = rawget(_G, "HOARD") or {} HOARD = h '
        'while true do h[#h + 1] = string.rep("z", 1 << 20) .. #h end'),
}


@pytest.mark.parametrize("case", sorted(MEMORY_BOMBS))
def test_an_allocation_bomb_fails_naming_memory_and_the_server_serves_on(
        live, folder, fake, case):
    name = "bomb_" + case
    # The bomb goes off for contact 1 only: other contacts show that the
    # same state is still usable afterwards.
    body = "if ctx.contact_id == 1 then " + MEMORY_BOMBS[case] + " end"
    folder.write_script(name, probe_lua(name, body))
    srv = live()
    t0 = time.monotonic()
    r = analysis(srv, 1, name, timeout=60)
    took = time.monotonic() - t0
    print("\n%s failed after %.0f ms: %s" % (case, took * 1000, r.body[:300]))
    # Keeping the hoard in a global is refused outright at request time.
    assert_script_error(r, name, r"(?i)memory|cannot set global")
    assert took < 10.0
    assert srv.is_running()
    assert analysis(srv, 1, "beta").status == 200
    r = analysis(srv, 2, name)
    assert r.status == 200, "the same type does not recover after the bomb: %r" % r


def test_a_memory_bomb_at_the_top_level_fails_the_load_and_others_serve(live, folder, fake):
    folder.write_script("bomb_load", 'local s = "x" while true do s = s .. s end\nreturn {}\n')
    srv = live()
    t = types_of(srv)["bomb_load"]
    assert t["loaded"] is False
    assert re.search(r"(?i)memory", t["error"]) and "bomb_load" in t["error"], t
    assert analysis(srv, 1, "beta").status == 200


def test_a_backtracking_pattern_in_string_find_is_stopped_by_the_budget(live, folder, fake):
    """string.find/match/gsub run in C: the instruction count hook never
    fires inside them, so a pattern that backtracks for ages must be bounded
    some other way (the budget must cover C library work too)."""
    folder.write_script("regex_bomb", probe_lua("regex_bomb",
        'local s = string.rep("a", 20000) '
        'local i = s:find(".-.-.-.-.-.-.-.-.-.-b")'))
    srv = live()
    t0 = time.monotonic()
    r = analysis_or_stuck(srv, 1, "regex_bomb")
    took = time.monotonic() - t0
    assert_script_error(r, "regex_bomb", r"budget|time limit|pattern too costly")
    assert took < 5.0
    assert analysis(srv, 1, "beta").status == 200
