"""A saved script must render its own fixture's prompt before it replaces
the serving version (scripts/tests/<type>.lua, first case)."""

import time

TYPE = "relationship_health"


def versions(srv):
    return {t["name"]: t for t in srv.get("/v1/analysis-types").json()["types"]}


def test_an_edit_whose_prompt_fails_on_its_fixture_keeps_the_old_version(make_server, scripts_copy, fake):
    srv = make_server(**scripts_copy.env)
    before = versions(srv)[TYPE]["version"]
    path = scripts_copy.scripts / (TYPE + ".lua")
    src = path.read_text()
    # Compiles fine, but prompt() now reads a field of nil for every contact.
    broken = src.replace("prompt = function(ctx)", "prompt = function(ctx) local _ = ctx.no_such.field", 1)
    assert broken != src, "the script's prompt function was not found"
    path.write_text(broken)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not versions(srv)[TYPE]["error"]:
        time.sleep(0.05)
    t = versions(srv)[TYPE]
    assert t["error"] and "fails on its fixture" in t["error"], t
    assert "tests/%s.lua:" % TYPE in t["error"]
    assert t["version"] == before and t["loaded"], "the old version keeps serving"
    assert srv.get("/v1/contacts/1/analyses/%s" % TYPE).status == 200
    path.write_text(src)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and versions(srv)[TYPE]["error"]:
        time.sleep(0.05)
    assert versions(srv)[TYPE]["error"] is None
