"""The upstream client under a real provider's behaviour (issue 3): retries
with backoff and retry-after, errors that must not be retried, the cap on
calls in flight, the circuit breaker and fallbacks, the first-token deadline,
connection reuse, the orphan policy, and token/cost accounting."""

import re
import socket
import threading
import time
from pathlib import Path

import pytest

from helpers.fake import FakeOpenAI
from helpers.upstream import breaker_server, metric

TYPE = "relationship_health"


def analysis(srv, contact, type_=TYPE, query=""):
    return srv.get("/v1/contacts/%d/analyses/%s%s" % (contact, type_, query), timeout=60)


def calls(fake):
    return fake.stats()["chat_calls"]


def test_429_with_retry_after_is_retried_after_the_stated_delay(server, fake):
    fake.fail({"status": 429, "retry_after": "1"})
    t0 = time.monotonic()
    r = analysis(server, 40)
    took = time.monotonic() - t0
    assert r.status == 200, r.body
    assert calls(fake) == 2
    assert took >= 1.0, "retried after %.2f s, before the stated 1 s" % took


def test_500_then_success_gives_one_result_from_two_upstream_calls(server, fake):
    fake.fail({"status": 500})
    r = analysis(server, 41)
    assert r.status == 200, r.body
    assert calls(fake) == 2
    assert analysis(server, 41).headers["X-Cache"] == "HIT"


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_upstream_are_not_retried(server, fake, status):
    fake.fail({"status": status, "message": "bad thing %d" % status})
    r = analysis(server, 42)
    assert r.status == 502
    assert "bad thing %d" % status in r.json()["error"]["message"]
    assert calls(fake) == 1


def test_a_bad_api_key_is_a_502_that_says_so_without_the_key(make_server, tmp_path):
    picky = FakeOpenAI(extra_args=["--require-key", "sk-right-key"])
    picky.start()
    try:
        srv = make_server(OPENAI_BASE_URL=picky.base_url, OPENAI_API_KEY="sk-wrong-SECRET-1234")
        r = analysis(srv, 43)
        assert r.status == 502
        msg = r.json()["error"]["message"]
        assert "API key" in msg
        assert "sk-wrong-SECRET" not in r.text
        assert picky.stats()["chat_calls"] == 1, "401 is not retried"
        assert "SECRET" not in srv.stderr_text(), "the key reached the log"
    finally:
        picky.stop()


def test_the_in_flight_cap_answers_429_with_retry_after(make_server, fake):
    srv = make_server(RAPPORT_LLM_MAX_IN_FLIGHT=1, RAPPORT_LLM_MAX_IN_FLIGHT_CEILING=1,
                      RAPPORT_LLM_QUEUE=0)
    fake.config(latency_ms=1500)
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", analysis(srv, 44)))
    t.start()
    deadline = time.monotonic() + 5
    while fake.stats()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    r = analysis(srv, 45)
    t.join()
    assert r.status == 429, r.body
    assert r.json()["error"]["code"] == "overloaded"
    assert int(r.headers["Retry-After"]) >= 1
    assert first["r"].status == 200


def test_requests_beyond_the_cap_wait_in_the_queue_and_all_succeed(make_server, fake):
    srv = make_server(RAPPORT_LLM_MAX_IN_FLIGHT=1, RAPPORT_LLM_MAX_IN_FLIGHT_CEILING=1,
                      RAPPORT_LLM_QUEUE=10)
    fake.config(latency_ms=200)
    out = []
    ts = [threading.Thread(target=lambda c=c: out.append(analysis(srv, c))) for c in (46, 47, 48)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert [r.status for r in out] == [200, 200, 200]
    assert fake.stats()["max_in_flight"] == 1, "the cap held"


def test_the_breaker_opens_serves_the_fallback_then_closes_on_recovery(make_server, fake, scripts_copy):
    srv = breaker_server(make_server, scripts_copy, 2, 1000)
    fake.fail({"status": 500, "count": 2})
    assert analysis(srv, 49).status == 502
    assert analysis(srv, 50).status == 502
    before = calls(fake)
    r = analysis(srv, 51)
    assert r.status == 200, r.body
    assert r.headers["X-Cache"] == "FALLBACK"
    body = r.json()
    assert body["fallback"] is True and body["cache"]["status"] == "fallback"
    assert calls(fake) == before, "no upstream call while the breaker is open"
    bare = analysis(srv, 51, "bare")
    assert bare.status == 503 and int(bare.headers["Retry-After"]) >= 1
    assert analysis(srv, 51).headers["X-Cache"] == "FALLBACK", "a fallback is never cached"
    metrics = srv.get("/metrics").text
    assert "rapport_upstream_breaker_open 1" in metrics
    time.sleep(1.1)
    r = analysis(srv, 51)
    assert r.status == 200 and r.headers["X-Cache"] == "MISS", "closed again after recovery"
    assert "fallback" not in r.json()
    assert "rapport_upstream_breaker_open 0" in srv.get("/metrics").text


def test_a_stalled_stream_is_ended_by_the_first_token_deadline(make_server, fake):
    srv = make_server(RAPPORT_LLM_FIRST_TOKEN_MS=400)
    fake.fail({"mode": "stall"})
    t0 = time.monotonic()
    r = analysis(srv, 52)
    assert r.status == 504, r.body
    assert "no text" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 3


def test_sequential_upstream_calls_reuse_one_connection(make_server, fake):
    # 20 forced regenerations from one client: past the default refresh limit.
    server = make_server(RAPPORT_REFRESH_PER_MIN=0)

    def opened():
        return metric(server, "rapport_upstream_connections_total")

    analysis(server, 53)             # warm: one connection open
    before_ours, before_fake = opened(), fake.stats()["connections"]
    for _ in range(20):
        assert analysis(server, 53, query="?refresh=1").status == 200
    assert opened() == before_ours, "rapport opened a new upstream connection"
    # +1: the stats request itself is a new connection to the fake
    assert fake.stats()["connections"] == before_fake + 1
    assert calls(fake) == 21


def test_concurrent_cold_calls_to_a_cleartext_upstream_each_open_a_connection_at_once(make_server, fake):
    # A fresh server knows nothing about the upstream yet. Over plain http
    # curl cannot multiplex, so a second call must not wait for the first
    # one's reply to learn that: both must be at the upstream together.
    server = make_server()
    fake.config(latency_ms=600)
    out = []
    ts = [threading.Thread(target=lambda c=c: out.append(analysis(server, c))) for c in (56, 57)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert [r.status for r in out] == [200, 200], [r.body[:200] for r in out]
    assert calls(fake) == 2
    assert fake.stats()["max_in_flight"] == 2, "the second call queued behind the first one's connection"
    assert metric(server, "rapport_upstream_connections_total") == 2, \
        "each concurrent HTTP/1.1 call has its own connection"


def test_the_cancel_policy_stops_a_generation_no_one_waits_for(make_server, fake):
    srv = make_server(RAPPORT_ORPHAN_POLICY="cancel")
    fake.config(latency_ms=800)
    s = socket.create_connection((srv.host, srv.port))
    s.sendall(("GET /v1/contacts/54/analyses/%s HTTP/1.1\r\nHost: x\r\n\r\n" % TYPE).encode())
    time.sleep(0.3)
    s.close()
    srv.wait_for_log(lambda l: l.get("msg", "").startswith("generation cancelled"), timeout=3)
    time.sleep(1.0)
    fake.config(latency_ms=20)
    assert analysis(srv, 54).headers["X-Cache"] == "MISS", "the cancelled result was not cached"


def test_tokens_and_cost_are_accounted_per_type(server, fake):
    r = analysis(server, 55)
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    # gpt-4o-mini list price: 0.15 / 0.60 USD per million tokens
    want = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6
    assert abs(usage["cost_usd"] - want) < 1e-9
    m = server.get("/metrics").text
    row = re.search(r'rapport_llm_tokens_total\{[^}]*type="%s"[^}]*kind="prompt"[^}]*\} (\d+)' % TYPE, m) \
        or re.search(r'rapport_llm_tokens_total\{[^}]*kind="prompt"[^}]*type="%s"[^}]*\} (\d+)' % TYPE, m)
    assert row and int(row.group(1)) >= usage["prompt_tokens"], m
    assert 'rapport_llm_cost_usd_total{' in m
    line = server.wait_for_log(lambda l: l.get("msg") == "request" and l.get("contact") == 55)
    assert line["cost_usd"] > 0
