"""Regressions for defects a review found (each was reproduced before the
fix): a script at its memory cap raising a non-string error, huge TTLs, error
messages cut inside a UTF-8 character, keep-alive connections after a
stream, and a fixture file that never ends."""

import json
import socket
import time

from test_analysis_api import make_scripts

TYPE = "relationship_health"

NUMBER_ERROR_AT_CAP = r'''
local keep = false
local pool = {}
for i = 1, 4000 do pool[i] = {} end
local stages = {}
for _, sz in ipairs({1 << 20, 1 << 14, 1 << 10, 64}) do
  stages[#stages + 1] = function() while true do keep = { keep, string.rep("x", sz) } end end
end
stages[#stages + 1] = function() while true do keep = { keep } end end
stages[#stages + 1] = function() for i = 1, #pool do pool[i][1] = true end end
return {
  description = "fills its state, then raises a number",
  prompt = function(ctx)
    for i = 1, #stages do pcall(stages[i]) end
    error(12345.678)
  end,
}
'''

HUGE_TTL = r'''
return { description = "huge ttl", ttl = 1e300,
         prompt = function(ctx) return { { role = "user", content = "x" } } end }
'''

LONG_UTF8_ERROR = r'''
return { description = "long non-ascii error",
         prompt = function(ctx) error("x" .. string.rep("\u{e9}", 400)) end }
'''


def test_a_non_string_error_raised_at_the_memory_cap_is_a_500_not_an_abort(make_server, tmp_path, fake):
    srv = make_server(**make_scripts(tmp_path / "s", extra={"boom.lua": NUMBER_ERROR_AT_CAP}))
    r = srv.get("/v1/contacts/1/analyses/boom", timeout=60)
    assert r.status == 500 and r.json()["error"]["code"] == "script_error", r.body[:300]
    assert srv.is_running()
    assert srv.get("/v1/contacts/1/analyses/echo").status == 200


def test_a_huge_ttl_is_refused_at_load(make_server, tmp_path, fake):
    srv = make_server(**make_scripts(tmp_path / "s", extra={"bigttl.lua": HUGE_TTL}))
    t = {x["name"]: x for x in srv.get("/v1/analysis-types").json()["types"]}["bigttl"]
    assert t["loaded"] is False and "ttl" in t["error"]


def test_an_error_cut_inside_a_utf8_character_keeps_its_code(make_server, tmp_path, fake):
    srv = make_server(**make_scripts(tmp_path / "s", extra={"utf.lua": LONG_UTF8_ERROR}))
    r = srv.get("/v1/contacts/1/analyses/utf")
    err = r.json()["error"]
    assert r.status == 500 and err["code"] == "script_error" and r.json()["request_id"]
    resp, events = srv.sse("/v1/contacts/2/analyses/utf")
    # Failed before any text: the stream keeps the error's own status.
    assert resp.status == 500 and json.loads(resp.body)["error"]["code"] == "script_error"


def test_a_keep_alive_connection_times_out_again_after_a_stream(make_server, fake):
    srv = make_server(RAPPORT_HTTP_TIMEOUT=2)
    assert srv.get("/v1/contacts/61/analyses/%s" % TYPE).status == 200          # cached
    s = socket.create_connection((srv.host, srv.port))
    s.sendall(("GET /v1/contacts/61/analyses/%s HTTP/1.1\r\nHost: x\r\n"
               "Accept: text/event-stream\r\n\r\n" % TYPE).encode())
    s.settimeout(10)
    buf = b""
    while not buf.endswith(b"0\r\n\r\n"):
        d = s.recv(65536)
        assert d, "closed before the stream ended"
        buf += d
    t0 = time.monotonic()
    try:
        assert s.recv(1) == b""                         # the server closed it
    except socket.timeout:
        raise AssertionError("the idle connection was still open after 10 s")
    assert time.monotonic() - t0 < 5


def test_a_fixture_file_that_never_ends_does_not_hang_a_reload(make_server, scripts_copy, fake):
    srv = make_server(**scripts_copy.env)
    (scripts_copy.scripts / "tests" / (TYPE + ".lua")).write_text("while true do end\n")
    (scripts_copy.scripts / (TYPE + ".lua")).touch()
    time.sleep(1.0)
    assert srv.get("/healthz", timeout=5).status == 200
    assert srv.get("/v1/contacts/1/analyses/%s" % TYPE, timeout=10).status == 200
