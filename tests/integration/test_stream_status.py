"""A streamed request (Accept: text/event-stream or ?stream=1) that fails
before any content went out answers with the error's own HTTP status and
JSON body, so a browser's EventSource stops instead of reconnecting forever
during an outage. Once text is out, a failure stays an `error` event.
The real binary, the fake upstream, real PostgreSQL."""

import json
import threading
import time

from helpers.upstream import breaker_server
from test_streaming import Reader, names

TYPE = "relationship_health"
PATH = "/v1/contacts/%d/analyses/" + TYPE


def json_error(resp):
    assert resp.headers["Content-Type"].startswith("application/json"), resp
    doc = json.loads(resp.body)
    assert doc["request_id"], doc
    return doc["error"]["code"]


def test_an_upstream_failure_before_any_text_is_an_http_502(server, fake):
    fake.fail({"status": 400, "message": "bad request upstream"})   # not retried
    resp, events = server.sse(PATH % 70)
    assert resp.status == 502, resp.body
    assert json_error(resp) == "upstream_error"
    assert events == []


def test_a_full_upstream_queue_is_an_http_429_with_retry_after(make_server, fake):
    srv = make_server(RAPPORT_LLM_MAX_IN_FLIGHT=1, RAPPORT_LLM_QUEUE=0)
    fake.config(latency_ms=1500)
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", srv.get(PATH % 71)))
    t.start()
    deadline = time.monotonic() + 5
    while fake.stats()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    resp, events = srv.sse(PATH % 72)
    t.join()
    assert resp.status == 429, resp.body
    assert json_error(resp) == "overloaded"
    assert int(resp.headers["Retry-After"]) >= 1
    assert first["r"].status == 200


def test_an_open_breaker_is_an_http_503_with_retry_after(make_server, fake, scripts_copy):
    srv = breaker_server(make_server, scripts_copy, 1, 30000)
    fake.fail({"status": 500})
    assert srv.get("/v1/contacts/73/analyses/bare").status == 502     # opens it
    resp, events = srv.sse("/v1/contacts/74/analyses/bare")
    assert resp.status == 503, resp.body
    assert json_error(resp) == "upstream_unavailable"
    assert int(resp.headers["Retry-After"]) >= 1


def test_a_first_token_timeout_is_an_http_504(make_server, fake):
    srv = make_server(RAPPORT_LLM_FIRST_TOKEN_MS=400)
    fake.fail({"mode": "stall"})
    resp, events = srv.sse(PATH % 75, timeout=20)
    assert resp.status == 504, resp.body
    assert json_error(resp) == "upstream_timeout"


def test_a_failure_after_text_went_out_stays_an_error_event(server, fake):
    fake.config(chunk_delay_ms=20, chunks=8)
    fake.fail({"mode": "cut", "after_chunks": 3})
    resp, events = server.sse(PATH % 76)
    assert resp.status == 200
    n = names(events)
    assert n[0] == "meta" and "delta" in n and n[-1] == "error", n
    assert json.loads(events[-1]["data"])["error"]["status"] == 502


def test_the_stream_starts_with_the_first_text_not_before(server, fake):
    # The 200 waits for content: with the model silent for a while, the
    # response's headers are not there yet; they come with the first delta.
    fake.config(latency_ms=1500, chunk_delay_ms=10, chunks=4)
    r = Reader(server, PATH % 77)
    assert r.resp.status == 200
    ev = r.read_until("delta")
    assert ev is not None
    assert names(r.events)[0] == "meta"
    meta = json.loads(r.events[0]["data"])
    assert meta["cache"] == "miss" and meta["contact_id"] == 77
    assert r.read_until("result") is not None
    r.close()
    # (no timing asserted: order only — meta, then deltas, then result)


def test_a_joiner_of_a_silent_generation_also_gets_the_error_status(make_server, fake):
    srv = make_server(RAPPORT_LLM_FIRST_TOKEN_MS=1500)
    fake.fail({"mode": "stall"})
    out = {}

    def first():
        out["a"] = srv.sse(PATH % 78, timeout=40)

    t = threading.Thread(target=first)
    t.start()
    deadline = time.monotonic() + 5
    while fake.stats()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    resp_b, _ = srv.sse(PATH % 78, timeout=40)
    t.join()
    resp_a, _ = out["a"]
    assert resp_a.status == 504 and resp_b.status == 504
    assert json_error(resp_b) == "upstream_timeout"
