"""The panel's HTTP side, over plain HTTP: the static files at `/` (types,
validators, no way out of web/), GET /v1/contacts (the contact_search named
query on the read-only pool), stream tokens for EventSource
(POST /v1/stream-tokens, accepted only on the stream route, never logged),
and CORS (RAPPORT_CORS_ORIGINS: preflight, Vary, streams cross-origin, no
headers for other origins). Real binary, real PostgreSQL, the fake upstream."""

import json
import os
import time
from pathlib import Path

import pytest

from helpers.server import parse_sse
from test_config import run

REPO = Path(__file__).resolve().parents[2]
TYPE = "relationship_health"
KEY = "panel-key-0123456789"
ORIGIN = "http://crm.example.test:9000"


def analysis_path(cid, t=TYPE):
    return "/v1/contacts/%d/analyses/%s" % (cid, t)


# ---- static files ---------------------------------------------------------------

def test_the_panel_is_served_at_the_root_as_html_with_validators(server):
    r = server.get("/")
    assert r.status == 200, r.body
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="app.js">' in r.body
    assert r.body == (REPO / "web" / "index.html").read_bytes()
    assert r.headers["ETag"] and r.headers["Last-Modified"]
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert server.get("/index.html").body == r.body


def test_static_files_have_the_content_type_of_their_extension(server):
    for path, ctype in (("/app.js", "text/javascript; charset=utf-8"),
                        ("/style.css", "text/css; charset=utf-8"),
                        ("/favicon.svg", "image/svg+xml")):
        r = server.get(path)
        assert r.status == 200 and r.headers["Content-Type"] == ctype, (path, r.headers)
        assert "Content-Security-Policy" not in r.headers


def test_an_unchanged_file_answers_304_to_its_etag_and_its_date(server):
    r = server.get("/app.js")
    etag, lm = r.headers["ETag"], r.headers["Last-Modified"]
    r2 = server.get("/app.js", headers={"If-None-Match": etag})
    assert r2.status == 304 and r2.body == b""
    r3 = server.get("/app.js", headers={"If-Modified-Since": lm})
    assert r3.status == 304
    r4 = server.get("/app.js", headers={"If-None-Match": '"other"'})
    assert r4.status == 200 and r4.body == r.body


def test_head_of_a_file_has_its_length_and_no_body(server):
    r = server.request("HEAD", "/style.css")
    assert r.status == 200 and r.body == b""
    assert int(r.headers["Content-Length"]) == (REPO / "web" / "style.css").stat().st_size


def test_no_path_leads_out_of_the_web_folder(server):
    hostile = ["/../Makefile", "/%2e%2e/Makefile", "/..%2fMakefile", "/%2e%2e%2fcore%2fmain.c",
               "/web/../../etc/passwd", "/.git/config", "/.hidden", "/app.js%00.html",
               "/..%5cMakefile", "/%2fetc%2fpasswd"]
    for p in hostile:
        st, _, body = raw_get(server, p)
        assert st in (400, 404), (p, st)
        assert b"rapport" not in body.lower() or b"error" in body, (p, body[:200])
        assert b"root:" not in body and b"CC " not in body, p


def test_a_symlink_out_of_the_web_folder_is_not_followed(make_server, tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>hi</p>")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, web / "leak.txt")
    os.symlink(web / "index.html", web / "inside.html")
    srv = make_server(RAPPORT_WEB=str(web))
    assert srv.get("/leak.txt").status == 404
    assert srv.get("/inside.html").status == 200
    assert srv.get("/").body == b"<p>hi</p>"


def test_a_missing_file_is_a_json_404_and_api_paths_stay_json(server):
    r = server.get("/nope.js")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found"
    r = server.get("/v1/nope")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found"


def test_without_a_web_folder_the_root_is_404(make_server):
    srv = make_server(RAPPORT_WEB="")
    assert srv.get("/").status == 404
    assert srv.get("/healthz").status == 200


def raw_get(server, path):
    data = server.raw("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, head, body


# ---- contact search ----------------------------------------------------------------

def contact_row(pg, cid):
    rows = pg.sql("SELECT first_name, last_name, email, company FROM contacts WHERE id = %d" % cid)
    return tuple(rows[0])


def test_search_finds_a_contact_by_name_email_or_company(server, pg):
    first, last, email, company = contact_row(pg, 7)
    for q in (last, email.upper(), "%s %s" % (first, last), company):
        r = server.get("/v1/contacts?q=%s&limit=100" % q.replace(" ", "%20"))
        assert r.status == 200, r.body
        doc = r.json()
        ids = [c["id"] for c in doc["contacts"]]
        assert 7 in ids, (q, ids[:10])
        assert doc["limit"] == 100 and doc["q"] == q
    r = server.get("/v1/contacts?q=" + email)
    c = r.json()["contacts"][0]
    assert c["id"] == 7 and c["email"] == email, "an exact email comes first"
    assert isinstance(c["id"], int) and c["full_name"] == "%s %s" % (first, last)


def test_search_by_id_puts_that_contact_first(server):
    r = server.get("/v1/contacts?q=42&limit=1")
    assert r.status == 200 and r.json()["contacts"][0]["id"] == 42


def test_search_text_wildcards_are_literal(server):
    r = server.get("/v1/contacts?q=%25&limit=5")
    assert r.status == 200 and r.json()["contacts"] == [], "a % matches only a real %"
    r = server.get("/v1/contacts?q=_&limit=5")
    assert r.status == 200 and r.json()["contacts"] == []


def test_search_without_text_lists_contacts_up_to_the_limit(server):
    r = server.get("/v1/contacts?limit=3")
    assert r.status == 200 and len(r.json()["contacts"]) == 3
    assert len(server.get("/v1/contacts").json()["contacts"]) == 20, "default limit 20"


def test_a_bad_limit_or_text_is_400(server):
    for lim in ("0", "101", "-1", "x", "1.5", ""):
        r = server.get("/v1/contacts?q=a&limit=" + lim)
        assert r.status == 400 and r.json()["error"]["code"] == "invalid_limit", (lim, r.body)
    r = server.get("/v1/contacts?q=" + "a" * 201)
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_query"
    r = server.get("/v1/contacts?q=%ff")
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_query"
    r = server.post("/v1/contacts", body={})
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"


def test_search_needs_the_api_key_when_keys_are_set(make_server):
    srv = make_server(RAPPORT_API_KEYS=KEY)
    assert srv.get("/v1/contacts?q=a").status == 401
    r = srv.get("/v1/contacts?q=a", headers={"Authorization": "Bearer " + KEY})
    assert r.status == 200


def test_search_comes_from_queries_lua(make_server, scripts_copy, fake):
    q = scripts_copy.scripts / "lib" / "queries.lua"
    text = q.read_text()
    start = text.index("contact_search = {")
    q.write_text(text[:start] + "contact_search = { sql = [[ SELECT 99 AS id, 'Only' AS full_name "
                 "WHERE $1::text IS NOT NULL LIMIT $2::int ]] },\n}\n")
    srv = make_server(**scripts_copy.env)
    r = srv.get("/v1/contacts?q=x")
    assert r.status == 200 and r.json()["contacts"] == [{"id": 99, "full_name": "Only"}]


@pytest.mark.timeout(120)
def test_search_with_the_database_stopped_is_503_database_unavailable(server, pg):
    assert server.get("/v1/contacts?q=a").status == 200
    pg.stop()
    try:
        r = server.get("/v1/contacts?q=a", timeout=15)
        assert r.status == 503, r.body
        assert r.json()["error"]["code"] == "database_unavailable"
        assert "database" in r.json()["error"]["message"]
    finally:
        pg.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.get("/v1/contacts?q=a").status == 200:
            break
        time.sleep(0.2)
    assert server.get("/v1/contacts?q=a").status == 200


def test_search_log_line_has_status_and_path(server):
    server.get("/v1/contacts?q=zz")
    server.wait_for_log(lambda e: e.get("msg") == "request" and e.get("path") == "/v1/contacts"
                        and e.get("status") == 200)


# ---- stream tokens ------------------------------------------------------------------

def token_for(srv, cid, t=TYPE, key=KEY):
    r = srv.post("/v1/stream-tokens", body={"contact_id": cid, "type": t},
                 headers={"Authorization": "Bearer " + key})
    assert r.status == 201, r.body
    return r


def test_a_stream_token_needs_the_key_and_expires_soon(make_server):
    srv = make_server(RAPPORT_API_KEYS=KEY)
    assert srv.post("/v1/stream-tokens", body={"contact_id": 1, "type": TYPE}).status == 401
    r = token_for(srv, 1)
    doc = r.json()
    assert doc["contact_id"] == 1 and doc["type"] == TYPE and doc["expires_in"] == 60
    assert KEY not in doc["token"]
    assert r.headers["Cache-Control"] == "no-store"
    exp = int(doc["token"].split(".")[0])
    assert abs(exp - (time.time() + 60)) < 10
    assert doc["expires_at"].endswith("Z")


def test_a_bad_token_request_body_is_400(make_server):
    srv = make_server(RAPPORT_API_KEYS=KEY)
    h = {"Authorization": "Bearer " + KEY}
    for body in ("", "not json", "[]", '{"contact_id":0,"type":"x"}', '{"contact_id":1}',
                 '{"contact_id":"1","type":"x"}', '{"contact_id":1,"type":"Bad-Type"}'):
        r = srv.post("/v1/stream-tokens", body=body, headers=dict(h, **{"Content-Type": "application/json"}))
        assert r.status == 400 and r.json()["error"]["code"] == "invalid_body", (body, r.body)
    assert srv.get("/v1/stream-tokens", headers=h).status == 405


def test_a_token_opens_its_stream_and_nothing_else(make_server, fake):
    srv = make_server(RAPPORT_API_KEYS=KEY)
    tok = token_for(srv, 3).json()["token"]
    resp, events = srv.sse(analysis_path(3) + "?stream=1&token=" + tok)
    assert resp.status == 200, resp.body
    assert [e["event"] for e in events][-1] == "result"
    # not for another contact or type
    r = srv.get(analysis_path(4) + "?stream=1&token=" + tok)
    assert r.status == 401 and r.json()["error"]["code"] == "invalid_stream_token"
    r = srv.get(analysis_path(3, "smart_tips") + "?stream=1&token=" + tok)
    assert r.status == 401
    # not for a plain (not streamed) request, nor another route
    r = srv.get(analysis_path(3) + "?token=" + tok)
    assert r.status == 401 and r.json()["error"]["code"] == "unauthorized"
    assert srv.get("/v1/analysis-types?token=" + tok).status == 401
    assert srv.get("/v1/contacts?q=a&token=" + tok).status == 401
    # a forged or mangled one
    exp, sig = tok.split(".")
    forged = "%d.%s" % (int(exp) + 600, sig)
    r = srv.get(analysis_path(3) + "?stream=1&token=" + forged)
    assert r.status == 401 and r.json()["error"]["code"] == "invalid_stream_token"
    assert srv.get(analysis_path(3) + "?stream=1&token=junk").status == 401


def test_a_token_from_another_process_is_refused_unless_the_secret_is_shared(make_server, fake):
    secret = "s" * 40
    a = make_server(RAPPORT_API_KEYS=KEY, RAPPORT_STREAM_SECRET=secret)
    b = make_server(RAPPORT_API_KEYS=KEY, RAPPORT_STREAM_SECRET=secret)
    c = make_server(RAPPORT_API_KEYS=KEY)
    tok = token_for(a, 5).json()["token"]
    resp, _ = b.sse(analysis_path(5) + "?stream=1&token=" + tok)
    assert resp.status == 200, "same secret: any instance takes it"
    r = c.get(analysis_path(5) + "?stream=1&token=" + tok)
    assert r.status == 401, "a random per-process secret: only its maker takes it"


def test_without_keys_a_stream_needs_no_token_and_a_stray_one_is_ignored(server, fake):
    resp, events = server.sse(analysis_path(10) + "?stream=1&token=junk")
    assert resp.status == 200 and events[-1]["event"] == "result"


def test_an_expired_token_is_refused(make_server, fake):
    srv = make_server(RAPPORT_API_KEYS=KEY, RAPPORT_STREAM_TOKEN_TTL="1")
    tok = token_for(srv, 6).json()["token"]
    time.sleep(2.2)
    r = srv.get(analysis_path(6) + "?stream=1&token=" + tok)
    assert r.status == 401 and "expired" in r.json()["error"]["message"]


def test_neither_key_nor_token_is_in_the_log(make_server, fake):
    srv = make_server(RAPPORT_API_KEYS=KEY)
    tok = token_for(srv, 8).json()["token"]
    srv.sse(analysis_path(8) + "?stream=1&token=" + tok)
    # a changed last digit (never the same one: a token ending in 0 stayed valid)
    bad = tok[:-1] + ("1" if tok[-1] == "0" else "0")
    srv.get(analysis_path(8) + "?stream=1&token=" + bad)
    srv.wait_for_log(lambda e: e.get("msg") == "request" and e.get("status") == 401)
    log = srv.stderr_text()
    assert KEY not in log
    assert tok not in log and tok.split(".")[1] not in log


def test_short_secret_or_bad_ttl_is_a_startup_error():
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "host=/nonexistent dbname=x",
           "RAPPORT_LISTEN": "127.0.0.1:1", "RAPPORT_ADMIN_SOCKET": "off"}
    r = run(["serve"], env=dict(env, RAPPORT_STREAM_SECRET="short"))
    assert r.returncode != 0 and "RAPPORT_STREAM_SECRET" in r.stderr, r.stderr
    r = run(["serve"], env=dict(env, RAPPORT_STREAM_TOKEN_TTL="0"))
    assert r.returncode != 0 and "RAPPORT_STREAM_TOKEN_TTL" in r.stderr, r.stderr
    r = run(["serve"], env=dict(env, RAPPORT_CORS_ORIGINS="crm.example.com"))
    assert r.returncode != 0 and "RAPPORT_CORS_ORIGINS" in r.stderr, r.stderr


# ---- CORS -------------------------------------------------------------------------------

def test_a_preflight_from_a_listed_origin_is_answered_before_auth(make_server):
    srv = make_server(RAPPORT_API_KEYS=KEY, RAPPORT_CORS_ORIGINS="https://other.test, " + ORIGIN)
    r = srv.request("OPTIONS", "/v1/contacts?q=a", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert r.status == 204, r.body
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "GET" in r.headers["Access-Control-Allow-Methods"]
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in r.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_answers_to_a_listed_origin_carry_cors_headers_errors_included(make_server):
    srv = make_server(RAPPORT_API_KEYS=KEY, RAPPORT_CORS_ORIGINS=ORIGIN)
    h = {"Origin": ORIGIN, "Authorization": "Bearer " + KEY}
    r = srv.get("/v1/contacts?q=a", headers=h)
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN and r.headers["Vary"] == "Origin"
    assert "Server-Timing" in r.headers["Access-Control-Expose-Headers"]
    assert "Retry-After" in r.headers["Access-Control-Expose-Headers"]
    r = srv.get("/v1/contacts?q=a", headers={"Origin": ORIGIN})
    assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == ORIGIN, \
        "the page can read why it was refused"


def test_another_origin_gets_no_cors_headers(make_server):
    srv = make_server(RAPPORT_CORS_ORIGINS=ORIGIN)
    for origin in ("http://evil.test", ORIGIN + ".evil.test", "null"):
        r = srv.get("/v1/analysis-types", headers={"Origin": origin})
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers, origin
        assert r.headers["Vary"] == "Origin"
        r = srv.request("OPTIONS", "/v1/analysis-types", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in r.headers
        assert "Access-Control-Allow-Methods" not in r.headers


def test_without_the_setting_there_is_no_cors(server):
    r = server.get("/v1/analysis-types", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in r.headers and "Vary" not in r.headers


def test_a_star_allows_any_origin_without_credentials(make_server):
    srv = make_server(RAPPORT_CORS_ORIGINS="*")
    r = srv.get("/v1/analysis-types", headers={"Origin": "http://anything.test"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_a_stream_to_a_listed_origin_carries_cors_headers(make_server, fake):
    srv = make_server(RAPPORT_API_KEYS=KEY, RAPPORT_CORS_ORIGINS=ORIGIN)
    tok = token_for(srv, 9).json()["token"]
    resp, events = srv.sse(analysis_path(9) + "?stream=1&token=" + tok, headers={"Origin": ORIGIN})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert events[0]["event"] == "meta" and events[-1]["event"] == "result"


# ---- streams as a browser's EventSource opens them ---------------------------------------

def test_errors_event_turns_an_early_failure_into_an_error_event(server, fake):
    path = "/v1/contacts/999999/analyses/smart_tips?stream=1"
    r = server.get(path, headers={"Accept": "text/event-stream"})
    assert r.status == 404, "without the flag the status stays"
    resp, events = server.sse(path + "&errors=event")
    assert resp.status == 200
    assert [e["event"] for e in events] == ["meta", "error"], events
    err = json.loads(events[1]["data"])["error"]
    assert err["code"] == "contact_not_found" and err["status"] == 404
    # errors before the pipeline keep their status even so
    r = server.get("/v1/contacts/0/analyses/smart_tips?stream=1&errors=event",
                   headers={"Accept": "text/event-stream"})
    assert r.status == 400


def test_eventsource_no_cache_header_does_not_regenerate_only_refresh_does(server, fake):
    h = {"Cache-Control": "no-cache", "Accept": "text/event-stream"}   # what EventSource sends
    resp, _ = server.sse(analysis_path(12) + "?stream=1", headers=h)
    assert resp.headers["X-Cache"] == "MISS"
    resp, _ = server.sse(analysis_path(12) + "?stream=1", headers=h)
    assert resp.headers["X-Cache"] == "HIT", "a stream's no-cache is EventSource's, not a refresh"
    resp, _ = server.sse(analysis_path(12) + "?stream=1&refresh=1", headers=h)
    assert resp.headers["X-Cache"] == "MISS"
    r = server.get(analysis_path(12), headers={"Cache-Control": "no-cache"})
    assert r.headers["X-Cache"] == "MISS", "a plain request's no-cache still regenerates"
