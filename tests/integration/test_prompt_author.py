"""A prompt author's typos are caught before a request: unknown script fields
fail the load with a suggestion, a {{placeholder}} the script's vars cannot
fill fails `rapport check` and the reload even for a type without fixtures,
and a runtime error names the innermost file:line in the HTTP reply."""

import json
import os
import shutil
import subprocess
import time

import pytest

from helpers.server import REPO, rapport_binary

TYPE = "smart_tips"


def types(srv):
    return {t["name"]: t for t in srv.get("/v1/analysis-types").json()["types"]}


def wait_for(cond, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    return cond()


def check(scripts, prompts, db_url, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
    env.update(RAPPORT_SCRIPTS=str(scripts), RAPPORT_PROMPTS=str(prompts), DATABASE_URL=db_url)
    return subprocess.run([str(rapport_binary()), "check", "--no-lint", *args], cwd=str(REPO),
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)


def without_fixtures(scripts_copy):
    shutil.rmtree(scripts_copy.scripts / "tests")
    return scripts_copy


# ---- unknown top-level fields ----------------------------------------------

def test_a_script_with_querys_fails_its_load_naming_the_field_and_the_suggestion(make_server, scripts_copy):
    path = scripts_copy.scripts / (TYPE + ".lua")
    src = path.read_text()
    typo = src.replace("\n  queries = {", "\n  querys = {", 1)
    assert typo != src
    path.write_text(typo)
    line = typo.splitlines().index(next(l for l in typo.splitlines() if l.startswith("  querys = {"))) + 1
    srv = make_server(**scripts_copy.env)
    t = types(srv)[TYPE]
    assert t["error"], t
    assert "%s.lua:%d: unknown field 'querys' (did you mean 'queries'?)" % (TYPE, line) in t["error"], t
    logged = [json.loads(l) for l in srv.stderr_text().splitlines() if l.startswith("{")]
    assert any(l["msg"] == "script failed to load" and "did you mean 'queries'?" in l["error"]
               for l in logged)


def test_an_edit_with_temprature_keeps_the_old_version_serving(make_server, scripts_copy, fake):
    srv = make_server(**scripts_copy.env)
    before = types(srv)[TYPE]["version"]
    path = scripts_copy.scripts / (TYPE + ".lua")
    src = path.read_text()
    path.write_text(src.replace("\n  temperature = ", "\n  temprature = ", 1))
    t = wait_for(lambda: types(srv)[TYPE]["error"] and types(srv)[TYPE])
    assert t and "unknown field 'temprature' (did you mean 'temperature'?)" in t["error"], t
    assert t["version"] == before and t["loaded"]
    assert srv.get("/v1/contacts/1/analyses/%s" % TYPE, timeout=30).status == 200


def test_every_unknown_field_is_named_in_line_order_and_stale_ttl_is_known(make_server, scripts_copy):
    path = scripts_copy.scripts / (TYPE + ".lua")
    src = path.read_text()
    src = src.replace("\n  queries = {", "\n  stale_ttl = 60,\n  modle = \"x\",\n  zzzz_field = 1,\n  queries = {", 1)
    path.write_text(src)
    srv = make_server(**scripts_copy.env)
    err = types(srv)[TYPE]["error"]
    assert "unknown field 'stale_ttl'" not in err, err
    assert err.index("unknown field 'modle' (did you mean 'model'?)") < err.index("'zzzz_field'"), err
    assert "a script may return description, prompt" in err, "no close name: the list instead"


# ---- {{placeholders}} against the queries' columns ---------------------------

def test_a_prompt_with_contact_titel_fails_rapport_check_without_fixtures(pg, scripts_copy):
    without_fixtures(scripts_copy)
    prompt = scripts_copy.prompts / (TYPE + ".user.md")
    prompt.write_text(prompt.read_text().replace("{{contact.title}}", "{{contact.titel}}"))
    r = check(scripts_copy.scripts, scripts_copy.prompts, pg.url)
    assert r.returncode == 1, r.stdout
    assert "unknown placeholder {{contact.titel}}" in r.stdout, r.stdout
    assert "sample context built from its queries' columns" in r.stdout


def test_rapport_check_renders_every_shipped_prompt_on_sample_rows_and_prints_no_log(pg):
    r = check(REPO / "scripts", REPO / "prompts", pg.url)
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("prompt renders on a sample context") == 3, r.stdout
    for line in (r.stdout + r.stderr).splitlines():
        assert not line.startswith("{"), "a JSON log line: " + line
    assert "traceback" not in r.stdout + r.stderr


def test_rapport_check_without_a_database_says_what_it_skipped(scripts_copy):
    r = check(scripts_copy.scripts, scripts_copy.prompts, "host=127.0.0.1 port=1 dbname=x")
    assert r.returncode == 0, r.stdout
    assert "not checked against their queries' columns" in r.stdout and "make run" in r.stdout


def test_a_placeholder_typo_saved_while_serving_is_refused_without_fixtures(make_server, scripts_copy, fake):
    without_fixtures(scripts_copy)
    srv = make_server(**scripts_copy.env)
    before = types(srv)[TYPE]
    assert before["error"] is None, before
    prompt = scripts_copy.prompts / (TYPE + ".user.md")
    prompt.write_text(prompt.read_text().replace("{{contact.title}}", "{{contact.titel}}"))
    t = wait_for(lambda: types(srv)[TYPE]["error"] and types(srv)[TYPE])
    assert t and "unknown placeholder {{contact.titel}}" in t["error"], t
    assert t["version"] == before["version"], "the old version keeps serving"
    r = srv.get("/v1/contacts/3/analyses/%s" % TYPE, timeout=30)
    assert r.status == 200, r.body


def test_a_type_without_fixtures_whose_prompt_cannot_render_does_not_start_serving(make_server, scripts_copy):
    without_fixtures(scripts_copy)
    prompt = scripts_copy.prompts / (TYPE + ".user.md")
    prompt.write_text(prompt.read_text().replace("{{contact.title}}", "{{contact.titel}}"))
    srv = make_server(**scripts_copy.env)
    t = types(srv)[TYPE]
    assert not t["loaded"] and "{{contact.titel}}" in t["error"], t
    assert srv.get("/v1/contacts/1/analyses/%s" % TYPE).status in (404, 503)


# ---- runtime errors name the innermost file:line ------------------------------

NO_POSITION = r'''
local clean = require("clean")
return {
  description = "a helper raises with error(msg, 0)",
  prompt = function(ctx)
    return { { role = "user", content = "hello" } }
  end,
  post = function(reply)
    return clean.reply_object(reply)
  end,
}
'''


def test_a_runtime_error_without_a_position_gets_the_innermost_file_line_in_the_reply(make_server, scripts_copy, fake):
    (scripts_copy.scripts / "nopos.lua").write_text(NO_POSITION)
    fake.config(content="not json at all")
    srv = make_server(**scripts_copy.env)
    r = srv.get("/v1/contacts/1/analyses/nopos", timeout=30)
    assert r.status == 500, r.body
    msg = r.json()["error"]["message"]
    assert "scripts/lib/clean.lua:" in msg and "model reply is not a JSON object" in msg, msg


NEW_QUERY = r'''
local prompt = require("prompt")
return {
  description = "a new type with a query of its own, saved while serving",
  queries = { "mine" },
  sql = { mine = { sql = [[SELECT first_name, company AS firm FROM contacts WHERE id = $1]], one = true } },
  prompt = function(ctx)
    local c = ctx.mine or {}
    return prompt.messages("You advise.", "Advise {{who.first_name}} at {{who.company}}.",
                           { who = { first_name = c.first_name, firm = c.firm } })
  end,
}
'''


def test_a_new_query_saved_while_serving_is_described_in_the_background_then_checked(make_server, scripts_copy, fake):
    srv = make_server(**scripts_copy.env)
    (scripts_copy.scripts / "fresh.lua").write_text(NEW_QUERY)
    # The SQL is new: the reload does not wait for the database; the pool
    # describes it, and the reload that follows finds {{who.company}}.
    t = wait_for(lambda: "fresh" in types(srv) and types(srv)["fresh"]["error"] and types(srv)["fresh"], 15)
    assert t and "unknown placeholder {{who.company}}" in t["error"], types(srv).get("fresh")
    assert srv.get("/healthz").status == 200
