"""run(ctx): a script that drives its own steps — db.query() and llm.chat()
yield to the event loop, so other requests go on meanwhile, and the steps'
timings and tokens add up in the request's accounting."""

import threading
import time

import pytest

from test_analysis_api import make_scripts

BRIEF = r'''
return {
  description = "drafts, then refines",
  queries = { "contact" },
  sql = { deals_of = [[SELECT id, amount FROM deals WHERE contact_id = $1 ORDER BY id]] },
  run = function(ctx)
    local deals = assert(db.query("deals_of"))
    local n = assert(db.query("SELECT count(*)::int AS n FROM activities WHERE contact_id = $1",
                              { ctx.contact_id }))
    local draft = assert(llm.chat({ { role = "user", content = "draft for " .. ctx.contact.first_name } }))
    local final = assert(llm.chat({
      { role = "user", content = "refine this: " .. draft.text } }, { max_tokens = 300 }))
    return {
      draft = draft.text, final = final.text, deals = #deals, activities = n[1].n,
      prompt_tokens = draft.usage.prompt_tokens + final.usage.prompt_tokens,
    }
  end,
}
'''

ERRORS = r'''
return {
  description = "errors come back as nil, err",
  run = function(ctx)
    local rows, err = db.query("SELECT * FROM no_such_table")
    return { rows = rows == nil, err = err }
  end,
}
'''

MISUSE = r'''
return {
  description = "db.query outside run",
  prompt = function(ctx)
    db.query("SELECT 1 AS x")
    return { { role = "user", content = "x" } }
  end,
}
'''

SPIN = r'''
return {
  description = "spins inside run",
  run = function(ctx)
    local n = assert(db.query("SELECT 1 AS x"))
    while true do end
  end,
}
'''


@pytest.fixture
def srv(make_server, tmp_path):
    env = make_scripts(tmp_path / "s", extra={"brief.lua": BRIEF, "errs.lua": ERRORS,
                                              "misuse.lua": MISUSE, "spin.lua": SPIN})
    return make_server(**env)


def get(srv, contact, type_):
    return srv.get("/v1/contacts/%d/analyses/%s" % (contact, type_), timeout=60)


def test_a_run_script_makes_two_model_calls_and_extra_queries(srv, fake, pg):
    r = get(srv, 3, "brief")
    assert r.status == 200, r.body
    d = r.json()
    res = d["result"]
    assert fake.stats()["chat_calls"] == 2
    assert res["activities"] == int(pg.scalar("SELECT count(*) FROM activities WHERE contact_id = 3"))
    assert res["deals"] == int(pg.scalar("SELECT count(*) FROM deals WHERE contact_id = 3"))
    assert res["final"] and res["draft"]
    assert d["usage"]["prompt_tokens"] == res["prompt_tokens"], "tokens of both calls add up"
    assert d["timings_ms"]["llm"] >= 2 * 20 * 0.9
    assert get(srv, 3, "brief").headers["X-Cache"] == "HIT"


def test_a_run_script_does_not_block_concurrent_requests(srv, fake):
    # Order of events, not speed: the run makes two 800 ms model calls in a
    # row. Once its first call is at the upstream (the run is suspended in
    # llm.chat), another request with one model call must be answered while
    # the run still has its whole second call (>= 800 ms) ahead of it. A loop
    # blocked by the run could not even read the other request until then.
    fake.config(latency_ms=800)
    out = {}

    def slow():
        out["brief"] = get(srv, 4, "brief")

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10
    while fake.stats()["chat_calls"] < 1:
        assert t.is_alive() and time.monotonic() < deadline, "the run's first model call never started"
        time.sleep(0.01)
    other = get(srv, 5, "echo")
    run_still_going = t.is_alive()
    t.join()
    assert other.status == 200 and out["brief"].status == 200, (other.body, out["brief"].body)
    assert run_still_going, "the other request waited for the run script"
    assert fake.stats()["chat_calls"] == 3
    assert fake.stats()["max_in_flight"] == 2, "the run's model call and the other one were in flight together"


def test_a_failed_query_in_run_returns_nil_and_the_error(srv, fake):
    r = get(srv, 1, "errs")
    assert r.status == 200, r.body
    res = r.json()["result"]
    assert res["rows"] is True and "no_such_table" in res["err"]


def test_db_query_outside_run_is_a_clear_script_error(srv, fake):
    r = get(srv, 1, "misuse")
    assert r.status == 500
    assert "only available inside run(ctx)" in r.json()["error"]["message"]


def test_a_runaway_run_is_stopped_by_the_budget_and_the_server_serves_on(srv, fake):
    r = get(srv, 1, "spin")
    assert r.status == 500
    assert "instruction budget" in r.json()["error"]["message"]
    assert get(srv, 1, "echo").status == 200


def test_model_calls_from_run_obey_the_in_flight_cap(make_server, fake, tmp_path):
    env = make_scripts(tmp_path / "s2", extra={"brief.lua": BRIEF})
    srv = make_server(RAPPORT_LLM_MAX_IN_FLIGHT=1, RAPPORT_LLM_MAX_IN_FLIGHT_CEILING=1,
                      RAPPORT_LLM_QUEUE=10, **env)
    fake.config(latency_ms=150)
    out = []
    ts = [threading.Thread(target=lambda c=c: out.append(get(srv, c, "brief"))) for c in (6, 7, 8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert [r.status for r in out] == [200, 200, 200], [r.body[:200] for r in out]
    assert fake.stats()["chat_calls"] == 6
    assert fake.stats()["max_in_flight"] == 1, "the cap held for the scripts' own calls"
