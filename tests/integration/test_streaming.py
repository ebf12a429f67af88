"""Server-Sent Events: GET /v1/contacts/{id}/analyses/{type} with
Accept: text/event-stream (or ?stream=1) — meta, delta…, result | error.
The real binary over HTTP, the fake upstream streaming real chunks."""

import json
import socket
import threading
import time

from helpers.server import parse_sse

TYPE = "relationship_health"
PATH = "/v1/contacts/%d/analyses/" + TYPE


class Reader:
    """Reads an SSE response incrementally, timing each event."""

    def __init__(self, srv, path, headers=None):
        self.t0 = time.monotonic()
        self.conn, self.resp = srv.open_stream(path, headers=headers)
        self.events = []
        self.buf = b""

    def next_events(self):
        line = self.resp.readline()      # chunked decoding included
        if not line:
            return False
        self.buf += line
        if line in (b"\n", b"\r\n"):
            for ev in parse_sse(self.buf):
                ev["t"] = time.monotonic() - self.t0
                self.events.append(ev)
            self.buf = b""
        return True

    def read_until(self, name):
        while self.next_events():
            if self.events and self.events[-1]["event"] == name:
                return self.events[-1]
        return None

    def read_all(self):
        """Up to the final result or error event (the connection itself
        stays open: HTTP/1.1 keep-alive)."""
        while self.next_events():
            if self.events and self.events[-1]["event"] in ("result", "error"):
                break
        return self.events

    def close(self):
        self.conn.close()


def names(events):
    return [e["event"] for e in events]


def test_a_miss_streams_meta_then_deltas_then_the_same_result_as_json(server, fake):
    fake.config(chunk_delay_ms=10, chunks=6)
    resp, events = server.sse(PATH % 20)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    n = names(events)
    assert n[0] == "meta" and n[-1] == "result", n
    assert n.count("delta") >= 2
    meta = json.loads(events[0]["data"])
    assert meta["cache"] == "miss" and meta["contact_id"] == 20 and meta["type"] == TYPE
    text = "".join(json.loads(e["data"])["text"] for e in events if e["event"] == "delta")
    json.loads(text)   # the model's schema-shaped reply, as it was written
    result = json.loads(events[-1]["data"])
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    plain = server.get(PATH % 20)
    assert plain.headers["X-Cache"] == "HIT"
    body = plain.json()
    assert body["result"] == result["result"]
    assert body["generated_at"] == result["generated_at"]
    assert fake.stats()["chat_calls"] == 1


def test_stream_query_parameter_works_without_the_accept_header(server, fake):
    r = server.get((PATH % 21) + "?stream=1")
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert names(parse_sse(r.body))[-1] == "result"


def test_a_cache_hit_streams_meta_and_result_at_once(server, fake):
    server.get(PATH % 22)
    resp, events = server.sse(PATH % 22)
    assert names(events) == ["meta", "result"]
    assert json.loads(events[0]["data"])["cache"] == "hit"
    assert json.loads(events[1]["data"])["cache"]["status"] == "hit"


def test_deltas_reach_the_client_before_the_upstream_has_finished(server, fake):
    fake.config(latency_ms=50, chunk_delay_ms=150, chunks=8)
    rd = Reader(server, PATH % 23)
    try:
        first = rd.read_until("delta")
        result = rd.read_until("result")
    finally:
        rd.close()
    assert first is not None and result is not None
    # The upstream spends >= 7 x 150 ms between its first and last chunk;
    # forwarding as written means the first delta is long before the end.
    assert result["t"] - first["t"] >= 0.7, (first["t"], result["t"])


def test_a_joined_stream_gets_the_text_so_far_then_the_rest_live(server, fake):
    fake.config(latency_ms=20, chunk_delay_ms=120, chunks=10)
    a = Reader(server, PATH % 24)
    try:
        a.read_until("delta")
        a.read_until("delta")
        b = Reader(server, PATH % 24)
        try:
            b_events = b.read_all()
        finally:
            b.close()
        a_events = a.read_all()
    finally:
        a.close()
    assert json.loads(b_events[0]["data"])["cache"] == "coalesced"
    text_a = "".join(json.loads(e["data"])["text"] for e in a_events if e["event"] == "delta")
    text_b = "".join(json.loads(e["data"])["text"] for e in b_events if e["event"] == "delta")
    assert text_b == text_a, "the joiner gets the whole text exactly once"
    assert json.loads(a_events[-1]["data"])["result"] == json.loads(b_events[-1]["data"])["result"]
    assert fake.stats()["chat_calls"] == 1


def test_a_client_leaving_mid_stream_is_freed_and_the_result_still_cached(server, fake):
    fake.config(latency_ms=20, chunk_delay_ms=100, chunks=8)
    rd = Reader(server, PATH % 25)
    rd.read_until("delta")
    rd.close()
    server.wait_for_log(lambda l: l.get("msg") == "client gone", timeout=3)
    time.sleep(1.2)
    r = server.get(PATH % 25)
    assert r.headers["X-Cache"] == "HIT"
    assert fake.stats()["chat_calls"] == 1
    assert server.get("/healthz").status == 200


def test_a_stream_cut_upstream_ends_with_an_error_event_and_nothing_cached(server, fake):
    fake.fail({"mode": "cut", "after_chunks": 2})
    resp, events = server.sse(PATH % 26)
    assert resp.status == 200
    assert names(events)[0] == "meta" and names(events)[-1] == "error", names(events)
    err = json.loads(events[-1]["data"])["error"]
    assert err["status"] == 502
    assert server.get(PATH % 26).headers["X-Cache"] == "MISS"


def test_errors_known_before_streaming_keep_their_http_status(server, fake):
    r = server.get("/v1/contacts/1/analyses/nope?stream=1")
    assert r.status == 404
    r = server.get("/v1/contacts/x/analyses/%s?stream=1" % TYPE)
    assert r.status == 400


def test_an_unknown_contact_streamed_is_an_http_404_with_a_json_body(server, fake):
    # Nothing went out before the failure: the error keeps its status, so an
    # EventSource stops instead of reconnecting.
    resp, events = server.sse(PATH % 987654)
    assert resp.status == 404, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    body = json.loads(resp.body)
    assert body["error"]["code"] == "contact_not_found" and body["request_id"]
    assert events == []
    assert fake.stats()["chat_calls"] == 0


def test_a_quiet_stream_carries_heartbeat_comments(make_server, fake):
    # Heartbeats start with the stream (at the first text): quiet gaps
    # between chunks carry them.
    srv = make_server(RAPPORT_SSE_HEARTBEAT_MS=100)
    fake.config(chunk_delay_ms=250, chunks=6)
    resp, events = srv.sse(PATH % 27)
    assert resp.body.count(b": ping\n\n") >= 3, resp.body[:300]
    assert names(parse_sse(resp.body))[-1] == "result", "comments do not disturb the events"


def test_a_slow_reader_is_bounded_by_the_write_buffer_not_memory(make_server, fake, tmp_path):
    """A client that stops reading: deltas beyond the write-buffer bound are
    dropped for it (the result event still carries the whole text), so the
    server's memory does not grow with the model's output."""
    from test_analysis_api import make_scripts
    # (Under ASan a small quarantine, or freed memory would count as grown.)
    server = make_server(ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=4",
                         **make_scripts(tmp_path / "s"))      # `echo`: no max_tokens
    big = "x" * (3 << 20)                                      # 3 MiB of model text
    fake.config(latency_ms=10, chunk_delay_ms=0, chunks=3000, content='{"note":"' + big + '"}')
    def rss():
        return int(open("/proc/%d/status" % server.pid).read().split("VmRSS:")[1].split()[0])
    rss_before = rss()
    s = socket.create_connection((server.host, server.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /v1/contacts/28/analyses/echo HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    line = server.wait_for_log(lambda l: l.get("msg") == "slow stream reader", timeout=20)
    assert line["deltas_skipped"] > 0
    grew = rss() - rss_before
    s.close()
    # The text is held a few times over (the flight's copy, the result, the
    # result event: ~3 MiB each); per-delta copies would add ~3000 x 1 KiB
    # more per slow reader, and grow with every reader.
    assert grew < 40 * 1024, "RSS grew by %d KiB" % grew
    assert server.get("/healthz").status == 200


def test_a_schema_repair_tells_streaming_clients_to_discard_the_rejected_text(server, fake):
    fake.fail({"mode": "invalid_json"})
    resp, events = server.sse(PATH % 29)
    n = names(events)
    assert "reset" in n and n[-1] == "result", n
    after = n.index("reset")
    text = "".join(json.loads(e["data"])["text"] for e in events[after:] if e["event"] == "delta")
    json.loads(text)   # only the repaired reply follows the reset
    assert fake.stats()["chat_calls"] == 2
