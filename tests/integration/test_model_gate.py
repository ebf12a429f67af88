"""One model-call gate (issue 7, item 7): the pipeline's calls and run(ctx)'s
take the limiter slot, the breaker's permission and its half-open trial in
one place and give all of it back on every path, so a run(ctx) call that
never got an answer (queued, refused, its flight cancelled) cannot leave the
breaker half-open with its one trial taken until the probe timeout."""

import json
import socket
import threading
import time

from helpers.upstream import breaker_server, metric, wait_until

TYPE = "relationship_health"

# A run(ctx) script whose one model call is recognisable in the fake's
# last_request.
GATE_RUN = r'''
return {
  description = "one model call from run(ctx)",
  run = function(ctx)
    local r, err = llm.chat({ { role = "user", content = "gate probe from run" } })
    return { text = r and r.text or nil, err = err }
  end,
}
'''



def get(srv, contact, type_, timeout=60):
    return srv.get("/v1/contacts/%d/analyses/%s" % (contact, type_), timeout=timeout)


def test_a_cancelled_run_call_gives_the_half_open_trial_back(make_server, fake, scripts_copy):
    """The breaker is half-open and the one upstream slot is taken, so the
    run(ctx) call waits (before the fix it had already taken the breaker's
    trial while queued). Its client leaves and the cancel policy ends the
    flight. The next request must be allowed as the trial, not get 503 until
    the probe timeout."""
    (scripts_copy.scripts / "gate_run.lua").write_text(GATE_RUN)
    srv = breaker_server(make_server, scripts_copy, 1, 1000,
                         RAPPORT_LLM_MAX_IN_FLIGHT=1, RAPPORT_LLM_QUEUE=1,
                         RAPPORT_ORPHAN_POLICY="cancel", RAPPORT_LLM_TIMEOUT_MS=60000)
    # Call 1 fails after the latency and opens the breaker; call 2 is slow.
    fake.config(latency_ms=800)
    fake.fail({"status": 500, "message": "provider down"},
              {"mode": "slow", "latency_ms": 8000})

    out = {}
    a = threading.Thread(target=lambda: out.setdefault("a", get(srv, 30, TYPE)))
    a.start()
    wait_until(lambda: fake.stats()["in_flight"] == 1, "the first call at the fake")
    # Queued behind it while the breaker is still closed.
    c = threading.Thread(target=lambda: out.setdefault("c", get(srv, 31, TYPE)))
    c.start()
    wait_until(lambda: metric(srv, "rapport_upstream_queued") == 1, "the second request queued")
    a.join()
    assert out["a"].status == 502, out["a"].body
    assert metric(srv, "rapport_upstream_breaker_open") == 1

    time.sleep(1.2)                  # the open period (1 s) is over: half-open

    # The run(ctx) call: its client leaves once the call has reached the
    # gate (queued behind the slow call, or sent as the trial).
    s = socket.create_connection((srv.host, srv.port))
    s.sendall(b"GET /v1/contacts/32/analyses/gate_run HTTP/1.1\r\nHost: x\r\n\r\n")

    def reached_gate():
        last = json.dumps(fake.stats().get("last_request"))
        return "gate probe from run" in last or metric(srv, "rapport_upstream_queued") == 1

    wait_until(reached_gate, "the run(ctx) call at the gate")
    s.close()
    srv.wait_for_log(lambda l: l.get("msg", "").startswith("generation cancelled"), timeout=5)

    # The trial is free again: this call is allowed (it may wait for the
    # slot), and its success closes the breaker.
    fake.config(latency_ms=50)
    w = get(srv, 33, "bare")
    assert w.status == 200, "the breaker's trial was not given back: %d %s" % (w.status, w.body)
    assert w.headers["X-Cache"] == "MISS"
    assert metric(srv, "rapport_upstream_breaker_open") == 0, "the trial's success closed it"
    c.join()
    # The request queued before the breaker opened was not sent into it.
    assert out["c"].status == 200 and out["c"].headers["X-Cache"] == "FALLBACK", out["c"].body


def test_a_run_call_refused_by_the_open_breaker_takes_no_slot(make_server, fake, tmp_path):
    """While the breaker is open, run(ctx)'s llm.chat returns nil and the
    reason at once; nothing is queued and the upstream is not called."""
    from test_analysis_api import make_scripts
    env = make_scripts(tmp_path / "s", extra={"gate_run.lua": GATE_RUN})
    srv = make_server(RAPPORT_BREAKER_FAILURES=1, RAPPORT_BREAKER_OPEN_MS=30000,
                      RAPPORT_LLM_RETRIES=0, **env)
    fake.fail({"status": 500, "message": "provider down"})
    first = get(srv, 34, "gate_run")
    assert first.status == 200, first.body
    assert "provider down" in first.json()["result"]["err"]
    before = fake.stats()["chat_calls"]
    r = get(srv, 35, "gate_run")
    assert r.status == 200, r.body
    assert "circuit breaker open" in r.json()["result"]["err"]
    assert fake.stats()["chat_calls"] == before, "no call while the breaker is open"
    assert metric(srv, "rapport_upstream_queued") == 0


def test_a_run_call_refused_for_want_of_a_slot_gives_the_trial_back(make_server, fake, scripts_copy):
    """Mirrors the unit test test_refused_run_call_returns_the_trial. The
    breaker is half-open with its trial free while every upstream slot is
    taken (one by a call sent before the breaker opened, one by a trial the
    breaker presumes lost once the probe timeout has passed), and there is no
    queue: run(ctx)'s llm.chat is refused as overloaded. Before the fix the
    refused call kept the trial it had taken, so once a slot came free the
    next call got 503 "circuit breaker open" until the probe timeout; now it
    goes out as the trial and its success closes the breaker.

    The probe timeout follows RAPPORT_LLM_TIMEOUT_MS; 0 leaves the breaker's
    own 30 s (and a 600 s call deadline), so the stalled calls outlive it."""
    (scripts_copy.scripts / "gate_run.lua").write_text(GATE_RUN)
    srv = breaker_server(make_server, scripts_copy, 1, 1000,
                         RAPPORT_LLM_MAX_IN_FLIGHT=2, RAPPORT_LLM_QUEUE=0,
                         RAPPORT_ORPHAN_POLICY="cancel", RAPPORT_LLM_TIMEOUT_MS=0,
                         RAPPORT_LLM_FIRST_TOKEN_MS=0, RAPPORT_HTTP_TIMEOUT=300)
    # One answered call first, so the upstream client knows its connection
    # is HTTP/1.1 and opens another for a concurrent call at once.
    assert get(srv, 39, "bare").status == 200
    # In order at the fake: the early holder stalls, the failure opens the
    # breaker, the trial stalls; later calls get the normal reply.
    fake.fail({"mode": "stall"}, {"status": 500, "message": "provider down"}, {"mode": "stall"})

    def hold(contact):
        s = socket.create_connection((srv.host, srv.port))
        s.sendall(b"GET /v1/contacts/%d/analyses/bare HTTP/1.1\r\nHost: x\r\n\r\n" % contact)
        return s

    early = hold(40)                 # sent while the breaker is closed
    wait_until(lambda: fake.stats()["in_flight"] == 1, "the early call at the fake")
    down = get(srv, 41, "bare")
    assert down.status == 502, down.body
    assert metric(srv, "rapport_upstream_breaker_open") == 1

    time.sleep(1.2)                  # the open period (1 s) is over: half-open
    trial = hold(42)                 # the half-open trial; it stalls too
    wait_until(lambda: fake.stats()["in_flight"] == 2, "the trial at the fake")
    refused = get(srv, 43, "bare")
    assert refused.status == 503 and "circuit breaker open" in refused.text, \
        "the trial is out: %d %s" % (refused.status, refused.body)

    time.sleep(31)                   # past the breaker's 30 s probe timeout
    r = get(srv, 44, "gate_run")
    assert r.status == 200, r.body
    assert "overloaded" in (r.json()["result"]["err"] or ""), r.body

    # A slot comes free without a verdict: the early call's client leaves
    # and the cancel policy ends its flight (it was no trial).
    early.close()
    srv.wait_for_log(lambda l: l.get("msg", "").startswith("generation cancelled"), timeout=5)
    wait_until(lambda: fake.stats()["in_flight"] <= 1, "the early call gone from the fake")

    w = get(srv, 45, "bare")
    assert w.status == 200, "the refused run(ctx) call kept the trial: %d %s" % (w.status, w.body)
    assert w.headers["X-Cache"] == "MISS"
    assert metric(srv, "rapport_upstream_breaker_open") == 0, "the trial's success closed it"
    trial.close()
