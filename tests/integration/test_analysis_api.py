"""GET /v1/contacts/{id}/analyses/{type} end to end: the real binary over
HTTP, a real PostgreSQL cluster, the fake upstream as a separate process.

Each test names the behaviour it pins down (issue 2, "How we will know").
"""

import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

TYPE = "relationship_health"


def analysis(srv, contact, type_=TYPE, headers=None, query=""):
    return srv.get("/v1/contacts/%s/analyses/%s%s" % (contact, type_, query), headers=headers)


def calls(fake):
    return fake.stats()["chat_calls"]


# ---- a small scripts folder for behaviours the real scripts don't show ----

QUERIES_LUA = r'''
return {
  contact = { sql = [[SELECT id, first_name, last_name, company, created_at
                       FROM contacts WHERE id = $1]], one = true },
  deals = { sql = [[SELECT id, amount, probability, close_date, stage
                    FROM deals WHERE contact_id = $1 ORDER BY id]] },
  nap_a = { sql = [[SELECT extract(epoch FROM statement_timestamp())::text AS started,
                       pg_sleep(0.3)::text AS slept, $1::bigint AS id,
                       extract(epoch FROM clock_timestamp())::text AS ended]], one = true },
  nap_b = { sql = [[SELECT extract(epoch FROM statement_timestamp())::text AS started,
                       pg_sleep(0.3)::text AS slept, $1::bigint AS id,
                       extract(epoch FROM clock_timestamp())::text AS ended]], one = true },
  nap_c = { sql = [[SELECT extract(epoch FROM statement_timestamp())::text AS started,
                       pg_sleep(0.3)::text AS slept, $1::bigint AS id,
                       extract(epoch FROM clock_timestamp())::text AS ended]], one = true },
}
'''

ECHO_LUA = r'''
-- Reports the Lua types of what the database gave it.
return {
  description = "echo of ctx types, for tests",
  ttl = %(ttl)s,
  queries = { "contact", "deals" },
  schema = { type = "object", additionalProperties = false,
             required = { "note" }, properties = { note = { type = "string" } } },
  prompt = function(ctx)
    return { { role = "system", content = read_prompt_text },
             { role = "user", content = "contact " .. ctx.contact.first_name } }
  end,
  post = function(reply, ctx)
    local d = ctx.deals[1]
    return {
      note = reply.data.note,
      id_type = math.type(ctx.contact.id),
      created_at = ctx.contact.created_at,
      deals_is_array = json.is_array(ctx.deals),
      ndeals = #ctx.deals,
      amount_type = d and math.type(d.amount) or "none",
      probability_type = d and math.type(d.probability) or "none",
      close_date = d and d.close_date or "none",
      empty = json.array({}),
    }
  end,
}
'''

NAPS_LUA = r'''
return {
  description = "three sleeping queries",
  queries = { "nap_a", "nap_b", "nap_c" },
  prompt = function(ctx)
    -- each nap's start and end, as PostgreSQL's clock saw them
    local t = {}
    for _, n in ipairs({ ctx.nap_a, ctx.nap_b, ctx.nap_c }) do
      t[#t + 1] = n.started .. " " .. n.ended
    end
    return { { role = "user", content = "naps " .. table.concat(t, " ") } }
  end,
}
'''


def make_scripts(root, ttl=300, extra=None):
    root = Path(root)
    (root / "scripts" / "lib").mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    (root / "scripts" / "lib" / "queries.lua").write_text(QUERIES_LUA)
    (root / "prompts" / "echo.system.md").write_text("You answer with a note.\n")
    echo = ECHO_LUA % {"ttl": ttl}
    echo = 'local read_prompt_text = read_prompt("echo.system.md")\n' + echo
    (root / "scripts" / "echo.lua").write_text(echo)
    (root / "scripts" / "naps.lua").write_text(NAPS_LUA)
    for name, text in (extra or {}).items():
        (root / "scripts" / name).write_text(text)
    return {"RAPPORT_SCRIPTS": str(root / "scripts"), "RAPPORT_PROMPTS": str(root / "prompts")}


@pytest.fixture
def custom(make_server, tmp_path):
    """A server on the small test scripts folder."""
    def start(ttl=300, extra=None, **env):
        return make_server(**make_scripts(tmp_path / "custom", ttl, extra), **env)
    return start


# ---- the main path ------------------------------------------------------------

def test_miss_then_hit_serves_cache_without_a_new_upstream_call(server, fake):
    first = analysis(server, 1)
    assert first.status == 200, first.body
    assert first.headers["X-Cache"] == "MISS"
    assert calls(fake) == 1
    body = first.json()
    assert body["cache"]["status"] == "miss"

    second = analysis(server, 1)
    assert second.status == 200, second.body
    assert second.headers["X-Cache"] == "HIT"
    assert calls(fake) == 1, "a cache hit must not call the model"
    hit = second.json()
    assert hit["cache"]["status"] == "hit"
    assert hit["cache"]["age_ms"] >= 0
    assert hit["result"] == body["result"]
    assert hit["generated_at"] == body["generated_at"]
    assert int(second.headers["Age"]) >= 0
    assert second.headers["ETag"] == first.headers["ETag"]


def test_result_document_has_the_designed_shape_and_headers(server, fake):
    r = analysis(server, 2)
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith("application/json")
    d = r.json()
    assert d["contact_id"] == 2 and isinstance(d["contact_id"], int)
    assert d["type"] == TYPE
    assert isinstance(d["result"], dict) and d["result"]
    assert d["model"] == "gpt-4o-mini"
    assert re.fullmatch(r"[0-9a-f]{8}", d["script_version"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", d["generated_at"])
    types = {t["name"]: t for t in server.get("/v1/analysis-types").json()["types"]}
    assert d["cache"]["ttl_ms"] == types[TYPE]["ttl"] * 1000
    assert d["usage"]["prompt_tokens"] > 0 and d["usage"]["completion_tokens"] > 0
    t = d["timings_ms"]
    assert set(t) == {"db", "script", "llm", "total"}
    assert t["total"] >= t["llm"] > 0
    st = r.headers["Server-Timing"]
    for phase in ("db;dur=", "script;dur=", "llm;dur=", "total;dur="):
        assert phase in st
    # The default grace (stale_ttl) is the ttl: a fresh result says so.
    assert r.headers["Cache-Control"] == "private, max-age=%d, stale-while-revalidate=%d" % (
        types[TYPE]["ttl"], types[TYPE]["stale_ttl"])
    assert r.headers["ETag"].startswith('"') and r.headers["X-Request-Id"]


def test_the_request_sent_upstream_carries_the_scripts_model_messages_and_schema(server, fake):
    assert analysis(server, 3).status == 200
    req = fake.stats()["last_request"]
    assert req["model"] == "gpt-4o-mini"
    roles = [m["role"] for m in req["messages"]]
    assert "system" in roles and "user" in roles
    assert req["response_format"]["type"] == "json_schema"
    assert req["response_format"]["json_schema"]["strict"] is True
    assert req["response_format"]["json_schema"]["name"] == TYPE


def test_every_request_writes_one_structured_log_line_with_phases(server, fake):
    analysis(server, 4)
    analysis(server, 4)
    lines = [l for l in server.log_lines()
             if l.get("msg") == "request" and l.get("type") == TYPE and l.get("contact") == 4]
    assert len(lines) == 2
    miss, hit = lines
    for l in lines:
        for k in ("req_id", "status", "cache", "age_ms", "db_ms", "script_ms", "llm_ms", "total_ms"):
            assert k in l, k
    assert miss["cache"] == "miss" and miss["llm_ms"] > 0
    assert hit["cache"] == "hit"


def test_etag_revalidation_answers_304_without_a_body(server, fake):
    r = analysis(server, 5)
    again = analysis(server, 5, headers={"If-None-Match": r.headers["ETag"]})
    assert again.status == 304
    assert again.body == b""


def test_no_cache_request_header_regenerates(server, fake):
    analysis(server, 6)
    r = analysis(server, 6, headers={"Cache-Control": "no-cache"})
    assert r.headers["X-Cache"] == "MISS"
    r = analysis(server, 6, query="?refresh=1")
    assert r.headers["X-Cache"] == "MISS"
    assert calls(fake) == 3


def test_three_sleeping_queries_run_together_not_one_after_another(custom, fake):
    srv = custom()
    r = analysis(srv, 1, "naps")
    assert r.status == 200, r.body
    assert r.json()["timings_ms"]["db"] >= 280
    # Order of events, not speed: every nap began before any nap ended (in
    # sequence, each would begin only after the one before it ended); the
    # margin is the whole 300 ms nap.
    words = fake.stats()["last_request"]["messages"][-1]["content"].split()
    assert words[0] == "naps" and len(words) == 7, words
    started, ended = [float(w) for w in words[1::2]], [float(w) for w in words[2::2]]
    assert all(e - s >= 0.29 for s, e in zip(started, ended)), (started, ended)
    assert max(started) < min(ended), "the queries ran one after another: %s" % list(zip(started, ended))


def test_rows_reach_lua_typed_and_lists_stay_lists(custom, fake, pg):
    pg.sql("INSERT INTO contacts (id, first_name, last_name) VALUES (900001, 'Ada', 'Nodeals') "
           "ON CONFLICT (id) DO NOTHING")
    srv = custom()
    r = analysis(srv, 1, "echo")
    assert r.status == 200, r.body
    res = r.json()["result"]
    assert res["id_type"] == "integer"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", res["created_at"])
    assert res["deals_is_array"] is True
    assert res["empty"] == []
    if res["ndeals"]:
        assert res["amount_type"] == "float"
        assert res["probability_type"] == "integer"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", res["close_date"])
    r = analysis(srv, 900001, "echo")
    assert r.status == 200, r.body
    assert r.json()["result"]["ndeals"] == 0 and r.json()["result"]["deals_is_array"] is True


def test_a_short_ttl_expires_and_the_next_request_regenerates_under_the_ttl_policy(custom, fake):
    """RAPPORT_FRESHNESS=ttl, the seed's policy kept for comparison: no
    grace, no fingerprint, so an expired entry is a miss and a model call."""
    srv = custom(ttl=1, RAPPORT_FRESHNESS="ttl")
    first = analysis(srv, 1, "echo")
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers["Cache-Control"] == "private, max-age=1"
    assert analysis(srv, 1, "echo").headers["X-Cache"] == "HIT"
    time.sleep(1.2)
    r = analysis(srv, 1, "echo")
    assert r.headers["X-Cache"] == "MISS"
    assert calls(fake) == 2


def test_fifty_concurrent_cold_requests_for_one_key_make_one_upstream_call(server, fake):
    fake.config(latency_ms=300)
    results = [None] * 50
    barrier = threading.Barrier(50)

    def one(i):
        barrier.wait()
        results[i] = server.get("/v1/contacts/7/analyses/%s" % TYPE, timeout=30)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r.status == 200 for r in results), \
        [r.status for r in results if r is not None]
    assert calls(fake) == 1
    bodies = {json.dumps(r.json()["result"], sort_keys=True) for r in results}
    assert len(bodies) == 1, "every waiter gets the same result"
    kinds = sorted(r.headers["X-Cache"] for r in results)
    assert kinds.count("MISS") == 1
    assert set(kinds) <= {"MISS", "COALESCED", "HIT"}


def test_editing_a_prompt_changes_the_version_and_so_the_cache_key(make_server, scripts_copy, fake):
    srv = make_server(**scripts_copy.env)
    first = analysis(srv, 8).json()
    assert analysis(srv, 8).headers["X-Cache"] == "HIT"
    prompt = next(p for p in sorted(scripts_copy.prompts.iterdir()) if p.name.startswith(TYPE))
    prompt.write_text(prompt.read_text() + "\nBe brief.\n")
    deadline = time.monotonic() + 5
    version = first["script_version"]
    while time.monotonic() < deadline:
        types = {t["name"]: t for t in srv.get("/v1/analysis-types").json()["types"]}
        if types[TYPE]["version"] != version:
            break
        time.sleep(0.05)
    assert types[TYPE]["version"] != version, "the edit did not change the version"
    r = analysis(srv, 8)
    assert r.headers["X-Cache"] == "MISS"
    assert r.json()["script_version"] == types[TYPE]["version"]
    assert calls(fake) == 2
    others = [t for t in types.values() if t["name"] != TYPE]
    assert others, "the other types are still listed"


# ---- bad input ------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["abc", "0", "-5", "1.5", "99999999999999999999", "12a"])
def test_a_bad_contact_id_is_400_with_a_json_error(server, fake, bad):
    r = analysis(server, bad)
    assert r.status == 400, r.body
    assert r.json()["error"]["code"] == "invalid_contact_id"
    assert calls(fake) == 0


def test_an_unknown_type_is_404(server, fake):
    r = analysis(server, 1, "no_such_type")
    assert r.status == 404
    assert r.json()["error"]["code"] == "unknown_analysis_type"
    r = analysis(server, 1, "Bad-Name!")
    assert r.status == 404


def test_an_unknown_contact_is_404_and_no_model_is_called(server, fake):
    r = analysis(server, 987654321)
    assert r.status == 404, r.body
    assert r.json()["error"]["code"] == "contact_not_found"
    assert calls(fake) == 0
    assert analysis(server, 987654321).status == 404, "the 404 is not cached as a result"


def test_an_unknown_path_is_404_json(server):
    r = server.get("/v2/whatever")
    assert r.status == 404
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("method,path,allow", [
    ("POST", "/v1/contacts/1/analyses/relationship_health", "GET, HEAD, DELETE"),
    ("PUT", "/v1/contacts/1/analyses/relationship_health", "GET, HEAD, DELETE"),
    ("POST", "/v1/analysis-types", "GET, HEAD"),
    ("DELETE", "/healthz", "GET, HEAD"),
    ("PATCH", "/readyz", "GET, HEAD"),
])
def test_a_wrong_method_is_405_with_allow_not_evhttps_501(server, method, path, allow):
    r = server.request(method, path, body="{}" if method != "DELETE" else None)
    assert r.status == 405, r.body
    assert r.headers["Allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_an_oversized_request_is_413_with_a_json_error(server, fake):
    r = server.request("GET", "/v1/contacts/1/analyses/%s" % TYPE, body="x" * (200 * 1024))
    assert r.status == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert calls(fake) == 0
    assert server.get("/healthz").status == 200, "the server serves on"


def test_api_keys_are_required_when_configured_but_probes_stay_open(make_server, fake):
    srv = make_server(RAPPORT_API_KEYS="k-one, k-two")
    r = analysis(srv, 1)
    assert r.status == 401 and r.json()["error"]["code"] == "unauthorized"
    assert analysis(srv, 1, headers={"Authorization": "Bearer nope"}).status == 401
    assert analysis(srv, 1, headers={"Authorization": "Bearer k-two"}).status == 200
    assert srv.get("/v1/analysis-types").status == 401
    assert srv.get("/healthz").status == 200
    assert srv.get("/readyz").status == 200


# ---- failures upstream and in the database -----------------------------------

def test_upstream_500_is_502_and_nothing_is_cached(server, fake):
    fake.fail({"status": 500, "count": 10})
    r = analysis(server, 9)
    assert r.status == 502, r.body
    err = r.json()["error"]
    assert err["code"] == "upstream_error"
    assert "500" in err["message"]
    fake.reset()
    r = analysis(server, 9)
    assert r.status == 200, r.body
    assert r.headers["X-Cache"] == "MISS", "the failure was not cached"


def test_upstream_slower_than_the_deadline_is_504(make_server, fake):
    srv = make_server(RAPPORT_LLM_TIMEOUT_MS=300)
    fake.fail({"mode": "slow", "latency_ms": 3000, "count": 5})
    t0 = time.monotonic()
    r = analysis(srv, 10)
    assert r.status == 504, r.body
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - t0 < 2.5, "the deadline was not enforced"


def test_a_reply_that_breaks_the_schema_gets_one_repair_attempt(server, fake):
    fake.fail({"mode": "invalid_json"})
    r = analysis(server, 11)
    assert r.status == 200, r.body
    assert calls(fake) == 2
    msgs = fake.stats()["last_request"]["messages"]
    assert msgs[-2]["role"] == "assistant" and msgs[-2]["content"] == '{"oops": tru'
    assert msgs[-1]["role"] == "user" and "schema" in msgs[-1]["content"]
    assert server.wait_for_log(lambda l: l.get("msg") == "schema repair attempt")


def test_a_reply_still_invalid_after_the_repair_is_502_and_not_cached(server, fake):
    fake.fail({"mode": "invalid_json", "count": 2})
    r = analysis(server, 19)
    assert r.status == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_invalid_reply" and "repair" in err["message"]
    assert calls(fake) == 2
    assert analysis(server, 19).headers["X-Cache"] == "MISS"


def test_a_client_that_leaves_while_waiting_is_noticed_and_the_result_still_cached(server, fake):
    fake.config(latency_ms=700)
    s = socket.create_connection((server.host, server.port))
    s.sendall(("GET /v1/contacts/12/analyses/%s HTTP/1.1\r\nHost: x\r\n\r\n" % TYPE).encode())
    time.sleep(0.2)
    s.close()
    server.wait_for_log(lambda l: l.get("msg") == "client gone", timeout=2)
    time.sleep(1.0)
    r = analysis(server, 12)
    assert r.status == 200
    assert r.headers["X-Cache"] == "HIT", "the paid-for generation was cached"
    assert calls(fake) == 1


@pytest.mark.timeout(120)
def test_database_stopped_is_503_fast_and_the_pool_recovers(server, fake, pg):
    assert analysis(server, 13).status == 200
    pg.stop()
    try:
        t0 = time.monotonic()
        r = analysis(server, 14)
        took = time.monotonic() - t0
        assert r.status == 503, r.body
        assert r.json()["error"]["code"] == "database_unavailable"
        assert took < 1.5, "503 took %.2f s" % took
        assert server.get("/readyz").status == 503
        assert analysis(server, 13).status == 200, "cached results still served"
    finally:
        pg.start()
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        status = analysis(server, 14).status
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200, "the pool did not reconnect"
    assert server.get("/readyz").status == 200


def test_a_script_with_a_syntax_error_is_reported_and_the_others_serve(custom, fake):
    srv = custom(extra={"broken.lua": "return {\n  description = 'oops',\n  prompt = function(ctx\nend }\n"})
    types = {t["name"]: t for t in srv.get("/v1/analysis-types").json()["types"]}
    assert types["broken"]["loaded"] is False
    assert re.search(r"broken\.lua:\d+:", types["broken"]["error"]), types["broken"]["error"]
    assert types["echo"]["loaded"] is True and types["echo"]["error"] is None
    assert analysis(srv, 1, "echo").status == 200
    assert analysis(srv, 1, "broken").status == 404
    assert srv.wait_for_log(lambda l: l.get("msg") == "script failed to load"
                            and l.get("type") == "broken")
