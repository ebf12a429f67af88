"""Every Lua bound holds, over real HTTP: a pattern that backtracks for hours,
a JSON document whose tree is many times the memory cap, module-level state
that would carry one contact's data to the next, and fixture files that
would hang a reload.

The real binary runs on a scripts folder made for each test, against the
throwaway PostgreSQL cluster and the fake upstream. No timings are asserted:
"does not hang" means the server answers before a generous client timeout.
"""

import re
import threading
import time
from pathlib import Path

import pytest

BETA_LUA = r'''
return {
  description = "beta: answers for any contact",
  prompt = function(ctx)
    return { { role = "user", content = "contact " .. ctx.contact_id } }
  end,
  post = function(reply, ctx) return { contact_id = ctx.contact_id } end,
}
'''

# The classic exponential case: 40 optional a's then 40 a's, against 40 a's.
# No *, + or - in it, so the old pattern-shape guard let it through.
BOMB_LUA = r'''
return {
  description = "a pattern that backtracks for hours",
  prompt = function(ctx)
    local s = string.rep("a", 40)
    local found = s:find(string.rep("a?", 40) .. string.rep("a", 40))
    return { { role = "user", content = tostring(found) } }
  end,
}
'''

BIG_JSON_LUA = r'''
return {
  description = "decodes 10 MB of JSON",
  prompt = function(ctx)
    local text = "[" .. string.rep("1,", 5000000) .. "1]"
    local list = json.decode(text)
    return { { role = "user", content = "items " .. #list } }
  end,
}
'''

REMEMBERS_LUA = r'''
local seen = {}          -- module-level: written by every request
return {
  description = "keeps the contacts it saw in a module-level table",
  prompt = function(ctx)
    seen[#seen + 1] = ctx.contact_id
    return { { role = "user", content = "hello" } }
  end,
  post = function(reply, ctx)
    local copy = {}
    for i, id in ipairs(seen) do copy[i] = id end
    return { seen = json.array(copy) }
  end,
}
'''


class Folder:
    def __init__(self, root):
        self.root = Path(root)
        self.scripts = self.root / "scripts"
        self.prompts = self.root / "prompts"
        (self.scripts / "lib").mkdir(parents=True)
        (self.scripts / "tests").mkdir()
        self.prompts.mkdir()
        self.write_script("beta", BETA_LUA)

    def write_script(self, name, text):
        (self.scripts / ("%s.lua" % name)).write_text(text, encoding="utf-8")

    def write_fixture(self, name, text):
        (self.scripts / "tests" / ("%s.lua" % name)).write_text(text, encoding="utf-8")

    @property
    def env(self):
        return {"RAPPORT_SCRIPTS": str(self.scripts), "RAPPORT_PROMPTS": str(self.prompts)}


@pytest.fixture
def folder(tmp_path):
    return Folder(tmp_path / "live")


def analysis(srv, contact, type_, timeout=60.0):
    return srv.get("/v1/contacts/%s/analyses/%s" % (contact, type_), timeout=timeout)


def types_of(srv, timeout=30.0):
    r = srv.get("/v1/analysis-types", timeout=timeout)
    assert r.status == 200, r.body
    return {t["name"]: t for t in r.json()["types"]}


def assert_script_error(r, name, pattern):
    assert r.status == 500, r.body
    err = r.json()["error"]
    assert err["code"] == "script_error", err
    assert name in err["message"], err
    assert re.search(pattern, err["message"]), \
        "message %r does not match %r" % (err["message"], pattern)
    return err["message"]


def test_a_pattern_bomb_in_prompt_ends_with_a_script_error_while_other_requests_are_served(
        make_server, folder, fake):
    folder.write_script("bomb", BOMB_LUA)
    srv = make_server(**folder.env)
    answer = {}

    def bomb():
        try:
            answer["r"] = analysis(srv, 1, "bomb")
        except OSError as e:            # no answer: the loop is stuck in C
            answer["e"] = e

    t = threading.Thread(target=bomb)
    t.start()
    others = []
    while t.is_alive() and len(others) < 50:
        try:
            others.append(analysis(srv, 2, "beta", timeout=30.0).status)
        except OSError as e:
            others.append(repr(e))
        time.sleep(0.01)
    t.join(90)
    assert "r" in answer, "the pattern request got no answer: %r" % answer.get("e")
    msg = assert_script_error(answer["r"], "bomb", r"pattern too expensive: \d+ steps")
    assert "bomb.lua:" in msg, "the message does not say where: %r" % msg
    assert others and all(s == 200 for s in others), "requests meanwhile: %r" % others
    assert analysis(srv, 3, "beta").status == 200


def test_a_10_mb_json_decode_fails_at_the_memory_cap_and_the_server_serves_on(
        make_server, folder, fake):
    folder.write_script("big_json", BIG_JSON_LUA)
    srv = make_server(**folder.env)
    r = analysis(srv, 1, "big_json")
    assert_script_error(r, "big_json", r"json\.decode: script exceeded its memory cap")
    assert srv.is_running()
    assert analysis(srv, 1, "beta").status == 200
    # the state recovers: the same request fails the same way, not worse
    assert_script_error(analysis(srv, 1, "big_json"), "big_json", r"memory cap")


def test_module_level_state_written_by_one_contact_is_not_seen_by_the_next(
        make_server, folder, fake):
    folder.write_script("remembers", REMEMBERS_LUA)
    srv = make_server(**folder.env)
    first = analysis(srv, 1, "remembers")
    assert first.status == 200, first.body
    assert first.json()["result"]["seen"] == [1]
    second = analysis(srv, 2, "remembers")
    assert second.status == 200, second.body
    assert second.json()["result"]["seen"] == [2], \
        "contact 2's request saw another contact's data: %r" % second.json()["result"]


FIXTURE_TRAPS = {
    "looping_gc": ('local _trap = setmetatable({}, { __gc = function() while true do end end })\n'
                   'return { case{ name = "x", ctx = { contact_id = 1 } } }\n',
                   r"__gc metamethods are not allowed"),
    "pattern_bomb": ('local _trap = (("a"):rep(40)):find(("a?"):rep(40) .. ("a"):rep(40))\n'
                     'return { case{ name = "x", ctx = { contact_id = 1 } } }\n',
                     r"pattern too expensive"),
}


@pytest.mark.parametrize("trap", sorted(FIXTURE_TRAPS))
def test_reload_validation_of_a_fixture_that_would_hang_refuses_the_version_and_serves_on(
        make_server, folder, fake, trap):
    text, why = FIXTURE_TRAPS[trap]
    folder.write_script("gamma", BETA_LUA.replace("beta:", "gamma v1:"))
    srv = make_server(**folder.env)
    v1 = types_of(srv)["gamma"]["version"]
    folder.write_fixture("gamma", text)
    folder.write_script("gamma", BETA_LUA.replace("beta:", "gamma v2:"))
    deadline = time.monotonic() + 30
    t = types_of(srv)["gamma"]
    while time.monotonic() < deadline and not t["error"]:
        time.sleep(0.1)
        t = types_of(srv)["gamma"]
    assert t["error"] and re.search(why, t["error"]), t
    assert "gamma.lua" in t["error"], t
    assert t["version"] == v1 and t["loaded"], "the previous version keeps serving"
    assert analysis(srv, 1, "gamma").status == 200
    assert analysis(srv, 1, "beta").status == 200
