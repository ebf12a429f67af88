"""SIGTERM: requests still waiting get an answer (503 shutting_down, or an
error event on a stream) before the process exits cleanly."""

import signal
import threading
import time

from helpers.server import parse_sse

TYPE = "relationship_health"


def test_sigterm_answers_waiting_requests_then_exits_cleanly(make_server, fake):
    srv = make_server()
    # The model writes nothing for far longer than the wait below (and
    # less than the 20 s first-token timeout): with 5 s, equal to the wait,
    # SIGTERM sometimes landed after the stream's first delta on a loaded
    # machine (the second call may wait for the first, so the wait often
    # runs to its end).
    fake.config(latency_ms=15000)
    out = {}

    def plain():
        out["plain"] = srv.get("/v1/contacts/30/analyses/%s" % TYPE, timeout=20)

    def stream():
        out["sse"] = srv.sse("/v1/contacts/31/analyses/%s" % TYPE, timeout=20)

    ts = [threading.Thread(target=plain), threading.Thread(target=stream)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 3
    while fake.stats()["chat_calls"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.signal(signal.SIGTERM)
    for t in ts:
        t.join(10)
    r = out["plain"]
    assert r.status == 503 and r.json()["error"]["code"] == "shutting_down"
    resp, events = out["sse"]
    # The stream had not started (the model had written nothing): a plain
    # 503, as for the plain request.
    assert resp.status == 503 and b"shutting_down" in resp.body
    srv.stop()      # asserts exit status 0 and no sanitizer report


def test_sigterm_ends_a_started_stream_with_an_error_event(make_server, fake):
    from test_streaming import Reader
    srv = make_server()
    fake.config(chunk_delay_ms=2000, chunks=5)
    r = Reader(srv, "/v1/contacts/32/analyses/%s" % TYPE)
    assert r.read_until("delta") is not None          # the stream is out
    srv.signal(signal.SIGTERM)
    ev = r.read_until("error")
    r.close()
    assert ev is not None and "shutting_down" in ev["data"]
    srv.stop()
