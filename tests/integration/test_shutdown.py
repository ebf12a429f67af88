"""SIGTERM: requests still waiting get an answer (503 shutting_down, or an
error event on a stream) before the process exits cleanly."""

import signal
import threading
import time

from helpers.server import parse_sse

TYPE = "relationship_health"


def test_sigterm_answers_waiting_requests_then_exits_cleanly(make_server, fake):
    srv = make_server()
    fake.config(latency_ms=5000)
    out = {}

    def plain():
        out["plain"] = srv.get("/v1/contacts/30/analyses/%s" % TYPE, timeout=20)

    def stream():
        out["sse"] = srv.sse("/v1/contacts/31/analyses/%s" % TYPE, timeout=20)

    ts = [threading.Thread(target=plain), threading.Thread(target=stream)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 5
    while fake.stats()["chat_calls"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.signal(signal.SIGTERM)
    for t in ts:
        t.join(10)
    r = out["plain"]
    assert r.status == 503 and r.json()["error"]["code"] == "shutting_down"
    resp, events = out["sse"]
    assert events[-1]["event"] == "error" and "shutting_down" in events[-1]["data"]
    srv.stop()      # asserts exit status 0 and no sanitizer report
