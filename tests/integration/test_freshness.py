"""Freshness end to end (DESIGN.md "Cache and freshness"; issue 8, items 1-3):
stale-while-revalidate, input fingerprints and data changes, with the real
server, the real PostgreSQL (its triggers NOTIFY) and the fake's call counter.

Two small types of this file's own sit next to the shipped scripts:
  acts   reads the contact's activities only (its prompt lists their subjects)
  deals  reads the contact's deals only
so a change to one table shows which types it reaches. Contacts 710001.. are
made here, so no other test's rows or cache entries interfere.
"""

import json
import subprocess
import threading
import time

import pytest

from helpers.server import parse_sse, rapport_binary
from helpers.upstream import metric, wait_until

ACTS_LUA = r'''
return {
  description = "activity subjects only, for freshness tests",
  ttl = %(ttl)s,
  %(stale)s
  queries = { "contact", "recent_activities" },
  prompt = function(ctx)
    local subjects = {}
    for _, a in ipairs(ctx.recent_activities) do subjects[#subjects + 1] = a.subject end
    return { { role = "user", content = "acts of " .. ctx.contact.id .. ": " ..
                                         table.concat(subjects, "; ") } }
  end,
}
'''

DEALS_LUA = r'''
return {
  description = "deal names only, for freshness tests",
  ttl = %(ttl)s,
  %(stale)s
  queries = { "contact", "deals" },
  prompt = function(ctx)
    local names = {}
    for _, d in ipairs(ctx.deals) do names[#names + 1] = d.name .. "=" .. d.stage end
    return { { role = "user", content = "deals of " .. ctx.contact.id .. ": " ..
                                         table.concat(names, "; ") } }
  end,
}
'''

_next_contact = [710000]


def new_contact(pg):
    """A contact of this file's own with one activity and one deal."""
    _next_contact[0] += 1
    cid = _next_contact[0]
    pg.sql("INSERT INTO contacts (id, first_name, last_name) VALUES (%d, 'Fresh', 'Ness') "
           "ON CONFLICT (id) DO NOTHING" % cid)
    pg.sql("DELETE FROM activities WHERE contact_id = %d" % cid)
    pg.sql("DELETE FROM deals WHERE contact_id = %d" % cid)
    pg.sql("INSERT INTO activities (contact_id, kind, direction, subject, body, outcome) "
           "VALUES (%d, 'call', 'outbound', 'first call', 'hello', 'connected')" % cid)
    pg.sql("INSERT INTO deals (contact_id, name, stage, amount, probability) "
           "VALUES (%d, 'first deal', 'proposal', 1000, 40)" % cid)
    return cid


def add_activity(pg, cid, subject):
    pg.sql("INSERT INTO activities (contact_id, kind, direction, subject, body, outcome) "
           "VALUES (%d, 'email', 'inbound', '%s', 'body', 'replied')" % (cid, subject))


def move_deal(pg, cid, stage):
    pg.sql("UPDATE deals SET stage = '%s' WHERE contact_id = %d" % (stage, cid))


@pytest.fixture
def start(make_server, scripts_copy):
    """A server with acts and deals (ttl, stale_ttl given; stale_ttl None
    leaves the default) next to the shipped scripts."""
    def go(ttl=300, stale_ttl=None, **env):
        stale = "" if stale_ttl is None else "stale_ttl = %s," % stale_ttl
        for name, text in (("acts", ACTS_LUA), ("deals", DEALS_LUA)):
            (scripts_copy.scripts / ("%s.lua" % name)).write_text(
                text % {"ttl": ttl, "stale": stale})
        srv = make_server(**scripts_copy.env, **env)
        srv.wait_for_log(lambda l: l.get("msg") == "db listen up", timeout=5.0)
        return srv
    return go


def get(srv, cid, typ, headers=None):
    return srv.get("/v1/contacts/%d/analyses/%s" % (cid, typ), headers=headers)


def calls(fake):
    return fake.stats()["chat_calls"]


def cached(srv, cid, typ, timeout=10.0):
    """Polls until a GET is a fresh HIT; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        r = get(srv, cid, typ)
        assert r.status == 200, r.body
        if r.headers["X-Cache"] == "HIT":
            return r
        assert time.monotonic() < deadline, "not fresh: %s" % r.headers["X-Cache"]
        time.sleep(0.05)


def until_stale(srv, cid, typ, timeout=5.0):
    """Polls until a GET is no longer a HIT (the NOTIFY has arrived); that
    reply must be STALE."""
    deadline = time.monotonic() + timeout
    while True:
        r = get(srv, cid, typ)
        assert r.status == 200, r.body
        if r.headers["X-Cache"] != "HIT":
            assert r.headers["X-Cache"] == "STALE", r.headers.items()
            return r
        assert time.monotonic() < deadline, "still fresh after the change"
        time.sleep(0.02)


def notified(srv, cid):
    """Waits for the server to have heard the change's NOTIFY."""
    srv.wait_for_log(lambda l: l.get("msg") == "invalidated" and l.get("contact") == cid,
                     timeout=5.0)


def stream(srv, cid, typ):
    """The whole SSE answer of one streamed GET, as a list of events."""
    conn, resp = srv.open_stream("/v1/contacts/%d/analyses/%s" % (cid, typ))
    try:
        assert resp.status == 200
        return parse_sse(resp.read())
    finally:
        conn.close()


# ---- 1. stale-while-revalidate -------------------------------------------------

def test_past_its_ttl_an_entry_is_served_stale_at_once_with_one_refresh(start, fake, pg):
    cid = new_contact(pg)
    srv = start(ttl=1, stale_ttl=60)
    first = get(srv, cid, "acts")
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers["Cache-Control"] == "private, max-age=1, stale-while-revalidate=60"
    # The inputs change too (no NOTIFY reaches a stale entry any sooner),
    # so the refresh must call the model, slowly: every request below
    # lands while it runs.
    time.sleep(1.1)
    fake.config(latency_ms=2000)
    add_activity(pg, cid, "while stale")
    t0 = time.monotonic()
    replies = [None] * 20
    barrier = threading.Barrier(20)

    def one(i):
        barrier.wait()
        replies[i] = get(srv, cid, "acts")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    waited = time.monotonic() - t0
    for r in replies:
        assert r.status == 200 and r.headers["X-Cache"] == "STALE", r.headers.items()
        d = r.json()
        assert d["cache"]["status"] == "stale"
        assert d["generated_at"] == first.json()["generated_at"]
        assert r.headers["ETag"] == first.headers["ETag"]
        assert r.headers["Cache-Control"].startswith("private, max-age=0, stale-while-revalidate=")
        assert 0 < int(r.headers["Cache-Control"].rsplit("=", 1)[1]) <= 60
        assert int(r.headers["Age"]) >= 1
    # At once: all twenty answered well inside the one model call's 2 s.
    assert waited < 1.5, "stale replies waited for the refresh (%.2f s)" % waited
    wait_until(lambda: get(srv, cid, "acts").headers["X-Cache"] == "HIT", "the refresh")
    assert calls(fake) == 2, "one refresh, however many saw it stale"
    assert metric(srv, "rapport_analysis_refreshes_total") == 1
    assert metric(srv, "rapport_analysis_stale_served_total") >= 20
    fresh = get(srv, cid, "acts").json()
    assert fresh["generated_at"] > first.json()["generated_at"]
    assert "while stale" in fake.stats()["last_request"]["messages"][-1]["content"]


def test_a_failing_refresh_keeps_serving_stale_until_the_grace_ends_then_errors(start, fake, pg):
    cid = new_contact(pg)
    srv = start(ttl=300, stale_ttl=2, RAPPORT_LLM_RETRIES="0", RAPPORT_BREAKER_FAILURES="100")
    first = get(srv, cid, "acts")
    assert first.status == 200
    fake.fail({"status": 500, "message": "down for the test", "count": 100})
    add_activity(pg, cid, "during the outage")
    t_change = time.monotonic()
    seen = until_stale(srv, cid, "acts")
    assert seen.headers["ETag"] == first.headers["ETag"]
    wait_until(lambda: metric(srv, "rapport_analysis_refresh_failures_total") >= 1,
               "the refresh to fail")
    # Still the old result, still marked stale: never an error cached,
    # never the stale result re-armed as fresh.
    while time.monotonic() - t_change < 1.5:
        r = get(srv, cid, "acts")
        assert r.status == 200 and r.headers["X-Cache"] == "STALE", (r.status, r.body)
        assert r.headers["ETag"] == first.headers["ETag"]
        time.sleep(0.1)
    time.sleep(max(0, 2.2 - (time.monotonic() - t_change)))
    # Past the grace: the request waits as on a miss, and the miss fails.
    r = get(srv, cid, "acts")
    assert r.status == 502, (r.status, r.body)
    assert r.json()["error"]["code"] == "upstream_error"
    # The upstream is back: the next request regenerates.
    fake.reset()
    r = get(srv, cid, "acts")
    assert r.status == 200 and r.headers["X-Cache"] == "MISS"


def test_refresh_1_still_waits_for_a_new_result_even_when_nothing_changed(start, fake, pg):
    cid = new_contact(pg)
    srv = start()
    first = get(srv, cid, "acts")
    r = get(srv, cid, "acts", headers={"Cache-Control": "no-cache"})
    assert r.headers["X-Cache"] == "MISS" and calls(fake) == 2
    assert r.json()["generated_at"] > first.json()["generated_at"]


# ---- 2. input fingerprints ---------------------------------------------------------

def test_an_unchanged_contact_past_its_ttl_is_revalidated_with_no_upstream_call(start, fake, pg):
    cid = new_contact(pg)
    srv = start(ttl=1, stale_ttl=0)
    first = get(srv, cid, "acts")
    usage = first.json()["usage"]
    assert calls(fake) == 1
    time.sleep(1.1)
    # No grace: the request waits for the refresh, which finds the model
    # request unchanged and re-arms the entry.
    r = get(srv, cid, "acts")
    assert r.status == 200 and r.headers["X-Cache"] == "REVALIDATED", r.headers.items()
    d = r.json()
    assert d["cache"]["status"] == "revalidated"
    assert d["generated_at"] == first.json()["generated_at"]
    assert r.headers["ETag"] == first.headers["ETag"]
    assert calls(fake) == 1, "a revalidation must not call the model"
    assert get(srv, cid, "acts").headers["X-Cache"] == "HIT"
    assert metric(srv, "rapport_analysis_revalidated_total") == 1
    assert metric(srv, "rapport_analysis_saved_prompt_tokens_total") == usage["prompt_tokens"]
    assert metric(srv, "rapport_analysis_saved_completion_tokens_total") == \
        usage["completion_tokens"]
    assert "rapport_analysis_saved_cost_usd_total" in srv.get("/metrics").text


def test_with_a_grace_an_unchanged_entry_is_stale_once_then_fresh_again(start, fake, pg):
    cid = new_contact(pg)
    srv = start(ttl=1, stale_ttl=30)
    first = get(srv, cid, "acts")
    time.sleep(1.1)
    assert get(srv, cid, "acts").headers["X-Cache"] == "STALE"
    r = cached(srv, cid, "acts")
    assert r.headers["ETag"] == first.headers["ETag"] and calls(fake) == 1


# ---- 3. data changes --------------------------------------------------------------

def test_an_activity_insert_makes_the_entry_stale_at_once_and_the_next_result_reflects_it(
        start, fake, pg):
    cid = new_contact(pg)
    srv = start()
    first = get(srv, cid, "acts")
    cached(srv, cid, "acts")
    add_activity(pg, cid, "brand new subject")
    stale = until_stale(srv, cid, "acts")
    assert stale.headers["ETag"] == first.headers["ETag"]
    fresh = cached(srv, cid, "acts")
    assert fresh.headers["ETag"] != first.headers["ETag"]
    assert calls(fake) == 2
    assert "brand new subject" in fake.stats()["last_request"]["messages"][-1]["content"]


def test_a_deal_change_leaves_an_activity_only_type_without_a_model_call(start, fake, pg):
    cid = new_contact(pg)
    srv = start()
    acts, deals = get(srv, cid, "acts"), get(srv, cid, "deals")
    assert calls(fake) == 2
    move_deal(pg, cid, "negotiation")
    until_stale(srv, cid, "acts")
    until_stale(srv, cid, "deals")
    a, d = cached(srv, cid, "acts"), cached(srv, cid, "deals")
    assert a.headers["ETag"] == acts.headers["ETag"], "acts did not read deals"
    assert d.headers["ETag"] != deals.headers["ETag"]
    assert calls(fake) == 3, "only the deals type called the model"
    assert metric(srv, "rapport_analysis_revalidated_total") == 1


def test_a_streamed_view_of_a_changed_contact_shows_the_old_result_stale_then_the_new_one(
        start, fake, pg):
    cid = new_contact(pg)
    srv = start()
    first = get(srv, cid, "acts").json()
    cached(srv, cid, "acts")
    fake.config(latency_ms=300, chunk_delay_ms=20, chunks=4)
    add_activity(pg, cid, "streamed change")
    notified(srv, cid)
    events = stream(srv, cid, "acts")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "meta" and json.loads(events[0]["data"])["cache"] == "stale"
    assert kinds[1] == "result", kinds
    old = json.loads(events[1]["data"])
    assert old["cache"]["status"] == "stale" and old["generated_at"] == first["generated_at"]
    assert "delta" in kinds[2:], kinds
    assert kinds[-1] == "result"
    new = json.loads(events[-1]["data"])
    assert new["cache"]["status"] in ("miss", "coalesced")
    assert new["generated_at"] > old["generated_at"]


def test_a_streamed_view_of_an_unchanged_stale_entry_ends_with_the_revalidated_result(
        start, fake, pg):
    cid = new_contact(pg)
    srv = start()
    first = get(srv, cid, "acts")
    cached(srv, cid, "acts")
    move_deal(pg, cid, "closed_won")      # acts does not read deals
    notified(srv, cid)
    events = stream(srv, cid, "acts")
    assert [e["event"] for e in events] == ["meta", "result", "result"], events
    stale, again = json.loads(events[1]["data"]), json.loads(events[2]["data"])
    assert stale["cache"]["status"] == "stale"
    assert again["cache"]["status"] == "revalidated"
    assert again["generated_at"] == stale["generated_at"] == first.json()["generated_at"]
    assert calls(fake) == 1
    assert get(srv, cid, "acts").headers["X-Cache"] == "HIT"


def test_under_the_ttl_policy_a_change_drops_the_entry_and_the_next_view_waits(start, fake, pg):
    cid = new_contact(pg)
    srv = start(RAPPORT_FRESHNESS="ttl")
    get(srv, cid, "acts")
    cached(srv, cid, "acts")
    move_deal(pg, cid, "lost")            # acts does not even read deals
    deadline = time.monotonic() + 5
    while True:
        r = get(srv, cid, "acts")
        if r.headers["X-Cache"] != "HIT":
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert r.headers["X-Cache"] == "MISS", "no grace and no fingerprint under ttl"
    assert calls(fake) == 2


# ---- the script field -------------------------------------------------------------

def test_stale_ttl_is_listed_and_a_bad_one_is_a_load_error(start, fake, pg, scripts_copy):
    srv = start(ttl=120, stale_ttl=45)
    types = {t["name"]: t for t in srv.get("/v1/analysis-types").json()["types"]}
    assert types["acts"]["ttl"] == 120 and types["acts"]["stale_ttl"] == 45
    assert types["relationship_health"]["stale_ttl"] == types["relationship_health"]["ttl"], \
        "the default grace is the ttl"
    (scripts_copy.scripts / "acts.lua").write_text(
        ACTS_LUA % {"ttl": 120, "stale": "stale_ttl = -1,"})
    # the folder is watched: the edit reloads by itself
    wait_until(lambda: any(t["name"] == "acts" and t.get("error")
                           for t in srv.get("/v1/analysis-types").json()["types"]),
               "the reload to report the error")
    t = [t for t in srv.get("/v1/analysis-types").json()["types"] if t["name"] == "acts"][0]
    assert "'stale_ttl' must be a number of seconds from 0" in t["error"]
    assert t["loaded"] is True and t["stale_ttl"] == 45, "the old version keeps serving"


def test_bad_freshness_settings_are_start_up_errors():
    for env, text in (({"RAPPORT_FRESHNESS": "sometimes"}, "RAPPORT_FRESHNESS must be"),
                      ({"RAPPORT_TTL_SCALE": "0"}, "RAPPORT_TTL_SCALE must be"),
                      ({"RAPPORT_TTL_SCALE": "fast"}, "RAPPORT_TTL_SCALE must be")):
        r = subprocess.run([str(rapport_binary()), "serve"], env={"PATH": "/usr/bin:/bin", **env},
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
        assert r.returncode != 0 and text in r.stderr, (env, r.returncode, r.stderr)


def test_the_ttl_scale_shortens_every_lifetime(start, fake, pg):
    cid = new_contact(pg)
    srv = start(ttl=1000, stale_ttl=1000, RAPPORT_TTL_SCALE="0.001")
    r = get(srv, cid, "acts")
    assert r.json()["cache"]["ttl_ms"] == 1000
    assert r.headers["Cache-Control"] == "private, max-age=1, stale-while-revalidate=1"
    time.sleep(1.1)
    assert get(srv, cid, "acts").headers["X-Cache"] == "STALE"
